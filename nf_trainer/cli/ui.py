"""`python -m nf_trainer.ui`: the MLflow UI on the project's store, bound to 127.0.0.1.

    python -m nf_trainer.ui                                # outputs/mlflow.db, http://127.0.0.1:5000
    python -m nf_trainer.ui --port 5001 paths.output_root=/data/outputs
    python -m nf_trainer.ui mlflow.tracking_uri=http://team-server:5000   # a server already up: its URL
    python -m nf_trainer.ui --run RUN_ID                   # that run's page (what a run's summary prints)
    python -m nf_trainer.ui optuna                         # optuna-dashboard on outputs/optuna.db, port 8080

The store is the one main.py would log to (MLFLOW_TRACKING_URI, when set, unless `mlflow.tracking_uri=`
is given). It prints the experiment's runs table URL (MLflow 3 otherwise opens on an empty GenAI traces page),
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
from nf_trainer.tracking.local_store import open_client
from nf_trainer.tracking.run_lookup import find_run
from nf_trainer.tracking.server import is_remote, require_store
from nf_trainer.tracking.ui_link import runs_url


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        command = dashboard(parse_dashboard_args(argv[1:])) if argv[:1] == ["optuna"] else serve(parse_args(argv))
    except NfTrainerError as exc:
        sys.exit(str(exc))
    if command:
        os.execv(sys.executable, command)  # the server takes this process over: Ctrl-C reaches it directly


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nf_trainer.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    parser.add_argument("--run", metavar="RUN_ID", help="open on this run's page (a sweep's parent run: its runs)")
    parser.add_argument("overrides", nargs="*", help="config overrides that pick the store, as for main.py")
    return parser.parse_intermixed_args(argv)


def parse_dashboard_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nf_trainer.ui optuna",
                                     description="optuna-dashboard on the studies of hparams_search=optuna")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    parser.add_argument("--storage", help="a storage URL or journal:PATH (default: hydra.sweeper.storage, outputs/optuna.db)")
    parser.add_argument("overrides", nargs="*", help="config overrides that pick the storage, as for main.py")
    return parser.parse_intermixed_args(argv)


def dashboard(options) -> list[str]:
    """The optuna-dashboard command on the storage main.py's studies use (an optional extra: [dashboard])."""
    executable = Path(sys.executable).with_name("optuna-dashboard")
    if not executable.is_file():
        raise NfTrainerError("optuna-dashboard is not installed: pip install 'nf-trainer[dashboard]'")
    storage = options.storage or str(project_config(["hparams_search=optuna", *options.overrides],
                                                    with_hydra=True).hydra.sweeper.storage)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise NfTrainerError(f"no Optuna study at {storage} yet: run `python main.py hparams_search=optuna` "
                             "(with the same paths.output_root), or give --storage")
    listen(options.host, options.port)
    hint = ["--storage-class", "JournalFileStorage"] if storage.startswith("journal:") else []
    print(f"optuna-dashboard for {storage}:\n  http://{options.host}:{options.port}\n(Ctrl-C stops it)", flush=True)
    return [sys.executable, str(executable), storage.removeprefix("journal:"), *hint, "--host", options.host,
            "--port", str(options.port), "--quiet"]


def listen(host: str, port: int) -> None:
    """Fail in one line when the port is taken (the servers would say so in a traceback)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise NfTrainerError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another port with --port") from None


def serve(options) -> list[str] | None:
    """Print the runs URL; the `mlflow server` command to become, or None when the store is a server already."""
    cfg = project_config(options.overrides)
    uri, name = str(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment_name)
    require_store(uri, missing_store_message(uri))
    if is_remote(uri):
        shown, *where = page(uri, name, options.run)
        print(f"{uri} is a tracking server already; {shown}: {runs_url(uri, *where)}")
        return None
    listen(options.host, options.port)
    shown, *where = page(uri, name, options.run)
    url = runs_url(f"http://{options.host}:{options.port}", *where)
    print(f"MLflow UI for {uri}, {shown}:\n  {url}\n"
          "(the first page takes about 15 s; Ctrl-C stops the server)", flush=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", options.host, "--port", str(options.port), "--workers", "1"]
    if cfg.mlflow.artifact_location:  # runs created from the UI keep their artifacts with the project's
        command += ["--artifacts-destination", str(Path(str(cfg.mlflow.artifact_location)).resolve())]
    return command


def page(uri: str, name: str, run_id: str | None) -> tuple[str, str | None, str | None]:
    """(what is shown, its experiment id, the run id): the experiment's runs table, or the run's page."""
    client = open_client(uri)  # a store half-made by a process still at it is waited for: the server finds it whole
    if run_id:
        run = find_run(client, run_id)
        if run is None:
            raise NfTrainerError(f"--run {run_id}: no such run in {uri}; point at its store with paths.output_root=... "
                                 "or mlflow.tracking_uri=...")
        return f"run {run.info.run_id} ({run.info.run_name})", run.info.experiment_id, run.info.run_id
    experiment = client.get_experiment_by_name(name)
    return f"experiment '{name}'", experiment.experiment_id if experiment else None, None


if __name__ == "__main__":
    main()
