"""nf_trainer entry point: Hydra composes conf/ from the command line, then the job runs.

Only the job imports torch and mlflow (nf_trainer/sweep/job.py), so `--help` and `--cfg job` stay fast.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nf_trainer.cli.rerun import expand_rerun
from nf_trainer.core.config import register_configs
from nf_trainer.core.errors import one_line_errors
from nf_trainer.sweep.job import run_hydra_job

register_configs()


# an absolute path: conf/ is found the same way when main.py is imported as a module (the tests do)
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def main(cfg: DictConfig):
    return run_hydra_job(cfg)  # the objective: what a sweeper (Optuna) optimizes


if __name__ == "__main__":
    with one_line_errors():
        expand_rerun()  # `rerun=<run id>`: that run's logged overrides are put in its place (nf_trainer/cli/rerun.py)
        main()
