"""Tracking at scale: one real team server for the module (PostgreSQL behind `mlflow server`, on loopback),
a sweep that logs everything to it over HTTP, fast one-line failures for a wrong server, system metrics,
and the UI helper."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests
from mlflow import MlflowClient

from nf_trainer.cli.ui import main as ui_command
from tests import postgres
from tests.conftest import ROOT, fails_in_one_line, run_main, run_probed
from tests.postgres import free_port


def start(cmd, log, cwd=ROOT) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(cmd, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, log, path: str = "/health", timeout: float = 240) -> None:
    """Until `path` answers 200 (a slow first answer is waited for, not cut short by the request's own timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, open(log).read()[-3000:]
        try:
            if requests.get(f"{url}{path}", timeout=max(1.0, min(60.0, deadline - time.time()))).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url}{path} did not answer in {timeout} s:\n{open(log).read()[-3000:]}")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A PostgreSQL database on loopback, the backend of a team server; sqlite where PostgreSQL is not installed
    (.ci/run installs Debian's postgresql), and then the PostgreSQL checks skip."""
    with postgres.database("mlflow") as url:
        yield url or f"sqlite:///{tmp_path_factory.mktemp('server')}/server.db"


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    """`mlflow server` on that database, artifacts stored by the server: (url, its artifact root, backend uri)."""
    root = tmp_path_factory.mktemp("server")
    url, log = f"http://127.0.0.1:{free_port()}", root / "server.log"
    proc = start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database, "--artifacts-destination",
                  str(root / "artifacts"), "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
                 log, cwd=root)
    try:
        # the API, not /health: the server creates its store's tables at its first API request, and a job's check
        # of the server (5 s a request) must not be that request
        wait_until_up(url, proc, log, path="/api/2.0/mlflow/experiments/search?max_results=1")
        yield url, root / "artifacts", database
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def http_sweep(server, tmp_path_factory):
    url, artifacts, database = server
    out = tmp_path_factory.mktemp("http") / "outputs"
    out.mkdir()
    run_main("-m", "optimizer=sgd,adam", "debug=fast", "mlflow=team", f"mlflow.tracking_uri={url}",
             "mlflow.system_metrics=true", out=out, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.3"})
    return url, artifacts, database, out


@pytest.mark.slow
def test_a_sweep_logs_in_full_to_a_team_server(http_sweep):
    """Runs, nesting, params, metrics (system metrics too), artifacts, over HTTP, stored in PostgreSQL."""
    url, artifacts, database, out = http_sweep
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("nf_trainer")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and len(found) == 3
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id and c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["optimizer._target_"] for c in children) == ["torch.optim.Adam", "torch.optim.SGD"]
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/digits/f1")] == [1]
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(child.data.metrics)
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, uploaded over HTTP
        assert {a.path for a in client.list_artifacts(child.info.run_id, "hydra")} >= {
            "hydra/config_resolved.yaml", "hydra/overrides.yaml"}
        assert {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")} == {
            "checkpoints/best-loss.pt"}
        assert list(artifacts.rglob(f"{child.info.run_id}/artifacts/checkpoints/best-loss.pt"))
    assert not (out / "mlflow.db").exists()  # nothing went to a local store
    if not database.startswith("postgresql://"):
        pytest.skip("PostgreSQL is not installed here: the same sweep ran against a sqlite-backed server")
    import psycopg

    with psycopg.connect(database) as connection:  # the metrics are rows of the team's database
        (count,) = connection.execute("select count(*) from metrics where key = 'val/digits/accuracy'").fetchone()
    assert count == 2


def test_an_unreachable_server_fails_in_one_line(out):
    line = fails_in_one_line("debug=fast", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}", out=out)
    assert "is not reachable" in line and line.endswith("or fix mlflow.tracking_uri")


@pytest.mark.slow
def test_an_unreachable_server_stops_a_sweep_before_it_starts_and_before_mlflow_is_imported(tmp_path):
    """Within seconds, not after MLflow's own retries (minutes): the check runs before MLflow's client is even
    imported, so none of its retries can run (a fact of the process, not a race with a clock)."""
    out = tmp_path / "outputs"
    result = run_probed("-m", "debug=fast", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}",
                        f"paths.output_root={out}", tmp_path=tmp_path)
    assert "HEAVY: []" in result.stdout  # neither mlflow nor torch was imported
    exit_line = [line for line in result.stderr.splitlines() if line.startswith("EXIT:")][-1]
    assert "is not reachable" in exit_line and exit_line.endswith("or fix mlflow.tracking_uri")
    assert "Traceback" not in result.stderr
    assert not list(out.rglob("*.pt")) and not list(out.rglob("mlflow_sweep.json"))  # no training, no sweep run


def test_a_server_that_is_not_mlflow_is_named_as_such(out, tmp_path):
    port, log = free_port(), tmp_path / "http.log"
    proc = start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], log, cwd=tmp_path)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc, log, path="/", timeout=30)
        line = fails_in_one_line("debug=fast", f"mlflow.tracking_uri=http://127.0.0.1:{port}", out=out)
    finally:
        stop(proc)
    assert "it does not look like an MLflow tracking server" in line and "HTTP 404" in line


def test_system_metrics_without_psutil_fail_before_the_run(bare_out, monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError, as on a machine without it
    line = fails_in_one_line("mlflow.system_metrics=true", "debug=fast", out=bare_out)
    assert line.startswith("mlflow.system_metrics=true needs psutil: pip install 'nf-trainer[system]'")
    assert not (bare_out / "mlflow.db").exists() and not list(bare_out.rglob("*.pt"))  # checked first: no store, no run


@pytest.mark.slow
def test_ui_serves_the_project_store_on_loopback_and_prints_the_runs_url(http_sweep, default_run, tmp_path, capsys):
    url = http_sweep[0]
    remote_id = MlflowClient(url).get_experiment_by_name("nf_trainer").experiment_id
    ui_command([f"mlflow.tracking_uri={url}"])  # a server already: it names its runs URL at once
    assert f"{url}/#/experiments/{remote_id}/runs" in capsys.readouterr().out

    out = default_run[0]
    experiment_id = MlflowClient(f"sqlite:///{out}/mlflow.db").get_experiment_by_name("nf_trainer").experiment_id
    port, log = free_port(), tmp_path / "ui.log"
    ui = start([sys.executable, "-m", "nf_trainer.ui", "--port", str(port), f"paths.output_root={out}"], log)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", ui, log)
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs" in log.read_text()
        answer = requests.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name",
                              params={"experiment_name": "nf_trainer"}, timeout=30).json()
        assert answer["experiment"]["experiment_id"] == experiment_id  # the store it was pointed at
        listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
    finally:
        stop(ui)
