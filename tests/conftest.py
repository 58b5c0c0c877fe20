"""Shared helpers: run the real main.py in a subprocess against a temp output root and MLflow store."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "main.py"


def run_main(*overrides: str, out: Path, cwd: Path | None = None, check: bool = True, timeout: float = 600,
             env: dict | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python main.py <overrides> paths.output_root=<out>`; outputs and the store stay under `out`."""
    # Logging the MLflow model costs ~5 s a run: only the tests that check it ask for it.
    quiet = [] if any(o.startswith("mlflow.log_model=") for o in overrides) else ["mlflow.log_model=false"]
    cmd = [sys.executable, str(MAIN), *overrides, *quiet, f"paths.output_root={out}"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env,
                            preexec_fn=preexec_fn)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def run_probed(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python main.py <args>` under a probe that prints, after main.py returns or exits, its exit code
    (`EXIT: <code>` on stderr) and which heavy modules it imported (`HEAVY: [...]` on stdout)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"  # this checkout's package, as `python main.py` gets it
        f"sys.argv = [{str(MAIN)!r}] + sys.argv[1:]\n"
        "try:\n"
        f"    runpy.run_path({str(MAIN)!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('EXIT:', exc.code, file=sys.stderr)\n"
        "print('HEAVY:', sorted(m for m in ('torch', 'mlflow', 'torchmetrics', 'torchvision') if m in sys.modules))\n")
    return subprocess.run([sys.executable, str(probe), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def store_uri(out: Path) -> str:
    return f"sqlite:///{out}/mlflow.db"


def client(out: Path):
    from mlflow import MlflowClient

    return MlflowClient(store_uri(out))


def runs(out: Path, experiment: str = "nf_trainer") -> list:
    c = client(out)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {out}"
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def metric_history(out: Path, run_id: str, key: str) -> list:
    return sorted(client(out).get_metric_history(run_id, key), key=lambda m: m.step)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "outputs"
    path.mkdir()
    return path
