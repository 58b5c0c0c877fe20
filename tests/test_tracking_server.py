"""Tracking at scale: a real `mlflow server` over HTTP, fast failures for a wrong one, system metrics, the UI helper."""
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import requests
from mlflow import MlflowClient

from tests.conftest import MAIN, ROOT, run_main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def wait_until_up(url: str, proc: subprocess.Popen, log, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, open(log).read()[-3000:]
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {timeout} s:\n{open(log).read()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A team-style tracking server on loopback: sqlite backend, artifacts served by the server."""
    root = tmp_path_factory.mktemp("server")
    url, log = f"http://127.0.0.1:{free_port()}", root / "server.log"
    proc = start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
                  "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                  "--port", url.rsplit(":", 1)[1], "--workers", "1"], log, cwd=root)
    try:
        wait_until_up(url, proc, log)
        yield url, root
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def http_sweep(server, tmp_path_factory):
    url, root = server
    out = tmp_path_factory.mktemp("http") / "outputs"
    out.mkdir()
    run_main("-m", "optimizer=sgd,adam", "debug=fast", f"mlflow.tracking_uri={url}", "mlflow.system_metrics=true", out=out,
             env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.3"})
    return url, root, out


def test_a_sweep_logs_in_full_to_a_tracking_server(http_sweep):
    """Runs, nesting, params, metrics (system metrics too: mlflow.system_metrics=true), artifacts, over HTTP."""
    url, root, out = http_sweep
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("nf_trainer")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id and c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["optimizer._target_"] for c in children) == ["torch.optim.Adam", "torch.optim.SGD"]
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/digits/f1")] == [1]
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(child.data.metrics)
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, uploaded over HTTP
        assert {a.path for a in client.list_artifacts(child.info.run_id, "hydra")} >= {
            "hydra/config_resolved.yaml", "hydra/overrides.yaml"}
        assert {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")} == {
            "checkpoints/best-f1.pt", "checkpoints/best-loss.pt"}
        assert list((root / "artifacts").rglob(f"{child.info.run_id}/artifacts/checkpoints/best-f1.pt"))
    assert not (out / "mlflow.db").exists()  # nothing went to a local store


@pytest.mark.parametrize("sweep", [[], ["-m"]], ids=["run", "sweep"])
def test_an_unreachable_server_fails_in_one_line_within_seconds(out, sweep):
    started = time.time()
    result = run_main(*sweep, "debug=fast", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}", out=out, check=False)
    assert time.time() - started < 20  # python start included; MLflow's own retries would take minutes
    assert result.returncode == 1 and "is not reachable" in result.stderr and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "MLflow tracking server" in line][0].endswith(
        "or fix mlflow.tracking_uri")
    assert not list(out.rglob("*.pt")) and not list(out.rglob("mlflow_sweep.json"))  # no training, no sweep run


def test_a_server_that_is_not_mlflow_is_named_as_such(out, tmp_path):
    port, log = free_port(), tmp_path / "http.log"
    proc = start([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], log, cwd=tmp_path)
    try:
        wait_until_up_plain(f"http://127.0.0.1:{port}/", proc, log)
        result = run_main("debug=fast", f"mlflow.tracking_uri=http://127.0.0.1:{port}", out=out, check=False)
    finally:
        stop(proc)
    assert result.returncode == 1 and "it does not look like an MLflow tracking server" in result.stderr
    assert "HTTP 404" in result.stderr and "Traceback" not in result.stderr


def wait_until_up_plain(url, proc, log, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, open(log).read()
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def test_system_metrics_without_psutil_fail_before_the_run(out):
    # sys.modules[name] = None makes `import psutil` raise ImportError, as on a machine without it
    probe = ("import runpy, sys; sys.modules['psutil'] = None; "
             f"sys.argv = [{str(MAIN)!r}] + sys.argv[1:]; runpy.run_path({str(MAIN)!r}, run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-c", probe, "mlflow.system_metrics=true", "debug=fast",
                             f"paths.output_root={out}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "mlflow.system_metrics=true needs psutil: pip install 'nf-trainer[system]'" in result.stderr
    assert not (out / "mlflow.db").exists() and not list(out.rglob("*.pt"))  # checked first: no store, no run


def test_ui_serves_the_project_store_on_loopback_and_prints_the_runs_url(http_sweep, tmp_path):
    url, root, _ = http_sweep
    experiment_id = MlflowClient(url).get_experiment_by_name("nf_trainer").experiment_id
    # the team server names its runs URL at once
    remote = subprocess.run([sys.executable, "-m", "nf_trainer.ui", f"mlflow.tracking_uri={url}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0 and f"{url}/#/experiments/{experiment_id}/runs" in remote.stdout

    port, log = free_port(), tmp_path / "ui.log"
    ui = start([sys.executable, "-m", "nf_trainer.ui", "--port", str(port), f"mlflow.tracking_uri=sqlite:///{root}/server.db"],
               log)
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
