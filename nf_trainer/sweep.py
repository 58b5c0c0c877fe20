"""Sweeps: one MLflow parent run per sweep, one nested child run per job.

In the launching process, `SweepCallback` (a Hydra callback, conf/hydra/callbacks/mlflow_sweep.yaml)
creates the store, the experiment and the parent run once, before any job starts: several processes
creating a brand-new sqlite store at the same time corrupt it. It hands the parent to the jobs in
`<sweep dir>/mlflow_sweep.json`, which every launcher's jobs can read (basic, joblib, submitit).
The parent records the sweep's overrides and objective, then the best child and a final status:
FAILED if any job failed. Hydra skips `on_multirun_end` when a job failed, so an atexit hook finishes
the parent in that case.

Each job goes through `run_job` (main.py): its run is nested under the parent and tagged with a hash
of its resolved config. A job whose config already FINISHED under the same parent is skipped and
returns the stored objective, so re-running an interrupted sweep runs only the missing jobs. Under a
sweeper that optimizes the returned value (Optuna), a failed or NaN job returns the worst value and
the study goes on.

This module is imported on every start: mlflow and torch load only inside the functions that need them.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import multiprocessing
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nf_trainer.errors import NfTrainerError

log = logging.getLogger("nf_trainer")

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep dir: the parent run, for the jobs
PARENT_TAG = "mlflow.parentRunId"  # what MLflow (and its UI) nests runs by
CONFIG_HASH_TAG = "nf.config_hash"
SWEEP_KEY_TAG = "nf.sweep_key"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass
class SweepInfo:
    """What the launching process hands to every job of the sweep."""
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    skip_finished: bool  # skip jobs whose config already FINISHED under this parent
    keep_going: bool  # a sweeper that optimizes the return value: failures give the worst value


def config_hash(cfg: DictConfig) -> str:
    """A digest of the resolved job config: equal hashes, equal runs (for the same code)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def objective_mode(cfg: DictConfig) -> str:
    from nf_trainer.trainer.watch import resolve_mode

    return resolve_mode(str(cfg.objective.metric), str(cfg.objective.mode))


def worst_value(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


# ---------------------------------------------------------------------------------------------- jobs
def run_job(cfg: DictConfig) -> float | None:
    """One Hydra job: the training run of `nf_trainer.run.run`, inside a sweep when there is one."""
    from nf_trainer.run import run
    from nf_trainer.tracking import preflight

    preflight(cfg.mlflow.tracking_uri, cfg.mlflow.system_metrics)  # a wrong URL fails in a second, before torch loads
    tags = {CONFIG_HASH_TAG: config_hash(cfg)}
    sweep = current_sweep(cfg)
    if sweep is None:
        return run(cfg, extra_tags=tags)

    mode = objective_mode(cfg)
    if sweep.skip_finished:
        done = finished_child(sweep, tags[CONFIG_HASH_TAG])
        if done is not None:
            from nf_trainer.tracking import OBJECTIVE

            value = done.data.metrics.get(OBJECTIVE, worst_value(mode))
            log.info("skipped: run %s (%s) already FINISHED with this config in this sweep; objective %s",
                     done.info.run_id, done.info.run_name, value)
            return value
    try:
        value = run(cfg, extra_tags=tags | {PARENT_TAG: sweep.parent_run_id})
    except Exception as exc:
        if not sweep.keep_going:
            raise
        log.error("this trial failed (%s); the sweeper gets the worst value, %s, and goes on",
                  " ".join(str(exc).split())[:300] or type(exc).__name__, worst_value(mode), exc_info=True)
        return worst_value(mode)
    if value is None or math.isnan(value):
        log.warning("the objective %s is NaN: the sweeper gets the worst value, %s", cfg.objective.metric, worst_value(mode))
        return worst_value(mode)
    return value


def current_sweep(cfg: DictConfig) -> SweepInfo | None:
    """The sweep this job belongs to (written by SweepCallback), or None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE
    if not path.is_file():
        return None  # the callback is switched off: plain runs
    sweep = SweepInfo(**json.loads(path.read_text()))
    if sweep.tracking_uri != cfg.mlflow.tracking_uri:
        log.warning("this job logs to %s, not to the sweep's store %s: it is not nested under the sweep run",
                    cfg.mlflow.tracking_uri, sweep.tracking_uri)
        return None
    return sweep


def finished_child(sweep: SweepInfo, digest: str):
    from mlflow import MlflowClient

    found = MlflowClient(sweep.tracking_uri).search_runs(
        [sweep.experiment_id],
        f"tags.`{PARENT_TAG}` = '{sweep.parent_run_id}' and tags.`{CONFIG_HASH_TAG}` = '{digest}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def dataloader_start_method() -> str | None:
    """'fork' inside joblib's (loky) workers, where DataLoader workers start in no other way; else the default."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default=""))
    if "joblib" in launcher.lower() and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None


# ---------------------------------------------------------------------------- launching process
class SweepCallback(Callback):
    """Creates the sweep's parent run before any job starts, and finishes it with the best child.

    `resume` (hydra.callbacks.mlflow_sweep.resume): re-running the same sweep (same overrides, same
    code) continues its parent run and skips the jobs that already FINISHED. false: a fresh parent.
    """

    def __init__(self, resume: bool = True):
        self.resume = resume
        self.sweep: SweepInfo | None = None
        self.mode = "min"

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
        from nf_trainer.tracking import Tracker, git_info

        mode = objective_mode(config)
        sweeper = config.hydra.sweeper
        keep_going = sweeper._target_ != BASIC_SWEEPER
        direction = sweeper.get("direction")
        if keep_going and isinstance(direction, str) and direction[:3] != mode:
            raise NfTrainerError(f"objective.metric={config.objective.metric} is {mode}imized but "
                                 f"hydra.sweeper.direction={direction}: set objective.mode or the direction so they agree")
        mlflow_cfg = config.mlflow
        tracker = Tracker(mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, mlflow_cfg.artifact_location)
        experiment_id = tracker.experiment_id()  # creates a brand-new store here, once
        git = git_info()
        overrides = task_overrides(config)
        key = sweep_key(config, git)
        parent = self._existing_parent(tracker, experiment_id, key) if self.resume else None
        if parent is None:
            tags = {SWEEP_KEY_TAG: key, "sweep.overrides": " ".join(overrides) or "(none)",
                    "sweep.sweeper": sweeper._target_.rsplit(".", 1)[-1],
                    "sweep.launcher": config.hydra.launcher._target_.rsplit(".", 1)[-1],
                    "objective.metric": str(config.objective.metric), "objective.mode": mode, **git}
            if sweeper.get("params"):
                tags["sweep.params"] = json.dumps(OmegaConf.to_container(sweeper.params), sort_keys=True)
            parent = tracker.start(sweep_name(config), {}, tags)
        tracker.set_tags({"sweep.dir": str(config.hydra.sweep.dir)})

        self.mode = mode
        self.sweep = SweepInfo(parent, experiment_id, mlflow_cfg.tracking_uri, self.resume, keep_going)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(asdict(self.sweep), indent=2))
        atexit.register(self.finish, completed=False)
        log.info("sweep run %s in %s (experiment %s)", parent, mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name)

    def _existing_parent(self, tracker, experiment_id: str, key: str) -> str | None:
        found = tracker.client.search_runs([experiment_id], f"tags.`{SWEEP_KEY_TAG}` = '{key}'",
                                           order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            return None
        parent = found[0].info.run_id
        for child in children(tracker.client, experiment_id, parent):
            if child.info.status == "RUNNING":  # left so by a killed sweep: it will never end by itself
                tracker.client.set_terminated(child.info.run_id, status="KILLED")
        tracker.client.update_run(parent, status="RUNNING")
        tracker.run_id = parent
        log.info("continuing sweep run %s: jobs that already FINISHED with the same config are skipped "
                 "(hydra.callbacks.mlflow_sweep.resume=false starts a fresh sweep)", parent)
        return parent

    def finish(self, completed: bool) -> None:
        """Record the best child and end the parent: FINISHED, FAILED if a job failed, KILLED if interrupted.

        A job that failed before its run existed (a bad value) leaves no child: Hydra then exits with its
        error and skips on_multirun_end, and this runs at exit with completed=False.
        """
        if self.sweep is None:
            return
        sweep, self.sweep = self.sweep, None
        atexit.unregister(self.finish)
        from mlflow import MlflowClient
        from mlflow.entities import RunTag

        from nf_trainer.tracking import MAX_VALUE, OBJECTIVE

        client = MlflowClient(sweep.tracking_uri)
        latest: dict[str, object] = {}  # config hash -> its latest attempt
        for child in children(client, sweep.experiment_id, sweep.parent_run_id):
            latest[child.data.tags.get(CONFIG_HASH_TAG, child.info.run_id)] = child
        failed = [r for r in latest.values() if r.info.status in ("FAILED", "KILLED")]
        scored = [r for r in latest.values() if r.info.status == "FINISHED" and OBJECTIVE in r.data.metrics]
        finished = sum(r.info.status == "FINISHED" for r in latest.values())
        tags = {"sweep.children": f"{finished} finished, {len(failed)} failed or killed"}
        if scored:
            pick = min if self.mode == "min" else max
            best = pick(scored, key=lambda r: r.data.metrics[OBJECTIVE])
            value = best.data.metrics[OBJECTIVE]
            tags |= {"best.run_id": best.info.run_id, "best.run_name": best.info.run_name, "best.value": repr(value),
                     "best.overrides": best.data.tags.get("overrides", ""),
                     "best.params": " ".join(f"{k}={v}" for k, v in differing_params(scored, best).items())}
            client.log_metric(sweep.parent_run_id, OBJECTIVE, value, step=len(scored))
        # the children's names, overrides and params are already masked (tracking.py): nothing secret here
        client.log_batch(sweep.parent_run_id, tags=[RunTag(k, v[:MAX_VALUE]) for k, v in tags.items()])
        if completed:
            status = "FAILED" if failed else "FINISHED"
        else:  # at exit, without on_multirun_end: a job failed (Hydra raised its error), or Ctrl-C
            interrupted = getattr(sys, "last_type", None) is KeyboardInterrupt  # set before atexit hooks run
            status = "KILLED" if interrupted and not any(r.info.status == "FAILED" for r in failed) else "FAILED"
        client.set_terminated(sweep.parent_run_id, status=status)
        log.info("sweep run %s %s: %s%s", sweep.parent_run_id, status, tags["sweep.children"],
                 f"; best {tags['best.value']} by {tags['best.run_name']}" if scored else "")


def children(client, experiment_id: str, parent_run_id: str) -> list:
    """All runs nested under `parent_run_id`, oldest first (every page)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def differing_params(runs: list, run) -> dict[str, str]:
    """The params of `run` whose values are not the same across `runs`."""
    keys = sorted({k for r in runs for k in r.data.params})
    return {k: run.data.params.get(k, "") for k in keys if len({r.data.params.get(k) for r in runs}) > 1}


def sweep_key(config: DictConfig, git: dict[str, str]) -> str:
    """Same sweep = same config name, command-line overrides, search space and code (commit + uncommitted diff).

    The launcher and trial counts are left out: a sweep can continue with more workers or trials.
    """
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    for volatile in ("n_trials", "n_jobs", "max_batch_size"):
        sweeper.pop(volatile, None)
    material = {"config": config.hydra.job.config_name, "overrides": sorted(task_overrides(config)),
                "sweeper": sweeper, "git": git}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides as typed: `${...}` in them belongs to the jobs, unresolved here."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def sweep_name(config: DictConfig) -> str:
    """`sweep optimizer=sgd,adam optimizer.lr=0.1,0.01`, or `optuna optimizer lr weight_decay` for a search."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if sweeper._target_ != BASIC_SWEEPER:
        name = sweeper._target_.rsplit(".", 1)[-1].removesuffix("Sweeper").lower()
        return f"{name} {' '.join(str(k) for k in (sweeper.get('params') or {}))}".strip()[:200]
    parsed = OverridesParser.create().parse_overrides(task_overrides(config))
    varied = [o.input_line for o in parsed if o.is_sweep_override()]
    return f"sweep {' '.join(varied)}".strip()[:200]
