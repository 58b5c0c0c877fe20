"""A team tracking server: real PostgreSQL + `mlflow server` on loopback, a 2-job sweep over HTTP."""
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_main

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd: str) -> list[str]:
    # PostgreSQL refuses to run as root: run its tools as the 'postgres' user Debian's package creates.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def postgres():
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed here (Debian: apt-get install postgresql; .ci/run installs it)")
    bindir = Path(initdb).resolve().parent
    home = Path(tempfile.mkdtemp(prefix="nf_pg_"))
    home.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()
    subprocess.run(as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"),
                   check=True, capture_output=True)
    subprocess.run(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "pg.log"), "-o",
                               f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"), check=True, capture_output=True)
    try:
        subprocess.run(as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"),
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    artifacts, port = tmp_path_factory.mktemp("artifacts"), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 120)
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        server.terminate()
        server.wait(30)


def test_sweep_against_postgres_backed_server(team_server, out):
    uri, artifacts = team_server
    run_main("-m", "optimizer=sgd,adam", "debug=fast", "mlflow=team", f"mlflow.tracking_uri={uri}",
             "mlflow.experiment_name=team", out=out)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("team")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 3 and parent.info.status == "FINISHED"
    assert sorted(r.data.params["optimizer._target_"] for r in jobs) == ["torch.optim.Adam", "torch.optim.SGD"]
    assert all(r.info.status == "FINISHED" for r in jobs)
    for run in jobs:  # metrics in PostgreSQL, artifacts in the server's artifact root
        assert client.get_metric_history(run.info.run_id, "val/digits/accuracy")
        assert "hydra/config_resolved.yaml" in {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert list(artifacts.rglob("config_resolved.yaml")), "artifacts are stored under the server's artifact root"
    assert not (out / "mlflow.db").exists(), "nothing went to the local sqlite store"
