"""MLflow tracking for one job, in this process: a run with the flattened config as params, metrics,
tags, artifacts, dataset inputs and the model. Secrets are masked (tracking/secrets.py).

mlflow is imported inside the methods: this module also loads where MLflow must not cost startup (the
Hydra callback of every run, the job's process, whose tracker lives in a child process).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.tracking.interface import MAX_KEY, MAX_VALUE, OBJECTIVE, Best
from nf_trainer.tracking.local_store import open_client
from nf_trainer.tracking.secrets import MASK, is_secret_key, scrub
from nf_trainer.tracking.server import check_before_run, is_remote

log = logging.getLogger("nf_trainer")

TEXT_SUFFIXES = {".yaml", ".yml", ".log", ".txt", ".json", ".cfg", ".ini", ".toml", ".csv", ".md"}  # scrubbed
STEP_WRITE_SECONDS = 15.0  # buffered per-step points go to the store at most this often (and with each epoch's)


class MlflowTracker:
    """One MLflow run through `MlflowClient` and an explicit run id (no global active run), so sequential
    sweep jobs in one process never trip over each other and a run always ends with an explicit status."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 system_metrics: bool = False):
        check_before_run(tracking_uri, system_metrics)
        if is_remote(tracking_uri):
            artifact_location = None  # the server stores artifacts (mlflow server --artifacts-destination)
        self.tracking_uri = tracking_uri
        self.experiment_name, self.artifact_location = experiment_name, artifact_location
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self._pending: list = []  # async per-step logging operations, flushed at the end
        self._secrets: set[str] = set()  # secret values seen in the params: scrubbed from tags and text artifacts
        self._monitor = None  # mlflow's SystemMetricsMonitor thread
        self._steps: list = []  # per-step points not written yet
        self._last_write = time.monotonic()

    @functools.cached_property
    def client(self):
        """Made at the first call: a job that fails before its run starts leaves no store behind."""
        return open_client(self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment's id; the experiment (and a brand-new store) is created on first use."""
        from mlflow.exceptions import MlflowException

        try:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is not None:
                return experiment.experiment_id
            location = Path(self.artifact_location).resolve().as_uri() if self.artifact_location else None
            # a training experiment: the MLflow 3 UI then opens on the runs table, not on GenAI traces
            return self.client.create_experiment(self.experiment_name, artifact_location=location,
                                                 tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" in str(exc.error_code):  # created by a parallel job meanwhile
                return self.client.get_experiment_by_name(self.experiment_name).experiment_id
            raise NfTrainerError(f"MLflow store '{self.tracking_uri}' is not usable: {str(exc).splitlines()[0]}") from exc

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """Create the run (or reopen `resume_run_id`); a `mlflow.parentRunId` tag nests it under a sweep."""
        from mlflow.entities import Param, RunTag

        self._secrets |= {v for k, v in params.items() if is_secret_key(k) and len(v) >= 3 and v not in ("None", MASK)}
        params = {k: MASK if is_secret_key(k) and v != "None" else v for k, v in params.items()}
        tags = self._clean_tags(tags)
        run_name = scrub(run_name, self._secrets)
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
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.tracking_uri, resume_logging=bool(resume_run_id))
            self._monitor.start()
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

    def log_objective(self, key: str, mode: str) -> Best:
        """The best value of metric `key` over the run's epochs, logged as metric `objective` at the step (epoch)
        that reached it (the first one, on a tie); NaN if none is finite."""
        points = [m for m in self.client.get_metric_history(self.run_id, key) if math.isfinite(m.value)]
        if not points:
            return Best(math.nan, None)
        sign = 1 if mode == "min" else -1
        best = min(points, key=lambda m: (sign * m.value, m.step))
        self.client.log_metric(self.run_id, OBJECTIVE, best.value, step=best.step)
        return Best(best.value, best.step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder; text files go through `scrub` first (secrets never reach the store)."""
        path = Path(path)
        if not path.exists():
            return
        with tempfile.TemporaryDirectory(prefix="nf_artifact_") as tmp:
            if path.is_dir():
                copy = Path(tmp) / path.name
                shutil.copytree(path, copy)
                for file in copy.rglob("*"):
                    self._scrub_file(file)
                self.client.log_artifacts(self.run_id, str(copy), artifact_path)
            else:
                if path.suffix in TEXT_SUFFIXES:
                    path = Path(shutil.copy2(path, Path(tmp) / path.name))
                    self._scrub_file(path)
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, scrub(text, self._secrets), artifact_file)

    def log_image(self, image, key: str, step: int) -> None:
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_inputs(self, described: list[dict]) -> None:
        """MLflow dataset inputs from `nf_trainer.tracking.dataset_inputs.describe_inputs`."""
        from mlflow.data import from_numpy
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(dataset=from_numpy(d["labels"], source=_dataset_source(d["source"]), name=d["name"],
                                                  digest=d["digest"])._to_mlflow_entity(),
                               tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])]) for d in described]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException:  # parallel sweep jobs registering the same dataset at once (a UNIQUE race): it exists now
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_model(self, model, example, classes: list[str], registered_model_name: str | None = None,
                  eval_transforms: list[dict] | None = None, registered_model_alias: str | None = None,
                  task: dict | None = None) -> str:
        """The model with two flavors (tracking/pyfunc.py): MLflow's pytorch one (in the task's format: pt2, which
        loads back as a `torch.fx.GraphModule` that needs only torch, or pickle) and a python_function one that takes
        raw images through `eval_transforms` (the transforms' config nodes) and answers as `task` (its config node)
        does. `model` is a CPU torch module, serialized here (pt2 traces `example`, a CPU batch of at least 2: a
        batch of 1 would freeze the batch size), or the `SerializedModel` a child tracker's job made already; the
        class names go into the metadata."""
        import mlflow

        from nf_trainer.tracking import pyfunc  # lazy: imports torch when it serializes

        serialized = model if isinstance(model, pyfunc.SerializedModel) else pyfunc.serialize(model, example, task)
        # Model.log reads MLflow's global tracking URI and experiment (the run is given by id): they are set to
        # this run's (in a child tracker's process, where that global state touches nothing else).
        exported = {name: os.environ.get(name) for name in MLFLOW_GLOBALS}
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        with restored(exported):
            info = pyfunc.log_model(serialized, classes, list(eval_transforms or []), self.run_id, registered_model_name,
                                    pyfunc.requirements(), task)
        registered = ""
        if registered_model_name:
            registered = f", registered as '{registered_model_name}' version {info.registered_model_version}"
            if registered_model_alias:
                self.client.set_registered_model_alias(registered_model_name, registered_model_alias,
                                                       info.registered_model_version)
                registered += f" (alias '{registered_model_alias}')"
        return f"runs:/{self.run_id}/model ({info.model_uri}){registered}"

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._clean_tags(tags).items()])

    def run_name_of(self, run_id: str | None) -> str | None:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            return self.client.get_run(run_id).info.run_name
        except MlflowException:
            return None

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
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)

    def close(self) -> None:
        """Nothing to release: the client holds no connection of its own."""

    def _clean_tags(self, tags: dict[str, str]) -> dict[str, str]:
        return {k: MASK if is_secret_key(k) else scrub(str(v), self._secrets)[:MAX_VALUE] for k, v in tags.items()}

    def _scrub_file(self, path: Path) -> None:
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="replace")
            clean = scrub(text, self._secrets)
            if clean != text:
                path.write_text(clean)

    def _take_steps(self) -> list:
        steps, self._steps, self._last_write = self._steps, [], time.monotonic()
        return steps

    @staticmethod
    def _metrics(metrics: dict[str, float], step: int) -> list:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(key, float(value), now, step) for key, value in metrics.items()]


# what mlflow.set_tracking_uri and set_experiment also export to os.environ, where the config reads
# MLFLOW_TRACKING_URI (it would win over the next job's store in this process): put back after log_model
MLFLOW_GLOBALS = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@contextlib.contextmanager
def restored(environment: dict[str, str | None]):
    try:
        yield
    finally:
        for name, value in environment.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _dataset_source(text: str):
    """A local source for paths, a code source (named by the text) for the rest (sklearn's digits)."""
    if os.path.exists(text.split(" (")[0]):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers two local sources and warns it picked one
            warnings.simplefilter("ignore")
            return resolve_dataset_source(text)
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={"source": text})
