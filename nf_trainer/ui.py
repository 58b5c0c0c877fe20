"""`python -m nf_trainer.ui`: the MLflow UI on the project's store (nf_trainer/cli/ui.py)."""
import sys

from nf_trainer.cli.ui import main

if __name__ == "__main__":
    sys.exit(main())
