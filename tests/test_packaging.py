"""Installed use: the wheel holds every package and conf/, and `nf-train` from a fresh venv runs a job in an
empty folder with a config dir of its own (its outputs there, its own options next to ours)."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import MLFLOW_ENV, ROOT


def test_the_wheel_lists_every_package_of_the_source_tree():
    """pyproject.toml lists the packages (conf/ is mapped into nf_trainer/conf, so `packages.find` cannot be used),
    and the Hydra sweeper's: hydra_plugins is a namespace package (no __init__.py), shared with Hydra's plugins."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for top in ("nf_trainer", "hydra_plugins")
               for p in (ROOT / top).rglob("__init__.py")}
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()
    assert "hydra_plugins.nf_trainer_optuna" in folders
    assert set(setuptools["packages"]) == folders | {"nf_trainer.conf"}
    assert setuptools["package-dir"] == {"nf_trainer.conf": "conf"}


def build_wheel(dest: Path, tmp: Path) -> Path:
    """The wheel of a copy of the checkout (a build in place would leave build/ and *.egg-info in it)."""
    source = tmp / "source"
    source.mkdir()
    for name in ("nf_trainer", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dest), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = dest.glob("nf_trainer-*.whl")
    return wheel


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and nothing else: the test environment's site-packages (torch, mlflow,
    hydra) are reached through a .pth line instead of being installed again (5.5 GB). A .pth line adds the folder
    only: the editable checkout's finder (a .pth file in that folder) is not run, so `nf_trainer` is the wheel's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(purelib) / "test_environment.pth").write_text("\n".join(ours) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return path


@pytest.mark.slow  # builds the wheel, makes a venv and runs a job in it (about half a minute)
def test_the_installed_command_runs_in_an_empty_folder_with_its_own_config_dir(tmp_path):
    """...and on a fresh machine: a new MLflow store, no matplotlib font cache."""
    venv = fresh_venv(tmp_path / "venv", build_wheel(tmp_path / "dist", tmp_path))
    work = tmp_path / "experiments"
    (work / "my_conf" / "optimizer").mkdir(parents=True)
    (work / "my_conf" / "experiment").mkdir()
    (work / "my_conf" / "optimizer" / "nesterov.yaml").write_text(
        "_target_: torch.optim.SGD\nlr: 0.05\nmomentum: 0.9\nnesterov: true\n")
    (work / "my_conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /optimizer: nesterov\nmlflow:\n  tags:\n    experiment: mine\n")
    env = {k: v for k, v in os.environ.items() if k not in (*MLFLOW_ENV, "PYTHONPATH")} | {
        "PYTHONUNBUFFERED": "1", "MPLCONFIGDIR": str(tmp_path / "matplotlib")}  # a fresh machine: no font cache yet

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "nf-train"), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import nf_trainer; print(nf_trainer.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where  # the wheel's, not the checkout

    shown = command("--config-dir", "my_conf", "--help")
    assert shown.returncode == 0, shown.stderr
    options = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in shown.stdout.splitlines()
               if line.startswith(("optimizer: ", "experiment: "))}
    assert {"adamw", "sgd", "nesterov"} <= set(options["optimizer"])  # ours and the user's own
    assert {"digits_efficientnet", "mine"} <= set(options["experiment"])

    result = command("--config-dir", "my_conf", "experiment=mine", "debug=fast", "trainer.progress_bar=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in work.iterdir()) == ["my_conf", "outputs"]  # everything under ./outputs
    from mlflow import MlflowClient

    store = MlflowClient(f"sqlite:///{work}/outputs/mlflow.db")
    (run,) = store.search_runs([store.get_experiment_by_name("nf_trainer").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["experiment"] == "mine"
    assert run.data.params["optimizer.nesterov"] == "True" and run.data.tags["output_dir"].startswith(f"{work}/outputs/runs/")
    printed = result.stdout + result.stderr
    assert f"open it: python -m nf_trainer.ui --run {run.info.run_id}" in printed
    # the first-run chores, each said in one line of ours (not MLflow's and matplotlib's own lines)
    assert f"first run with {work}/outputs/mlflow.db: MLflow creates the store's tables" in printed
    assert "first run on this machine: matplotlib builds its font cache" in printed
    assert "Creating initial MLflow database tables" not in printed and "fontManager" not in printed
