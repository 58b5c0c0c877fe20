"""A sweep (`-m`) is one MLflow parent run with one nested child run per job.

In the launching process, `SweepCallback` (a Hydra callback, conf/hydra/callbacks/mlflow_sweep.yaml)
creates the store, the experiment and the parent run once, before any job starts: several processes
creating a brand-new sqlite store at the same time corrupt it. It hands the parent to the jobs in
`<sweep dir>/mlflow_sweep.json`, which every launcher's jobs can read (basic, joblib, submitit); each job
then runs through nf_trainer/sweep/job.py. The parent records the sweep's overrides and objective, then
the best child and a final status: FAILED if any job failed. Hydra skips `on_multirun_end` when a job
failed, so an atexit hook finishes the parent in that case.

Hydra loads this module for every run, single ones too: it imports neither mlflow nor torch at import time.
"""
from __future__ import annotations

import atexit
import json
import logging
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.sweep.info import SweepInfo, objective_mode, sweep_key, task_overrides
from nf_trainer.sweep.job import announce_new_store
from nf_trainer.sweep.search import prepare, study_artifacts
from nf_trainer.sweep.store import CONFIG_HASH_TAG, SWEEP_KEY_TAG, children, differing_keys, latest_sweep
from nf_trainer.sweep.study import STATE_TAG, STUDY_TAG, TRIAL_TAG, is_ours, safe_url, study_key
from nf_trainer.sweep.summary import sweep_summary
from nf_trainer.tracking.git import git_info
from nf_trainer.tracking.interface import OBJECTIVE
from nf_trainer.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger("nf_trainer")

INTERRUPTED_TAG = "nf.interrupted"  # on a child that a killed sweep left RUNNING, marked KILLED when the sweep continued
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class SweepCallback(Callback):
    """Creates the sweep's parent run before any job starts, and finishes it with the best child.

    `resume` (hydra.callbacks.mlflow_sweep.resume): re-running the same sweep (same overrides, same
    code) continues its parent run and skips the jobs that already FINISHED. false: a fresh parent.
    """

    def __init__(self, resume: bool = True):
        self.resume = resume
        self.sweep: SweepInfo | None = None
        self.tracker: MlflowTracker | None = None  # the parent run's
        self.mode, self.metric, self.overrides = "min", "", []  # the objective's, the command line's
        self.plan = None  # an Optuna study's (nf_trainer/sweep/search.py)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Hydra turns a callback's exception into a warning and runs the jobs anyway: stop here instead.
        try:
            self._start(config)
        except NfTrainerError as exc:
            raise SystemExit(str(exc)) from None
        except Exception:
            log.exception("could not create the sweep's MLflow run")
            raise SystemExit(1) from None

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.finish(completed=True)

    def _start(self, config: DictConfig) -> None:
        mode = objective_mode(config)
        sweeper = config.hydra.sweeper
        keep_going = sweeper._target_ != BASIC_SWEEPER
        direction = sweeper.get("direction")
        if keep_going and isinstance(direction, str) and direction[:3] != mode:
            raise NfTrainerError(f"objective.metric={config.objective.metric} is {mode}imized but "
                                 f"hydra.sweeper.direction={direction}: set objective.mode or the direction so they agree")
        plan, running = prepare(config) if is_ours(config) else (None, set())  # the study first: bad input fails here
        mlflow_cfg = config.mlflow
        announce_new_store(mlflow_cfg.tracking_uri)
        tracker = MlflowTracker(mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, mlflow_cfg.artifact_location)
        experiment_id = tracker.experiment_id()  # creates a brand-new store here, once
        git = git_info()
        key = sweep_key(config, git) if plan is None else study_key(plan.storage, plan.name)  # one parent per study
        existing = latest_sweep(tracker.client, experiment_id, key) if self.resume else None
        if existing is not None:
            self._continue(tracker, experiment_id, existing.info.run_id, {str(n) for n in running})
        else:
            tags = {SWEEP_KEY_TAG: key, "sweep.overrides": " ".join(task_overrides(config)) or "(none)",
                    "sweep.sweeper": sweeper._target_.rsplit(".", 1)[-1],
                    "sweep.launcher": config.hydra.launcher._target_.rsplit(".", 1)[-1],
                    "objective.metric": str(config.objective.metric), "objective.mode": mode, **git}
            if sweeper.get("params"):
                tags["sweep.params"] = json.dumps(OmegaConf.to_container(sweeper.params), sort_keys=True)
            if plan is not None:
                tags |= {STUDY_TAG: plan.name, "optuna.storage": safe_url(plan.storage)}
            tracker.start(sweep_name(config), {}, tags)
        tracker.set_tags({"sweep.dir": str(config.hydra.sweep.dir)})

        self.plan = plan
        self.mode, self.metric, self.overrides, self.tracker = mode, str(config.objective.metric), task_overrides(config), tracker
        self.sweep = SweepInfo(tracker.run_id, experiment_id, mlflow_cfg.tracking_uri, self.resume, keep_going)
        self.sweep.write(Path(str(config.hydra.sweep.dir)))
        atexit.register(self.finish, completed=False)
        log.info("sweep run %s in %s (experiment %s)", tracker.run_id, mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name)

    @staticmethod
    def _continue(tracker: MlflowTracker, experiment_id: str, parent: str, running: set[str]) -> None:
        """Reopen the parent run of the same sweep; its children a kill left RUNNING are marked KILLED (but the
        trials another process of the same study is `running`)."""
        for child in children(tracker.client, experiment_id, parent):
            # left so by a killed sweep: it will never end by itself
            if child.info.status == "RUNNING" and child.data.tags.get(TRIAL_TAG) not in running:
                tracker.client.set_tag(child.info.run_id, INTERRUPTED_TAG, "true")
                tracker.client.set_terminated(child.info.run_id, status="KILLED")
        tracker.start("", {}, {}, resume_run_id=parent)
        log.info("continuing sweep run %s: jobs that already FINISHED with the same config are skipped "
                 "(hydra.callbacks.mlflow_sweep.resume=false starts a fresh sweep)", parent)

    def finish(self, completed: bool) -> None:
        """Record the best child and end the parent: FINISHED, FAILED if a job failed, KILLED if interrupted.

        A job that failed before its run existed (a bad value) leaves no child: Hydra then exits with its
        error and skips on_multirun_end, and this runs at exit with completed=False.
        """
        if self.sweep is None:
            return
        sweep, self.sweep = self.sweep, None
        tracker = self.tracker
        atexit.unregister(self.finish)
        latest: dict[str, object] = {}  # config hash -> its latest attempt
        for child in children(tracker.client, sweep.experiment_id, sweep.parent_run_id):
            latest[child.data.tags.get(CONFIG_HASH_TAG, child.info.run_id)] = child
        # a job an earlier run of the sweep left running when it was killed is not a failure of the sweep: a grid
        # runs it again (its latest attempt counts), a study draws another trial in its place
        failed = [r for r in latest.values() if r.info.status == "FAILED"
                  or (r.info.status == "KILLED" and r.data.tags.get(INTERRUPTED_TAG) != "true")]
        scored = [r for r in latest.values() if r.info.status == "FINISHED" and OBJECTIVE in r.data.metrics
                  and r.data.tags.get(STATE_TAG) != "PRUNED"]  # a pruned trial's objective is of fewer epochs
        finished = sum(r.info.status == "FINISHED" for r in latest.values())
        tags = {"sweep.children": f"{finished} finished, {len(failed)} failed or killed"}
        if scored:
            pick = min if self.mode == "min" else max
            best = pick(scored, key=lambda r: r.data.metrics[OBJECTIVE])
            value = best.data.metrics[OBJECTIVE]
            tags |= {"best.run_id": best.info.run_id, "best.run_name": best.info.run_name, "best.value": repr(value),
                     "best.overrides": best.data.tags.get("overrides", ""),
                     "best.params": " ".join(f"{k}={v}" for k, v in differing_params(scored, best).items())}
            tracker.log_metrics({OBJECTIVE: value}, step=len(scored))
        if self.plan is not None:
            tags |= study_artifacts(self.plan, tracker)
        tracker.set_tags(tags)
        if completed:
            status = "FAILED" if failed else "FINISHED"
        else:  # at exit, without on_multirun_end: a job failed (Hydra raised its error), or Ctrl-C
            interrupted = getattr(sys, "last_type", None) is KeyboardInterrupt  # set before atexit hooks run
            status = "KILLED" if interrupted and not any(r.info.status == "FAILED" for r in failed) else "FAILED"
        tracker.end(status)
        log.info("%s", sweep_summary(status, tracker.run_name_of(sweep.parent_run_id) or "", tags["sweep.children"],
                                     sweep.parent_run_id, scored, self.mode, self.metric, self.overrides))


def differing_params(runs: list, run) -> dict[str, str]:
    """The params of `run` whose values are not the same across `runs`."""
    return {k: run.data.params.get(k, "") for k in differing_keys(runs)}


def sweep_name(config: DictConfig) -> str:
    """`sweep optimizer=sgd,adam optimizer.lr=0.1,0.01`, or `optuna optimizer lr weight_decay` for a search."""
    sweeper = config.hydra.sweeper
    if sweeper._target_ != BASIC_SWEEPER:
        name = sweeper._target_.rsplit(".", 1)[-1].removesuffix("Sweeper").lower()
        return f"{name} {' '.join(str(k) for k in (sweeper.get('params') or {}))}".strip()[:200]
    parsed = OverridesParser.create().parse_overrides(task_overrides(config))
    varied = [o.input_line for o in parsed if o.is_sweep_override()]
    return f"sweep {' '.join(varied)}".strip()[:200]
