"""The config main.py would run with some overrides, composed without running anything (for the commands
beside main.py that find the store, or a dataset, as main.py would)."""
from __future__ import annotations

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from hydra_plugins.nf_trainer_optuna.optuna_sweeper import register as register_sweeper
from nf_trainer.core.config import register_configs
from nf_trainer.core.errors import NfTrainerError, one_line, yaml_error_line
from nf_trainer.core.paths import CONF_DIR


def project_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """`with_hydra`: with the `hydra` node (the sweeper's settings)."""
    register_configs()
    register_sweeper()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
    except HydraException as exc:
        raise NfTrainerError(one_line(exc)) from None
    except yaml.MarkedYAMLError as exc:
        raise NfTrainerError(yaml_error_line(exc)) from None
