"""MLflow tracking for one job: a run with the flattened config as params, metrics, tags, artifacts.

Uses `MlflowClient` with an explicit run id (no global "active run"), so sequential sweep jobs in
one process never trip over each other and a run is always ended with an explicit status.
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from nf_trainer.errors import NfTrainerError
from nf_trainer.paths import PROJECT_ROOT

log = logging.getLogger("nf_trainer")

MAX_KEY = 250  # MLflow rejects longer keys
MAX_VALUE = 6000  # and truncates longer param values
STEP_WRITE_SECONDS = 15.0  # buffered per-step points go to the store at most this often (and with each epoch's)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'optimizer': {'lr': 0.1}, 'l': [1, 2]} -> {'optimizer.lr': '0.1', 'l.0': '1', 'l.1': '2'}."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        return {prefix: str(tree)}
    flat: dict[str, str] = {}
    for key, value in items:
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    if not flat and prefix:
        flat[prefix] = "{}" if isinstance(tree, dict) else "[]"
    return flat


def git_info(root: Path = PROJECT_ROOT) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--verify", "HEAD")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: no git tags
        return {}
    if not commit:
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_name, self.artifact_location = experiment_name, artifact_location
        self.run_id: str | None = None
        self._pending: list = []  # async per-step logging operations, flushed at the end
        self._steps: list = []  # per-step points not written yet
        self._last_write = time.monotonic()

    def experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        try:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is not None:
                return experiment.experiment_id
            location = Path(self.artifact_location).resolve().as_uri() if self.artifact_location else None
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" in str(exc.error_code):  # created by a parallel job meanwhile
                return self.client.get_experiment_by_name(self.experiment_name).experiment_id
            raise NfTrainerError(f"MLflow store '{self.tracking_uri}' is not usable: {str(exc).splitlines()[0]}") from exc

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str], resume_run_id: str | None = None) -> str:
        from mlflow.entities import Param, RunTag

        if resume_run_id:
            run = self.client.get_run(resume_run_id)
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            logged = run.data.params
        else:
            run = self.client.create_run(self.experiment_id(), run_name=run_name)
            self.run_id, logged = run.info.run_id, {}
        params = {k[:MAX_KEY]: v[:MAX_VALUE] for k, v in params.items()}
        new = {k: v for k, v in params.items() if k not in logged}
        # Params are immutable in MLflow: a value changed on resume is recorded as a tag instead.
        changed = {f"resume.changed.{k}"[:MAX_KEY]: f"{logged[k]} -> {v}"[:MAX_VALUE]
                   for k, v in params.items() if k in logged and logged[k] != v}
        self.client.log_batch(
            self.run_id,
            params=[Param(k, v) for k, v in new.items()],
            tags=[RunTag(k, str(v)[:MAX_VALUE]) for k, v in (tags | changed).items()],
        )
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """The epoch's metrics, and the per-step points buffered since the last write: one DB write."""
        self.client.log_batch(self.run_id, metrics=self._take_steps() + self._metrics(metrics, step))

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered: a DB write costs ~10 ms of CPU whatever its size (and a background writer competes with
        the loop for the GIL), so points go out with the epoch's metrics, or through MLflow's background
        thread once STEP_WRITE_SECONDS have passed. The training step never waits on the DB."""
        self._steps += self._metrics(metrics, step)
        if time.monotonic() - self._last_write >= STEP_WRITE_SECONDS:
            self._pending.append(self.client.log_batch(self.run_id, metrics=self._take_steps(), synchronous=False))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_VALUE]) for k, v in tags.items()])

    def end(self, status: str) -> None:
        """Flush queued metrics and set the final status (FINISHED, FAILED or KILLED)."""
        if self.run_id is None:
            return
        if self._steps:  # the points of an epoch that did not finish
            self._pending.append(self.client.log_batch(self.run_id, metrics=self._take_steps(), synchronous=False))
        for operation in self._pending:
            try:
                operation.wait()
            except Exception as exc:  # a lost per-step point must not hide the run's real outcome
                log.warning("an asynchronous MLflow write failed: %s", exc)
        self._pending.clear()
        self.client.set_terminated(self.run_id, status=status)

    def _take_steps(self) -> list:
        steps, self._steps, self._last_write = self._steps, [], time.monotonic()
        return steps

    @staticmethod
    def _metrics(metrics: dict[str, float], step: int) -> list:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(key, float(value), now, step) for key, value in metrics.items()]


class NullTracker:
    """Stands in for Tracker on ranks > 0 under torchrun: only rank 0 talks to MLflow."""
    run_id = None

    def start(self, *args, **kwargs):
        return None

    def __getattr__(self, name):  # log_metrics, log_step_metrics, log_artifact, set_tags, end: all no-ops
        return lambda *args, **kwargs: None
