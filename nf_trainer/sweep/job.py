"""One Hydra job (what main.py runs, once or per sweep job): the checks that must fail before torch loads,
then the job, inside its sweep when there is one.

In a sweep, the job's run is nested under the sweep's parent run and tagged with a hash of its resolved
config. A job whose config already FINISHED under the same parent is skipped and returns the stored
objective, so re-running an interrupted sweep runs only the missing jobs. Under a sweeper that optimizes
the returned value (Optuna), a failed or NaN job returns the worst value and the study goes on. A job of an
Optuna study of ours reports its objective to its trial after every epoch, and stops when the pruner says so.
"""
from __future__ import annotations

import logging
import math

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nf_trainer.core.config import validate
from nf_trainer.core.first_run import font_cache_chore
from nf_trainer.core.log_levels import debug_only_ours
from nf_trainer.sweep.info import config_hash, current_sweep, objective_mode, worst_value
from nf_trainer.sweep.store import CONFIG_HASH_TAG, PARENT_TAG, finished_child
from nf_trainer.sweep.study import STUDY_TAG, TRIAL_TAG, TrialReport, current_trial
from nf_trainer.tracking.factory import open_tracker
from nf_trainer.tracking.interface import OBJECTIVE
from nf_trainer.tracking.local_store import open_client
from nf_trainer.tracking.server import check_before_run, new_local_store

log = logging.getLogger("nf_trainer")


def run_hydra_job(cfg: DictConfig) -> float | None:
    """Returns the job's objective: what a sweeper (Optuna) optimizes."""
    choices = None
    if HydraConfig.initialized():
        debug_only_ours(HydraConfig.get().verbose)
        choices = dict(HydraConfig.get().runtime.choices)
    validate(cfg, choices)  # a bad value fails in one line, before torch loads
    check_before_run(cfg.mlflow.tracking_uri, cfg.mlflow.system_metrics)  # a wrong URL fails in a second
    tags = {CONFIG_HASH_TAG: config_hash(cfg)}
    sweep = current_sweep(cfg)
    log.debug("config hash %s; store %s, experiment %s; %s", tags[CONFIG_HASH_TAG], cfg.mlflow.tracking_uri,
              cfg.mlflow.experiment_name, f"in sweep run {sweep.parent_run_id}" if sweep else "a single run")
    trial = current_trial()  # in an Optuna study of ours: the trial this job is
    if trial is not None:
        tags |= {TRIAL_TAG: str(trial.number), STUDY_TAG: trial.study_name}
    if sweep is None:  # no sweep, or one without its MLflow parent (hydra.callbacks.mlflow_sweep=null)
        return run_job(cfg, tags, TrialReport(trial) if trial is not None else None)

    mode = objective_mode(cfg)
    if sweep.skip_finished:
        done = skipped(sweep, tags[CONFIG_HASH_TAG])
        if done is not None:
            value = done.data.metrics.get(OBJECTIVE, worst_value(mode))
            log.info("skipped: run %s (%s) already FINISHED with this config in this sweep; objective %s",
                     done.info.run_id, done.info.run_name, value)
            return value
    tags[PARENT_TAG] = sweep.parent_run_id
    try:
        value = run_job(cfg, tags, TrialReport(trial) if trial is not None else None)
    except Exception as exc:
        if not sweep.keep_going:
            raise
        log.error("this trial failed (%s); the sweeper gets the worst value, %s, and goes on",
                  " ".join(str(exc).split())[:300] or type(exc).__name__, worst_value(mode), exc_info=True)
        return worst_value(mode)
    if value is not None and math.isnan(value):
        log.warning("the objective %s is NaN: the sweeper gets the worst value, %s", cfg.objective.metric, worst_value(mode))
        return worst_value(mode)
    return value


def run_job(cfg: DictConfig, tags: dict[str, str], report=None) -> float | None:
    announce_new_store(cfg.mlflow.tracking_uri)
    tracker = open_tracker(cfg.mlflow)  # first: MLflow's imports and store open overlap the job's own start
    try:
        with font_cache_chore():
            from nf_trainer.jobs.dispatch import run_job as run_mode  # lazy: torch loads here, after the checks above

        return run_mode(cfg, tracker, tags, report)
    finally:
        tracker.close()


def announce_new_store(tracking_uri: str) -> None:
    """A first-run chore, said once in the job's words (the tracker keeps MLflow's own lines about it quiet)."""
    path = new_local_store(tracking_uri)
    if path is not None:
        log.info("first run with %s: MLflow creates the store's tables (a few seconds, once)", path)


def skipped(sweep, digest: str):
    return finished_child(open_client(sweep.tracking_uri), sweep.experiment_id, sweep.parent_run_id, digest)
