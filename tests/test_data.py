"""The data side end to end: real image folders and CSVs made from the digits set, trained through the real
Hydra and job in this process, logged to a real sqlite MLflow store."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import client, fails_in_one_line, metric_history, only_run, run_here, runs
from tests.data_files import digit_images, make_image_folder, write_csv
from tests.test_gpu_decode import folder_with_a_damaged_file

FAST = ("trainer.max_epochs=2", "loader.batch_size=32", "trainer.early_stopping.enabled=false")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """200 digit images in 10 class folders (PNG/JPEG/BMP/WebP, L/RGB/P/RGBA, nested), plus a corrupt JPEG
    and a zero-byte PNG."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "digits_png", per_class=20)


@pytest.fixture(scope="module")
def folder_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_run")
    run_here("dataset=image_folder", f"dataset.root={folder}", *FAST, out=out)
    return out, only_run(out)


def test_image_folder_run_finishes_and_counts_skipped_files(folder, folder_run):
    out, run = folder_run
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.num_classes"] == "10" and params["data.in_channels"] == "3"  # mixed modes -> RGB
    assert int(params["data.train_size"]) + int(params["data.digits_png.size"]) == 200  # 202 files, 2 bad
    assert run.data.metrics["data/bad_files"] == 2
    assert [m.step for m in metric_history(out, run.info.run_id, "val/digits_png/accuracy")] == [1, 2]
    listing = Path(client(out).download_artifacts(run.info.run_id, "data/bad_files.tsv")).read_text().splitlines()
    assert listing[0] == "path\treason"
    assert sorted(line.split("\t")[0] for line in listing[1:]) == [str(folder / "3" / "corrupt.jpg"),
                                                                    str(folder / "5" / "empty.png")]
    assert "empty file (0 bytes)" in "\n".join(listing)


def test_every_dataset_is_a_run_input(folder, folder_run):
    out, run = folder_run
    inputs = {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]): i.dataset
              for i in run.inputs.dataset_inputs}
    assert set(inputs) == {("digits_png", "training"), ("digits_png", "evaluation")}
    train, val = inputs["digits_png", "training"], inputs["digits_png", "evaluation"]
    assert str(folder) in train.source and train.source_type == "local"
    assert f'"features_size": {run.data.params["data.train_size"]}' in train.profile
    assert f'"features_size": {run.data.params["data.digits_png.size"]}' in val.profile
    assert len(train.digest) == 16 and train.digest != val.digest


def test_on_bad_file_fail_stops_before_training_in_one_line(folder, tmp_path):
    line = fails_in_one_line("dataset=image_folder", f"dataset.root={folder}", "dataset.on_bad_file=fail", *FAST,
                             out=tmp_path)
    assert "bad image in digits_png" in line and "dataset.on_bad_file=skip" in line
    assert ("corrupt.jpg" in line) or ("empty.png" in line)
    assert not (tmp_path / "mlflow.db").exists() or all(r.info.status != "RUNNING" for r in runs(tmp_path))


def test_two_eval_sets_log_both_and_their_average(folder, tmp_path):
    """Train on a folder (its val split is eval set `a`), evaluate also on a CSV (eval set `b`, used whole);
    early stopping and the best checkpoint watch the average. MixUp/CutMix, a class-balanced sampler,
    TrivialAugment and RandomErasing ride along."""
    other = make_image_folder(tmp_path / "other", per_class=4, offset=40, bad=False)
    rows = [(p.relative_to(other).as_posix(), p.relative_to(other).parts[0]) for p in sorted(other.rglob("*.*"))]
    b_csv = write_csv(tmp_path / "b.csv", rows)
    run_here("dataset=multi", "+dataset@dataset.train.a=image_folder", f"dataset.train.a.root={folder}",
             "+dataset@dataset.eval.b=csv", f"dataset.eval.b.train_csv={b_csv}", f"dataset.eval.b.root={other}",
             "trainer.early_stopping.enabled=true", "trainer.early_stopping.monitor=val/avg/loss",
             "trainer.save_best=[avg/f1]", "trainer.max_epochs=2", "loader.batch_size=32", "loader.class_balanced=true",
             "transforms.mixup_alpha=0.2", "transforms.cutmix_alpha=1.0", "transforms/augment=trivialaugment",
             "transforms/erasing=random_erasing", out=tmp_path / "out")
    (run,) = runs(tmp_path / "out")
    out = tmp_path / "out"
    assert run.info.status == "FINISHED"
    assert run.data.params["data.b.size"] == "40" and run.data.metrics["data/bad_files"] == 2
    for metric in ("loss", "accuracy", "f1"):
        a, b, avg = (metric_history(out, run.info.run_id, f"val/{name}/{metric}") for name in ("a", "b", "avg"))
        assert [m.step for m in avg] == [1, 2]
        assert [m.value for m in avg] == pytest.approx([(x.value + y.value) / 2 for x, y in zip(a, b)])
    assert Path(run.data.tags["output_dir"], "best-avg_f1.pt").exists()
    names = {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs}
    assert names == {("a", "training"), ("a", "evaluation"), ("b", "evaluation")}


def test_class_mismatch_between_sets_fails_in_one_line(folder, tmp_path):
    other = make_image_folder(tmp_path / "other", per_class=4, offset=40, bad=False)
    (other / "9").rename(other / "nine")
    line = fails_in_one_line("dataset=multi", "+dataset@dataset.train.a=image_folder", f"dataset.train.a.root={folder}",
                             "+dataset@dataset.eval.b=image_folder", f"dataset.eval.b.root={other}", *FAST,
                             out=tmp_path / "out")
    assert line.endswith("class names differ between dataset.train.a and dataset.eval.b: "
                                           "only in train.a: 9; only in eval.b: nine")


def test_cifar10_offline_says_how_to_get_the_data(tmp_path):
    line = fails_in_one_line("dataset=cifar10", "transforms=cifar", f"dataset.root={tmp_path}", out=tmp_path / "out")
    assert f"cifar10 is not in {tmp_path}/cifar-10-batches-py: run with dataset.download=true" in line
    assert "put cifar-10-python.tar.gz from https://www.cs.toronto.edu/" in line


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format MNIST ships in: magic (0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def test_mnist_reads_torchvision_files_offline(tmp_path):
    images = {"train": list(digit_images(30)), "t10k": list(digit_images(5, offset=30))}
    for split, items in images.items():
        write_idx(tmp_path / "MNIST/raw" / f"{split}-images-idx3-ubyte", np.stack([pixels for _, pixels in items]))
        write_idx(tmp_path / "MNIST/raw" / f"{split}-labels-idx1-ubyte", np.array([int(label) for label, _ in items]))
    run_here("dataset=mnist", f"dataset.root={tmp_path}", "debug=fast", out=tmp_path / "out")
    (run,) = runs(tmp_path / "out")
    assert run.info.status == "FINISHED"
    assert run.data.params["data.train_size"] == "300" and run.data.params["data.mnist.size"] == "50"
    assert run.data.params["data.in_channels"] == "1" and run.data.params["data.num_classes"] == "10"


def test_a_file_that_fails_to_decode_in_a_loader_worker_is_counted_once(tmp_path):
    # passes the quick header check, so only decoding in the worker, every epoch, finds it
    root = folder_with_a_damaged_file(tmp_path)
    out = tmp_path / "out"
    run_here("dataset=image_folder", f"dataset.root={root}", "dataset.mode=L", "transforms=digits",
             "loader.num_workers=1", *FAST, out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.metrics["data/bad_files"] == 1
    listing = Path(client(out).download_artifacts(run.info.run_id, "data/bad_files.tsv")).read_text().splitlines()
    assert [line.split("\t")[0] for line in listing[1:]] == [str(root / "4" / "damaged.png")]
