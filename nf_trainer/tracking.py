"""MLflow tracking for one job: a run with the flattened config as params, metrics, tags, artifacts.

Uses `MlflowClient` with an explicit run id (no global "active run"), so sequential sweep jobs in
one process never trip over each other and a run is always ended with an explicit status.

Secrets: values under config keys that look like secrets (password, token, api_key, secret, ...) are
masked in params and tags, and scrubbed from every text artifact (the hydra/ config files, logs).
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from nf_trainer.errors import NfTrainerError
from nf_trainer.paths import PROJECT_ROOT

log = logging.getLogger("nf_trainer")

MAX_KEY = 250  # MLflow rejects longer keys
MAX_VALUE = 6000  # and truncates longer param values
OBJECTIVE = "objective"  # the metric every run logs at its end: the best value of `objective.metric`

MASK = "<masked>"  # what a secret becomes: a plain YAML scalar (*** would be a YAML alias)
_SECRET_WORD = r"pass(?:word|wd)|secret|token(?!s|iz)|api_?key|access_?key|private_?key|credential"
_SECRET_KEY = re.compile(_SECRET_WORD, re.IGNORECASE)
# `password: x`, `db.password=x`, `"api_key": "x"` in free text (YAML dumps, override lists, logs);
# `${oc.env:...}` interpolations (escaped `$\{...\}` in a sweep's job overrides) are names, not values: kept
_SECRET_ASSIGNMENT = re.compile(rf"""([\w.\-]*(?:{_SECRET_WORD})[\w.\-]*["']?[ \t]*[=:][ \t]*)(["']?)(?!\$\\?\{{)([^\s'",}}\]]+)""",
                                re.IGNORECASE)
TEXT_SUFFIXES = {".yaml", ".yml", ".log", ".txt", ".json", ".cfg", ".ini", ".toml", ".csv", ".md"}
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


def is_secret_key(key: str) -> bool:
    """`db.password`, `hf_token`, `mlflow.tags.api_key`, `aws.secret_access_key`: yes. `max_tokens`: no."""
    return any(_SECRET_KEY.search(part) for part in str(key).split("."))


def redact(tree: Any) -> Any:
    """A copy of a config tree (dicts and lists) with the values under secret-looking keys masked."""
    if isinstance(tree, dict):
        return {k: MASK if is_secret_key(k) and v is not None else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def scrub(text: str, secrets: set[str] = frozenset()) -> str:
    """Mask `secret_key=value` assignments and every known secret value in free text."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in one line, within seconds, when an HTTP tracking server is down or is not MLflow.

    MLflow's own client retries for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT): good for a
    blip during training, bad as the first thing a user sees for a typo'd port.
    """
    import requests

    base = uri.rstrip("/")
    fix = "start it (mlflow server --host 127.0.0.1 --port PORT --backend-store-uri ...) or fix mlflow.tracking_uri"
    try:
        health = requests.get(f"{base}/health", timeout=timeout)
        api = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__ if isinstance(exc, requests.Timeout) else "connection refused or host unknown"
        raise NfTrainerError(f"MLflow tracking server {uri} is not reachable ({reason}): {fix}") from None
    if api.status_code == 403:
        raise NfTrainerError(f"MLflow tracking server {uri} refused this client (HTTP 403 from its security middleware): "
                             "start it with --allowed-hosts listing the host name you use, or use that host's allowed name")
    if api.status_code in (401, 407):
        raise NfTrainerError(f"MLflow tracking server {uri} wants credentials (HTTP {api.status_code}): "
                             "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if health.status_code != 200 or api.status_code != 200:
        raise NfTrainerError(f"{uri} answered HTTP {health.status_code} on /health and {api.status_code} on the MLflow API: "
                             f"it does not look like an MLflow tracking server; {fix}")


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
    info = {"git.commit": commit, "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
    if info["git.dirty"] == "True":  # which uncommitted state: a sweep re-run after a code edit starts afresh
        info["git.diff_sha"] = hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()[:12]
    return info


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def preflight(tracking_uri: str, system_metrics: bool = False) -> None:
    """The checks that must fail in one line before a run exists: a usable server, psutil when asked for."""
    if system_metrics:
        try:
            import psutil  # noqa: F401  (MLflow needs it, and would leave the run RUNNING without it)
        except ImportError:
            raise NfTrainerError("mlflow.system_metrics=true needs psutil: pip install 'nf-trainer[system]' "
                                 "(or pip install psutil), or set mlflow.system_metrics=false") from None
    if is_remote(tracking_uri):
        check_server(tracking_uri)


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 system_metrics: bool = False):
        preflight(tracking_uri, system_metrics)
        if is_remote(tracking_uri):
            artifact_location = None  # the server stores artifacts (mlflow server --artifacts-destination)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_name, self.artifact_location = experiment_name, artifact_location
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self._pending: list = []  # async per-step logging operations, flushed at the end
        self._secrets: set[str] = set()  # secret values seen in the params: scrubbed from tags and text artifacts
        self._monitor = None  # mlflow's SystemMetricsMonitor thread
        self._steps: list = []  # per-step points not written yet
        self._last_write = time.monotonic()

    def experiment_id(self) -> str:
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

    def log_objective(self, key: str, mode: str) -> float:
        """The best value of metric `key` over the run's epochs, logged as metric `objective`; NaN if none is finite."""
        values = [m.value for m in self.client.get_metric_history(self.run_id, key) if math.isfinite(m.value)]
        if not values:
            return math.nan
        best = min(values) if mode == "min" else max(values)
        self.client.log_metric(self.run_id, OBJECTIVE, best)
        return best

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

    def log_inputs(self, described: list[dict]) -> None:
        """MLflow dataset inputs from `nf_trainer.dataset.inputs.describe_inputs`."""
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

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._clean_tags(tags).items()])

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


def _dataset_source(text: str):
    """A local source for paths, a code source (named by the text) for the rest (sklearn's digits)."""
    import os
    import warnings

    if os.path.exists(text.split(" (")[0]):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers two local sources and warns it picked one
            warnings.simplefilter("ignore")
            return resolve_dataset_source(text)
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={"source": text})


class NullTracker:
    """Stands in for Tracker on ranks > 0 under torchrun: only rank 0 talks to MLflow."""
    run_id = None
    tracking_uri = None

    def start(self, *args, **kwargs):
        return None

    def __getattr__(self, name):  # log_metrics, log_step_metrics, log_artifact, set_tags, end: all no-ops
        return lambda *args, **kwargs: None
