"""`python -m nf_trainer.prepare`: a manifest that dataset=csv trains on as is, and normalization stats."""
from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nf_trainer.cli.prepare import main
from nf_trainer.dataset.image_folder import image_folder
from tests.conftest import ROOT, only_run, run_here
from tests.data_files import make_image_folder


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nf_trainer.prepare", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("prepare") / "digits_png", per_class=20)


def test_manifest_trains_through_dataset_csv_unchanged(folder, tmp_path, capsys):
    assert main(["manifest", "--root", str(folder), "--out-dir", str(tmp_path / "lists"), "--val-fraction", "0.2",
                 "--seed", "0"]) == 0
    stdout = capsys.readouterr().out
    train_csv, val_csv = tmp_path / "lists" / "train.csv", tmp_path / "lists" / "val.csv"
    with open(val_csv, newline="") as f:
        val_rows = list(csv.DictReader(f))
    assert set(val_rows[0]) == {"path", "label"} and not Path(val_rows[0]["path"]).is_absolute()
    # the same split that dataset=image_folder makes with the same seed
    split = image_folder(str(folder), check="none").eval["digits_png"].samples
    assert sorted(row["path"] for row in val_rows) == sorted(Path(p).relative_to(folder).as_posix() for p, _ in split)

    command = next(line for line in stdout.splitlines() if line.startswith("train with: python main.py "))
    overrides = shlex.split(command.removeprefix("train with: python main.py "))
    assert overrides == ["dataset=csv", f"dataset.root={folder}", f"dataset.train_csv={train_csv}", f"dataset.val_csv={val_csv}"]
    run_here(*overrides, "trainer.max_epochs=1", "loader.batch_size=32", out=tmp_path / "out")
    run = only_run(tmp_path / "out")
    assert run.info.status == "FINISHED" and run.data.metrics["data/bad_files"] == 2
    bad_in_val = sum(row["path"].endswith(("corrupt.jpg", "empty.png")) for row in val_rows)
    assert run.data.params["data.digits_png.size"] == str(len(val_rows) - bad_in_val)


def test_stats_prints_config_ready_mean_and_std(folder):
    done = prepare("stats", "dataset=image_folder", f"dataset.root={folder}", "dataset.mode=L")  # the real command
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("transforms.mean=[") and " transforms.std=[" in line
    mean, std = (float(part.split("=[")[1].rstrip("]")) for part in line.split())
    train = image_folder(str(folder), mode="L", check="quick").train.samples  # the same train split, bad files out
    pixels = np.concatenate([np.asarray(Image.open(path).convert("L"), dtype=np.float64).ravel() / 255
                             for path, _ in train])
    assert mean == pytest.approx(pixels.mean(), abs=2e-3) and std == pytest.approx(pixels.std(), abs=2e-3)


@pytest.mark.parametrize("args,needle", [
    (["manifest", "--root", "/no/such/folder"], "error: manifest: dataset.root=/no/such/folder is not a folder"),
    (["manifest", "--root", ".", "--val-fraction", "1.5"], "error: --val-fraction must be between 0 and 1"),
    (["stats", "dataset=nope"], "error: In 'config': Could not find 'dataset/nope'"),
])
def test_bad_arguments_fail_in_one_line(capsys, args, needle):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(needle) and len(err.strip().splitlines()) == 1
