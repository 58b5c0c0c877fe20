"""`python -m nf_trainer.prepare`: data preparation (manifests, normalization stats) (nf_trainer/cli/prepare.py)."""
import sys

from nf_trainer.cli.pipes import quiet_closed_pipes
from nf_trainer.cli.prepare import main

if __name__ == "__main__":
    with quiet_closed_pipes():  # `| head` ends quietly
        code = main()
    sys.exit(code)
