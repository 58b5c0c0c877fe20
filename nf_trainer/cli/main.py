"""The training command: `nf-train` (the console script of an installed package) and `python main.py` (a
clone) are this module. Hydra composes the package's conf/ (nf_trainer/core/paths.py:CONF_DIR) with the
command line, then the job runs.

Your own config groups and options extend ours: `nf-train --config-dir my_conf optimizer=mine` (Hydra adds
`my_conf` to the search path after ours), or `hydra.searchpath=[file://...]` (docs/configuration.md).

Only the job imports torch and mlflow (nf_trainer/sweep/job.py), so `--help` and `--cfg job` stay fast.
"""
import hydra
from omegaconf import DictConfig

from hydra_plugins.nf_trainer_optuna.optuna_sweeper import register as register_sweeper
from nf_trainer.cli.pipes import quiet_closed_pipes
from nf_trainer.cli.rerun import expand_rerun
from nf_trainer.core.config import register_configs
from nf_trainer.core.errors import one_line_errors
from nf_trainer.core.paths import CONF_DIR
from nf_trainer.sweep.job import run_hydra_job

register_configs()
register_sweeper()  # hparams_search=optuna


# Hydra names the job after this module: its log file is main.log, as for `python main.py`
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig):
    return run_hydra_job(cfg)  # the objective: what a sweeper (Optuna) optimizes


def cli() -> None:
    """`nf-train ...` and `python main.py ...`: bad input ends in one line and exit status 1; a reader that closes
    the pipe early (`| head`) ends the output quietly."""
    with quiet_closed_pipes(), one_line_errors():
        expand_rerun()  # `rerun=<run id>`: that run's logged overrides are put in its place (nf_trainer/cli/rerun.py)
        main()
