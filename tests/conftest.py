"""Shared helpers and fixtures.

Jobs run two ways, both against a temp output root and a real sqlite MLflow store in it:
- `run_here`: the real `main.main` (Hydra's real run: its output dir, `.hydra/` files, callbacks, log
  file) in this process, so torch is imported once per session. Errors come back as exceptions.
- `run_main`: `python main.py` in a subprocess, where the process is what is tested (exit codes, one-line
  stderr, signals, sweeps' launchers, what a process imports).

`default_run` (the default job, once per session, even across pytest-xdist workers) and `trained` (one
trained checkpoint with its logged model and exports) are shared by every test that reads them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock  # a dependency of torch

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "main.py"
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")  # they would win over the test's store (docs/tracking.md)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist's workers share the machine's cores: one torch thread each (read when torch is imported,
    # after this), and the same for the jobs they start, so a run and its rerun or resume use equal threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def with_defaults(overrides, out: Path) -> list[str]:
    # Logging the MLflow model costs seconds a run: only the tests that check it ask for it (debug=fast skips it itself).
    quiet = [] if any(o.startswith("mlflow.log_model=") or o == "debug=fast" for o in overrides) else ["mlflow.log_model=false"]
    return [*overrides, *quiet, f"paths.output_root={out}"]


def run_main(*overrides: str, out: Path, cwd: Path | None = None, check: bool = True, timeout: float = 600,
             env: dict | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python main.py <overrides> paths.output_root=<out>` in a subprocess."""
    cmd = [sys.executable, str(MAIN), *with_defaults(overrides, out)]
    full_env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV} | {"PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env,
                            preexec_fn=preexec_fn)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@contextlib.contextmanager
def environment(**values: str | None):
    """os.environ with `values` set (None: unset), restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def run_here(*overrides: str, out: Path, env: dict | None = None) -> None:
    """What `python main.py <overrides>` runs, in this process; a failing job raises its exception."""
    import main as entry  # the project's main.py (pytest puts the project root on sys.path)

    argv = sys.argv
    sys.argv = [str(MAIN), *with_defaults(overrides, out)]
    try:
        with environment(**{"HYDRA_FULL_ERROR": "1", **dict.fromkeys(MLFLOW_ENV), **(env or {})}):
            entry.main()
    finally:
        sys.argv = argv


def fails_in_one_line(*overrides: str, out: Path, env: dict | None = None) -> str:
    """`run_here`, which must fail as main.py reports bad input (one line on stderr, exit status 1): that line.

    main.py prints a CompactHydraException (NfTrainerError, Hydra's config errors) as `one_line(exc)`, and a
    SystemExit(message) (raised by the Hydra callbacks) as its message, both with exit status 1."""
    from hydra.errors import CompactHydraException

    from nf_trainer.core.errors import one_line

    try:
        run_here(*overrides, out=out, env=env)
    except CompactHydraException as exc:
        return one_line(exc)
    except SystemExit as exc:
        assert isinstance(exc.code, str), f"exit status {exc.code}, not a message"
        return exc.code
    raise AssertionError(f"{overrides} did not fail")


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


def compose_cfg(*overrides: str):
    """conf/ composed with `overrides`, as main.py would."""
    from nf_trainer.cli.compose import project_config

    return project_config(list(overrides))


def rerun_argv(*args: str, out: Path) -> list[str]:
    """main.py's command line after `expand_rerun` rewrote `rerun=<id>` (it prints the result on stderr)."""
    from nf_trainer.cli.rerun import expand_rerun

    argv = ["main.py", *args, f"paths.output_root={out}"]
    expand_rerun(argv)
    return argv[1:]


def composed(argv: list[str]) -> dict:
    """What `python main.py <argv> --cfg job --resolve` prints, as a dict."""
    from omegaconf import OmegaConf

    from nf_trainer.cli.rerun import is_override

    return OmegaConf.to_container(compose_cfg(*(a for a in argv if is_override(a))), resolve=True)


def store_uri(out: Path) -> str:
    return f"sqlite:///{out}/mlflow.db"


def client(out: Path):
    from mlflow import MlflowClient

    return MlflowClient(store_uri(out))


def runs(out: Path, experiment: str = "nf_trainer") -> list:
    """The experiment's runs, oldest first; none when the store or the experiment does not exist."""
    if not (out / "mlflow.db").exists():
        return []
    c = client(out)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def only_run(out: Path):
    (run,) = runs(out)
    return run


def metric_history(out: Path, run_id: str, key: str) -> list:
    return sorted(client(out).get_metric_history(run_id, key), key=lambda m: m.step)


def pytest_collection_modifyitems(items):
    """The modules with slow tests first: pytest-xdist hands modules to the workers in this order, so the
    long ones start early and the short ones fill in at the end."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)  # stable: each module's own order is kept


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables and nothing else, made once: creating the tables takes seconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def out(tmp_path: Path, empty_store: Path) -> Path:
    """An output root that already holds an (empty) MLflow store, as after a user's first run."""
    path = tmp_path / "outputs"
    path.mkdir()
    shutil.copyfile(empty_store, path / "mlflow.db")
    return path


@pytest.fixture
def bare_out(tmp_path: Path) -> Path:
    """An output root with nothing in it: for the checks that no store is created."""
    path = tmp_path / "outputs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, worker_id):
    """`python main.py` with defaults (simple_cnn on digits, 20 epochs, the model logged): (out, run, its CompletedProcess). Once
    per session, whatever the number of pytest-xdist workers: the first to get here runs it, the others wait."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # the session's folder, shared by its workers
    out, saved = root / "default" / "outputs", root / "default" / "result.json"
    with FileLock(str(root / "default.lock")):
        if not saved.exists():
            out.mkdir(parents=True)
            result = run_main("mlflow.log_model=true", out=out)  # the default, which run_main turns off
            saved.write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                         "stdout": result.stdout, "stderr": result.stderr}))
    result = subprocess.CompletedProcess(**json.loads(saved.read_text()))
    return out, only_run(out), result


@pytest.fixture(scope="session")
def trained(tmp_path_factory, empty_store):
    """One trained checkpoint per session: simple_cnn on digits with named classes, its MLflow model logged and
    registered (alias champion), TorchScript and ONNX exports: (out, run, output dir)."""
    out = tmp_path_factory.mktemp("trained") / "outputs"
    out.mkdir()
    shutil.copyfile(empty_store, out / "mlflow.db")
    run_here("dataset._target_=tests.named_digits.named_digits", "trainer.max_epochs=3", "trainer.limit_train_batches=8",
             "trainer.save_best=[accuracy]", "loss.label_smoothing=0.1", "mlflow.log_model=true",
             "mlflow.registered_model_name=digits-cnn", "mlflow.registered_model_alias=champion", "export=[torchscript,onnx]",
             "trainer.progress_bar=false", out=out)
    run = only_run(out)
    return out, run, Path(run.data.tags["output_dir"])
