"""nf_trainer entry point: Hydra composes conf/ from the command line, then the job runs.

Only the job imports torch and mlflow, so `--help` and `--cfg job` stay fast.
"""
import hydra
from omegaconf import DictConfig

from nf_trainer.config import register_configs
from nf_trainer.errors import one_line_errors

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from nf_trainer.sweep import run_job

    return run_job(cfg)  # the objective: what a sweeper (Optuna) optimizes


if __name__ == "__main__":
    from nf_trainer.rerun import expand_rerun

    with one_line_errors():
        expand_rerun()  # `rerun=<run id>`: that run's logged overrides are put in its place (nf_trainer/rerun.py)
        main()
