"""`python -m nf_trainer.ui`: the MLflow UI on the project's store (nf_trainer/cli/ui.py)."""
import sys

from nf_trainer.cli.pipes import quiet_closed_pipes
from nf_trainer.cli.ui import main

if __name__ == "__main__":
    with quiet_closed_pipes():  # `| head` ends quietly
        code = main()
    sys.exit(code)
