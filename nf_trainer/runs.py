"""`python -m nf_trainer.runs`: the runs table in the terminal (nf_trainer/cli/runs_table.py)."""
import sys

from nf_trainer.cli.pipes import quiet_closed_pipes
from nf_trainer.cli.runs_table import main

if __name__ == "__main__":
    with quiet_closed_pipes():  # `| head` ends quietly
        code = main()
    sys.exit(code)
