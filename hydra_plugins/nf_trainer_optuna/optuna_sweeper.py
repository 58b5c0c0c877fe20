"""The Hydra side of `hparams_search=optuna`: the sweeper's typed config (typos in hydra.sweeper.* fail in one
line) and the Sweeper Hydra instantiates. The study itself is nf_trainer/sweep/search.py.

Hydra imports this module at every start (plugin discovery): it imports neither optuna nor torch. No
`from __future__ import annotations`: Hydra executes it before it is in sys.modules, where dataclasses look.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING, DictConfig

from nf_trainer.sweep.search import run_study


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.nf_trainer_optuna.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner are built per study (the grid sampler needs the space)
    # hydra/sweeper/sampler: tpe | random | cmaes | grid; hydra/sweeper/pruner: median | percentile |
    # successive_halving | hyperband | none (conf/hydra/sweeper/)
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: Optional[str] = None  # minimize | maximize; None: as objective.mode says
    storage: Optional[str] = None  # None: sqlite:///<paths.output_root>/optuna.db; postgresql+psycopg://...; journal:PATH
    study_name: Optional[str] = None  # None: nf_trainer-<the sweep's key> (config, overrides, space)
    n_trials: int = 20  # the study's total, over re-runs and parallel processes
    n_jobs: int = 1  # trials launched at a time (run in parallel by hydra/launcher=joblib or submitit)
    params: Optional[Dict[str, Any]] = None  # the search space: key -> interval(...), tag(log, ...), range(...), choice(...)
    heartbeat_interval: Optional[int] = 60  # RDB storages: seconds between beats for running trials (None: off)
    grace_period: Optional[int] = 180  # a trial without a beat for this long belongs to a dead process: FAIL


ConfigStore.instance().store(group="hydra/sweeper", name="nf_optuna", node=OptunaSweeperConf, provider="nf_trainer")


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # read from the composed config in sweep(): they are the same values

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                 task_function=task_function)

    def sweep(self, arguments: List[str]) -> None:
        run_study(self.config, self.launcher, arguments)


def register() -> None:
    """Make sure Hydra knows the sweeper: its scan of `hydra_plugins` does not see into an editable install's
    namespace portion (setuptools' editable finder), only into folders on sys.path and installed wheels."""
    plugins = Plugins.instance()
    if f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}" not in plugins.class_name_to_class:
        plugins.register(OptunaSweeper)
