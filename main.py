"""nf_trainer entry point in a clone: `python main.py ...` is the `nf-train` command (nf_trainer/cli/main.py)."""
from nf_trainer.cli.main import cli, main  # noqa: F401  (main: the Hydra task the tests run in-process)

if __name__ == "__main__":
    cli()
