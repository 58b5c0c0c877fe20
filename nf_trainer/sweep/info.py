"""What the sweep's launching process hands to each of its jobs, and the objective they share."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nf_trainer.core.metric_keys import resolve_mode

log = logging.getLogger("nf_trainer")

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep dir: the parent run, for the jobs


@dataclass
class SweepInfo:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    skip_finished: bool  # skip jobs whose config already FINISHED under this parent
    keep_going: bool  # a sweeper that optimizes the return value: failures give the worst value

    def write(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(self.__dict__, indent=2))


def current_sweep(cfg: DictConfig) -> SweepInfo | None:
    """The sweep this job belongs to (written by SweepCallback), or None for a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE
    if not path.is_file():
        return None  # the callback is switched off: plain runs
    sweep = read_sweep(path.parent)
    if sweep.tracking_uri != cfg.mlflow.tracking_uri:
        log.warning("this job logs to %s, not to the sweep's store %s: it is not nested under the sweep run",
                    cfg.mlflow.tracking_uri, sweep.tracking_uri)
        return None
    return sweep


def read_sweep(sweep_dir: Path) -> SweepInfo | None:
    path = sweep_dir / SWEEP_FILE
    return SweepInfo(**json.loads(path.read_text())) if path.is_file() else None


def config_hash(cfg: DictConfig) -> str:
    """A digest of the resolved job config: equal hashes, equal runs (for the same code)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def objective_mode(cfg: DictConfig) -> str:
    return resolve_mode(str(cfg.objective.metric), str(cfg.objective.mode))


def worst_value(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def sweep_key(config: DictConfig, git: dict[str, str]) -> str:
    """Same sweep = same config name, command-line overrides, search space and code (commit + uncommitted diff).

    The launcher and trial counts are left out: a sweep can continue with more workers or trials.
    """
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    for volatile in ("n_trials", "n_jobs", "max_batch_size", "heartbeat_interval", "grace_period"):
        sweeper.pop(volatile, None)
    material = {"config": config.hydra.job.config_name, "overrides": sorted(task_overrides(config)),
                "sweeper": sweeper, "git": git}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides as typed: `${...}` in them belongs to the jobs, unresolved here."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
