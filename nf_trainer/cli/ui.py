"""`python -m nf_trainer.ui`: the MLflow UI on the project's store, bound to 127.0.0.1.

    python -m nf_trainer.ui                                # outputs/mlflow.db, http://127.0.0.1:5000
    python -m nf_trainer.ui --port 5001 paths.output_root=/data/outputs
    python -m nf_trainer.ui mlflow.tracking_uri=http://team-server:5000   # a server already up: its URL

It prints the experiment's runs table URL (MLflow 3 otherwise opens on an empty GenAI traces page),
then becomes `mlflow server --backend-store-uri <the project's store>` (started anywhere else, `mlflow ui`
silently shows an empty store). The first page takes about 15 s on 2 cores. Ctrl-C stops it.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from nf_trainer.cli.compose import project_config
from nf_trainer.cli.runs_table import missing_store_message
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.tracking.server import is_remote, require_store


def runs_url(base: str, experiment_id: str | None) -> str:
    base = base.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs" if experiment_id else base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nf_trainer.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    parser.add_argument("overrides", nargs="*", help="config overrides that pick the store, as for main.py")
    options = parser.parse_intermixed_args(argv)
    try:
        command = serve(options)
    except NfTrainerError as exc:
        sys.exit(str(exc))
    if command:
        os.execv(sys.executable, command)  # the server takes this process over: Ctrl-C reaches it directly


def serve(options) -> list[str] | None:
    """Print the runs URL; the `mlflow server` command to become, or None when the store is a server already."""
    cfg = project_config(options.overrides)
    uri, name = str(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment_name)
    require_store(uri, missing_store_message(uri))
    if is_remote(uri):
        print(f"{uri} is a tracking server already; experiment '{name}': {runs_url(uri, experiment_id(uri, name))}")
        return None
    with socket.socket() as probe:
        try:
            probe.bind((options.host, options.port))
        except OSError as exc:
            raise NfTrainerError(f"cannot listen on {options.host}:{options.port} ({exc.strerror}): "
                                 "pick another port with --port") from None
    url = runs_url(f"http://{options.host}:{options.port}", experiment_id(uri, name))
    print(f"MLflow UI for {uri}, experiment '{name}':\n  {url}\n"
          "(the first page takes about 15 s; Ctrl-C stops the server)", flush=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", options.host, "--port", str(options.port), "--workers", "1"]
    if cfg.mlflow.artifact_location:  # runs created from the UI keep their artifacts with the project's
        command += ["--artifacts-destination", str(Path(str(cfg.mlflow.artifact_location)).resolve())]
    return command


def experiment_id(uri: str, name: str) -> str | None:
    from mlflow import MlflowClient  # lazy: --help and a wrong port fail without it

    experiment = MlflowClient(uri).get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


if __name__ == "__main__":
    main()
