"""task=detection end to end: the tiny detector learns the generated shapes far above the same run on shuffled
labels, and its run holds what a detection researcher reads (losses, mAP, per-class AP, pictures by step,
reports); the checkpoint evaluates, predicts and exports, and the logged model answers raw images with boxes."""
from __future__ import annotations

import base64
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import client, environment, fails_in_one_line, metric_history, only_run, run_here, run_main, runs

HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript"))
EPOCHS = 5  # the tiny detector on dataset=shapes' defaults (800 train images of 64 px, batch 4): map_50 ~0.5 after 3 epochs
LEARN = ("task=detection", f"trainer.max_epochs={EPOCHS}", "trainer.progress_bar=false")


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """`python main.py task=detection` as a new user runs it (the defaults: dataset=shapes, model=tiny_detector), with
    its model logged and its exports (ONNX where the `onnx` extra is installed): (out, run, output dir, stdout)."""
    out = tmp_path_factory.mktemp("detector") / "outputs"
    out.mkdir()
    result = run_main(*LEARN, "mlflow.log_model=true", "export=[torchscript,onnx]", out=out, timeout=2400)
    run = only_run(out)
    return out, run, Path(run.data.tags["output_dir"]), result.stdout + result.stderr


def best(out, run, key: str) -> float:
    return max(m.value for m in metric_history(out, run.info.run_id, key))


@pytest.mark.slow  # two detector trainings
def test_the_tiny_detector_learns_shapes_far_above_shuffled_labels(detector, tmp_path):
    out, run, _, _ = detector
    control = tmp_path / "control"
    control.mkdir()
    run_here(*LEARN, "dataset.shuffle_labels=true", "trainer.pictures=0", out=control)
    learned, shuffled = best(out, run, "val/shapes/map_50"), best(control, only_run(control), "val/shapes/map_50")
    # shuffled labels still teach where objects are, not what they are
    assert learned >= 0.6 and learned >= shuffled + 0.2, (learned, shuffled)


@pytest.mark.slow
def test_a_detection_run_logs_its_losses_map_per_class_ap_pictures_and_reports(detector):
    out, run, out_dir, log = detector
    steps = list(range(1, EPOCHS + 1))
    for key in ("train/loss", "train/loss/classifier", "train/loss/box_reg", "train/loss/objectness",
                "train/loss/rpn_box_reg", "val/shapes/map", "val/shapes/map_50", "val/shapes/map_75", "val/shapes/mar_100",
                "val/shapes/ap/circle", "val/shapes/ap/square", "val/shapes/ap/triangle"):
        assert [m.step for m in metric_history(out, run.info.run_id, key)] == steps, key
    assert "val/shapes/loss" not in run.data.metrics  # a torchvision detector gives no val loss: none is faked
    parts = sum(run.data.metrics[f"train/loss/{p}"] for p in ("classifier", "box_reg", "objectness", "rpn_box_reg"))
    assert run.data.metrics["train/loss"] == pytest.approx(parts, rel=1e-4)  # the total is the sum of its parts
    # one monitor: the objective, the best checkpoint and the summary all say map
    assert run.data.metrics["objective"] == best(out, run, "val/shapes/map")
    assert f"best val/shapes/map: {run.data.metrics['objective']:#.4g} at epoch" in log
    assert f"best checkpoint: {out_dir}/best-map.pt" in log
    assert run.data.params["data.num_classes"] == "3" and run.data.params["model.num_classes"] == "None"
    artifacts = {a.path for a in client(out).list_artifacts(run.info.run_id, "reports/shapes")}
    assert {"reports/shapes/per_class_ap.csv", "reports/shapes/pr_curves.png", "reports/shapes/per_class_ap.png"} <= artifacts
    table = Path(client(out).download_artifacts(run.info.run_id, "reports/shapes/per_class_ap.csv", str(out / "dl")))
    rows = list(csv.DictReader(table.open()))
    assert [r["class"] for r in rows] == ["circle", "square", "triangle"] and all(int(r["boxes"]) > 0 for r in rows)
    pictures = [a.path for a in client(out).list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pictures) == steps  # one picture per evaluation
    with Image.open(client(out).download_artifacts(run.info.run_id, pictures[0], str(out / "dl"))) as picture:
        assert picture.mode == "RGB" and 400 < picture.width < 700


@pytest.mark.slow
def test_eval_mode_measures_the_checkpoint_as_training_did(detector):
    out, run, out_dir, _ = detector
    ckpt = torch.load(out_dir / "best-map.pt", weights_only=True)
    run_here("mode=eval", f"ckpt={out_dir}/best-map.pt", out=out)
    evaluated = [r for r in runs(out) if r.data.tags["mode"] == "eval"][0]
    assert evaluated.data.metrics["val/shapes/map"] == pytest.approx(ckpt["metrics"]["val/shapes/map"], abs=1e-6)
    assert evaluated.data.metrics["objective"] == evaluated.data.metrics["val/shapes/map"]


def shapes_files(folder: Path, count: int, scale: int) -> list[Path]:
    """The first val images of dataset=shapes as PNG files, `scale` times their size."""
    from nf_trainer.dataset.shapes import shapes

    folder.mkdir(parents=True)
    val = next(iter(shapes().eval.values()))
    files = []
    for i in range(count):
        image = Image.fromarray(val[i][0].permute(1, 2, 0).numpy())
        files.append(folder / f"shape_{i:02d}.png")
        image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(files[-1])
    return files


@pytest.mark.slow
def test_predict_writes_coco_results_and_boxes_in_each_images_own_pixels(detector, tmp_path):
    out, _, out_dir, _ = detector
    for scale in (1, 2):
        shapes_files(tmp_path / f"x{scale}", 6, scale)
        run_here("mode=predict", f"ckpt={out_dir}/best-map.pt", f"predict.input={tmp_path / f'x{scale}'}",
                 f"predict.output={tmp_path / f'x{scale}.csv'}", out=out)
    rows = {scale: list(csv.DictReader((tmp_path / f"x{scale}.csv").open())) for scale in (1, 2)}
    assert rows[1] and [r["class"] for r in rows[1]] == [r["class"] for r in rows[2]]
    for small, large in zip(rows[1], rows[2]):  # the model sees the same 64 px input: boxes scale with the file
        assert float(large["x2"]) == pytest.approx(2 * float(small["x2"]), abs=0.05)
        assert {r["class"] for r in rows[1]} <= {"circle", "square", "triangle"}
    coco = json.loads((tmp_path / "x1.json").read_text())
    assert len(coco) == len(rows[1]) and {"image_id", "category_id", "category_name", "bbox", "score"} <= set(coco[0])
    first = rows[1][0]
    x, y, w, h = coco[0]["bbox"]
    assert (x, y, x + w, y + h) == pytest.approx(tuple(float(first[k]) for k in ("x1", "y1", "x2", "y2")), abs=0.02)


@pytest.mark.slow
def test_the_logged_detector_answers_a_raw_image_with_boxes_class_names_and_scores(detector, tmp_path):
    import mlflow

    out, run, out_dir, _ = detector
    files = shapes_files(tmp_path / "images", 3, 2)
    run_here("mode=predict", f"ckpt={out_dir}/best-map.pt", f"predict.input={tmp_path / 'images'}",
             f"predict.output={tmp_path / 'predicted.csv'}", out=out)  # task.score_threshold: 0.3, the default
    with environment(MLFLOW_TRACKING_URI=None):
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    answers = served.predict([base64.b64encode(f.read_bytes()).decode() for f in files])
    assert list(answers.columns) == ["boxes", "class_names", "scores"]
    from_arrays = served.predict([np.asarray(Image.open(f)) for f in files])  # uint8 arrays of any size
    assert from_arrays.class_names.tolist() == answers.class_names.tolist()
    predicted = list(csv.DictReader((tmp_path / "predicted.csv").open()))
    for file, boxes, names, scores in zip(files, answers.boxes, answers.class_names, answers.scores):
        kept = [r for r in predicted if r["image"] == str(file) and float(r["score"]) >= 0.3]
        assert names == [r["class"] for r in kept] and all(s >= 0.3 for s in scores)
        assert np.allclose(boxes, [[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in kept], atol=0.05)
    assert any(len(b) for b in answers.boxes), "the trained detector finds shapes"


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_raw_image_with_boxes(detector, tmp_path):
    import os
    import subprocess
    import sys

    import mlflow
    import requests

    from tests.test_tracking_server import free_port, stop, wait_until_up

    out, run, _, _ = detector
    files = shapes_files(tmp_path / "images", 2, 2)
    url, log = f"http://127.0.0.1:{free_port()}", tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run.info.run_id}/model",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db",
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    images = [base64.b64encode(f.read_bytes()).decode() for f in files]
    try:
        wait_until_up(url, proc, log, path="/ping")
        reply = requests.post(f"{url}/invocations", timeout=120,
                              json={"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})
        assert reply.status_code == 200, reply.text
        answers = reply.json()["predictions"]
    finally:
        stop(proc)
    with environment(MLFLOW_TRACKING_URI=None):
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        expected = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(images)
    assert [a["class_names"] for a in answers] == expected.class_names.tolist()
    assert all(np.allclose(a["boxes"], b, atol=1e-3) for a, b in zip(answers, expected.boxes) if len(b))


@pytest.mark.slow
def test_the_torchscript_export_finds_the_boxes_of_the_logged_model(detector):
    import mlflow

    from nf_trainer.dataset.shapes import shapes

    out, run, out_dir, _ = detector
    scripted = torch.jit.load(str(out_dir / "export" / "model.torchscript.pt"))
    with environment(MLFLOW_TRACKING_URI=None):
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    image = next(iter(shapes().eval.values()))[1][0].float() / 255
    _, (found,) = scripted([image])  # a scripted torchvision detector answers (losses, detections)
    with torch.inference_mode():
        (expected,) = logged([image])
    assert len(expected["boxes"]) and torch.allclose(found["boxes"], expected["boxes"], atol=1e-4)


@pytest.mark.slow
def test_the_onnx_export_takes_one_image_of_any_size_and_finds_the_boxes_of_the_checkpoint(detector):
    from nf_trainer.dataset.shapes import shapes

    out, _, out_dir, _ = detector
    if not HAS_ONNX:
        assert not (out_dir / "export" / "model.onnx").exists()  # skipped with a warning, the run still FINISHED
        pytest.skip("the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out_dir / "export" / "model.onnx"))
    scripted = torch.jit.load(str(out_dir / "export" / "model.torchscript.pt"))
    image = next(iter(shapes().eval.values()))[1][0].float() / 255
    for picture in (image, torch.nn.functional.interpolate(image[None], size=(80, 96))[0]):
        found = dict(zip(("boxes", "labels", "scores"), session.run(None, {"images": picture.numpy()})))
        with torch.inference_mode():
            _, (expected,) = scripted([picture])
        assert len(found["boxes"]) and np.allclose(found["boxes"], expected["boxes"].numpy(), atol=1e-3)
        assert (found["labels"] == expected["labels"].numpy()).all()


def test_a_classification_model_or_dataset_is_refused_for_detection_in_one_line(out):
    line = fails_in_one_line("task=detection", "model=resnet18", out=out)
    assert line.startswith("task=detection with model=resnet18: it serves classification") and "model=tiny_detector" in line
    line = fails_in_one_line("task=detection", "dataset=digits", out=out)
    assert line.startswith("task=detection with dataset=digits: it serves classification") and "dataset=shapes" in line
    line = fails_in_one_line("task=detection", "transforms/augment=randaugment", out=out)  # RandAugment moves no box
    assert line.startswith("task=detection with transforms/augment=randaugment") and "~transforms/augment" in line
    line = fails_in_one_line("task=detection", "transforms.mixup_alpha=0.2", out=out)  # MixUp mixes no box
    assert line.startswith("transforms.mixup_alpha is not a key of transforms")
    assert runs(out) == []


def test_a_detector_trains_and_evaluates_on_real_photographs_through_dataset_voc(tmp_path, out):
    """The deepforest tree-crown photos (tests/data/deepforest, VOC XML beside the images; the same two images
    as train and val): the run reads 98 real boxes of three classes and logs mAP and AP under their names."""
    import shutil

    from tests.detection_files import DEEPFOREST as DATA

    for split in ("train", "val"):
        (tmp_path / "trees" / split).mkdir(parents=True)
        for file in [*DATA.glob("images/*.jpg"), *DATA.glob("voc/*.xml")]:
            shutil.copy(file, tmp_path / "trees" / split)
    run_here("task=detection", "dataset=voc", f"dataset.root={tmp_path / 'trees'}", "model.anchor_sizes=[16,32,64]",
             "loader.batch_size=2", "trainer.max_epochs=2", "trainer.pictures=2", "mlflow.log_model=false",
             "trainer.progress_bar=false", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.params["data.num_classes"] == "3"
    assert [m.step for m in metric_history(out, run.info.run_id, "val/trees/map")] == [1, 2]
    assert np.isfinite(run.data.metrics["train/loss/classifier"])
    table = Path(client(out).download_artifacts(run.info.run_id, "reports/trees/per_class_ap.csv", str(tmp_path / "dl")))
    assert {r["class"]: int(r["boxes"]) for r in csv.DictReader(table.open())} == {"Alive": 9, "Dead": 28, "Tree": 61}
    assert any(a.path.endswith(".png") for a in client(out).list_artifacts(run.info.run_id, "images"))
