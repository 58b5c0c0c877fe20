"""Is the tracking store usable? Checked before a run exists, so a wrong URL fails in a second, in one line."""
from __future__ import annotations

from pathlib import Path

from nf_trainer.core.errors import NfTrainerError


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in one line, within seconds, when an HTTP tracking server is down or is not MLflow.

    MLflow's own client retries for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT): good for a
    blip during training, bad as the first thing a user sees for a typo'd port.
    """
    import requests  # MLflow's dependency; loaded only for HTTP stores

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


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def check_before_run(tracking_uri: str, system_metrics: bool = False) -> None:
    """The checks that must fail in one line before a run exists: a usable server, psutil when asked for."""
    if system_metrics:
        try:
            import psutil  # noqa: F401  (MLflow needs it, and would leave the run RUNNING without it)
        except ImportError:
            raise NfTrainerError("mlflow.system_metrics=true needs psutil: pip install 'nf-trainer[system]' "
                                 "(or pip install psutil), or set mlflow.system_metrics=false") from None
    if is_remote(tracking_uri):
        check_server(tracking_uri)


def new_local_store(tracking_uri: str) -> Path | None:
    """The sqlite file of a store that does not exist yet (MLflow creates its tables at the first call), or None."""
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    return path if tracking_uri.startswith("sqlite:///") and not path.is_file() else None


def require_store(tracking_uri: str, missing: str) -> None:
    """For commands that read a store and must not create one: a server that answers, or a sqlite file
    that exists (else NfTrainerError(missing))."""
    if is_remote(tracking_uri):
        check_server(tracking_uri)
    elif new_local_store(tracking_uri):
        raise NfTrainerError(missing)
