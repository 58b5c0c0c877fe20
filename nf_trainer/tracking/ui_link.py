"""Where the MLflow UI shows an experiment's runs or one run, and the command that opens it there."""
from __future__ import annotations

import shlex

UI_COMMAND = "python -m nf_trainer.ui"
# the overrides that choose the store: the UI command needs them to find the run
STORE_OVERRIDES = ("paths.", "mlflow.tracking_uri=", "mlflow=")


def runs_url(base: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """The experiment's runs table (MLflow 3 otherwise opens on an empty GenAI traces page), or one run's page."""
    base = base.rstrip("/")
    if not experiment_id:
        return base
    return f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")


def ui_command(run_id: str, overrides: list[str]) -> str:
    """`python -m nf_trainer.ui --run <id>` with the job's overrides that chose its store (run from the same folder
    and environment: MLFLOW_TRACKING_URI, an installed package's ./outputs)."""
    store = [o for o in overrides if o.lstrip("+~").startswith(STORE_OVERRIDES)]
    return " ".join([UI_COMMAND, "--run", run_id, *map(shlex.quote, store)])
