"""`python -m nf_trainer.runs`: the runs table in the terminal (nf_trainer/cli/runs_table.py)."""
import sys

from nf_trainer.cli.runs_table import main

if __name__ == "__main__":
    sys.exit(main())
