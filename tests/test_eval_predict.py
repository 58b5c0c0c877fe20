"""From a training run to a usable model: reports, the MLflow model, exports, mode=eval|predict|export.

One real training run (simple_cnn on digits with named classes, the session's `trained`) is shared by every
check; the jobs run in this process, a sweep over checkpoints as `python main.py -m`."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.jobs.predict import image_files
from tests.conftest import client, environment, fails_in_one_line, metric_history, run_here, run_main, runs
from tests.named_digits import NAMES

HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript"))
PARENT = "mlflow.parentRunId"


def checkpoint_model(path: Path):
    from nf_trainer.model.simple_cnn import SimpleCNN

    ckpt = torch.load(path, weights_only=True)
    model = SimpleCNN(num_classes=10, in_channels=1)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def digit_batch(n=16):
    """Real digits images after the eval transform (Normalize 0.5/0.5)."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return (images - 0.5) / 0.5


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_best_epoch_reports_have_the_class_names(trained):
    out, run, out_dir = trained
    files = {a.path for a in client(out).list_artifacts(run.info.run_id, "reports/digits")}
    names = ("confusion_matrix.png", "confusion_matrix.csv", "per_class_report.csv")
    assert files == {f"reports/digits/{name}" for name in names}
    local = Path(client(out).download_artifacts(run.info.run_id, "reports/digits", str(out / "dl")))

    matrix = read_csv(local / "confusion_matrix.csv")
    assert matrix[0] == ["true \\ predicted", *NAMES] and [row[0] for row in matrix[1:]] == NAMES
    counts = np.array([[int(v) for v in row[1:]] for row in matrix[1:]])
    best_acc = max(m.value for m in metric_history(out, run.info.run_id, "val/digits/accuracy"))
    assert counts.sum() == 360 and counts.trace() / counts.sum() == pytest.approx(best_acc, abs=1e-6)

    report = read_csv(local / "per_class_report.csv")
    assert report[0] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in report[1:11]] == NAMES and [row[0] for row in report[11:]] == ["macro avg", "weighted avg"]
    assert sum(int(row[4]) for row in report[1:11]) == 360
    assert [int(row[4]) for row in report[1:11]] == counts.sum(axis=1).tolist()  # support = true images per class
    with Image.open(local / "confusion_matrix.png") as png:
        assert png.format == "PNG" and min(png.size) >= 400


def test_all_metrics_are_logged_per_eval_set(trained):
    out, run, _ = trained
    for name in ("accuracy", "accuracy_top5", "precision", "recall", "f1", "precision_micro", "recall_micro", "f1_micro",
                 "auroc", "calibration_error", "loss"):
        history = metric_history(out, run.info.run_id, f"val/digits/{name}")
        assert [m.step for m in history] == [1, 2, 3], name
        assert all(0 <= m.value <= (10 if name == "loss" else 1) for m in history), name
    accuracy = metric_history(out, run.info.run_id, "val/digits/accuracy")[-1].value
    assert metric_history(out, run.info.run_id, "val/digits/accuracy_top5")[-1].value >= accuracy
    logged = set(run.data.metrics)  # the train set: all but the `eval_only` entries (top-5, micro, AUROC, calibration)
    assert {"train/accuracy", "train/precision", "train/recall", "train/f1", "train/loss"} <= logged
    assert not {"train/accuracy_top5", "train/f1_micro", "train/auroc", "train/calibration_error"} & logged
    assert metric_history(out, run.info.run_id, "val/digits/f1_micro")[-1].value == pytest.approx(accuracy)


def test_logged_model_loads_and_predicts_like_the_checkpoint(trained):
    import mlflow

    out, run, out_dir = trained
    uri = f"runs:/{run.info.run_id}/model"
    with environment(MLFLOW_TRACKING_URI=None):  # set_tracking_uri exports it, and the config would read it
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        logged = mlflow.pytorch.load_model(uri)
    model, ckpt = checkpoint_model(out_dir / "best-accuracy.pt")
    x = digit_batch(16)
    with torch.no_grad():
        assert torch.allclose(logged(x), model(x), atol=1e-5)
        assert logged(x[:5]).shape == (5, 10)  # the batch size is not frozen
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["classes"] == NAMES
    assert info.flavors["python_function"]["loader_module"] == "nf_trainer.tracking.pyfunc"  # it takes raw images
    assert info.signature is None  # not the torch module's float batches: the pyfunc takes images of any size
    version = client(out).get_model_version("digits-cnn", "1")  # mlflow.registered_model_name=digits-cnn
    assert version.run_id == run.info.run_id and version.status == "READY"
    assert str(client(out).get_model_version_by_alias("digits-cnn", "champion").version) == "1"


def test_exports_predict_like_the_checkpoint(trained):
    out, run, out_dir = trained
    model, _ = checkpoint_model(out_dir / "best-accuracy.pt")
    x = digit_batch(7)
    scripted = torch.jit.load(str(out_dir / "export" / "model.torchscript.pt"))
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(scripted(x), expected, atol=1e-5)
    exported = {a.path for a in client(out).list_artifacts(run.info.run_id, "export")}
    assert "export/model.torchscript.pt" in exported
    if not HAS_ONNX:
        assert "export/model.onnx" not in exported  # skipped with a warning, the run still FINISHED
        return
    assert "export/model.onnx" in exported
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out_dir / "export" / "model.onnx"))
    (logits,) = session.run(None, {"images": x.numpy()})
    assert np.allclose(logits, expected.numpy(), atol=1e-4)


def runs_of_mode(out, mode: str) -> list:
    return [r for r in runs(out) if r.data.tags.get("mode") == mode]


def test_eval_mode_logs_a_run_with_the_training_runs_best_accuracy(trained, tmp_path):
    out, run, out_dir = trained
    before = {r.info.run_id for r in runs_of_mode(out, "eval")}
    run_here("mode=eval", f"ckpt={out_dir}/best-accuracy.pt", out=out)
    (evaluation,) = [r for r in runs_of_mode(out, "eval") if r.info.run_id not in before]
    assert evaluation.info.status == "FINISHED" and evaluation.info.run_id != run.info.run_id
    assert evaluation.data.tags["source_run_id"] == run.info.run_id
    assert evaluation.info.run_name == f"eval-best-accuracy-{run.info.run_name}"
    best_acc = max(m.value for m in metric_history(out, run.info.run_id, "val/digits/accuracy"))
    (point,) = metric_history(out, evaluation.info.run_id, "val/digits/accuracy")
    assert point.value == best_acc
    assert point.step == int(evaluation.data.tags["source_epoch"])
    assert evaluation.data.params["model._target_"] == "nf_trainer.model.simple_cnn.SimpleCNN"
    reports = {a.path for a in client(out).list_artifacts(evaluation.info.run_id, "reports/digits")}
    assert "reports/digits/per_class_report.csv" in reports
    hydra = {a.path for a in client(out).list_artifacts(evaluation.info.run_id, "hydra")}
    assert {"hydra/config_resolved.yaml", "hydra/overrides.yaml"} <= hydra
    # the configured objective, as a training run has it: the best val/digits/loss (one epoch here)
    (loss,) = metric_history(out, evaluation.info.run_id, "val/digits/loss")
    assert evaluation.data.metrics["objective"] == loss.value


def test_eval_mode_returns_the_configured_objective_and_logs_the_average_over_eval_sets(trained, tmp_path):
    """Two eval sets (the checkpoint's digits twice, under two names): val/avg/* as in training."""
    out, run, out_dir = trained
    member = {"_target_": "tests.named_digits.named_digits"}
    run_here("mode=eval", f"ckpt={out_dir}/best-accuracy.pt", "dataset=multi",
             f"+dataset.train.a={member}".replace("'", ""), f"+dataset.eval.b={member}".replace("'", ""),
             "objective.metric=avg/accuracy", "mlflow.run_name=eval-avg", out=out)
    (evaluation,) = [r for r in runs_of_mode(out, "eval") if r.info.run_name == "eval-avg"]
    metrics = evaluation.data.metrics
    assert metrics["val/avg/accuracy"] == pytest.approx((metrics["val/a/accuracy"] + metrics["val/b/accuracy"]) / 2)
    assert metrics["objective"] == metrics["val/avg/accuracy"]


@pytest.mark.slow  # python main.py -m
def test_a_sweep_over_checkpoints_is_one_parent_with_a_nested_child_each(trained):
    """`python main.py -m mode=eval ckpt=A,B`: one parent, two children, each with its objective and config hash."""
    out, run, out_dir = trained
    checkpoints = [out_dir / "best-accuracy.pt", out_dir / "last.pt"]
    run_main("-m", "mode=eval", f"ckpt={','.join(map(str, checkpoints))}", "objective.metric=accuracy", out=out)
    (parent,) = [r for r in runs(out) if r.data.tags.get("sweep.overrides", "").startswith("mode=eval")]
    children = [r for r in runs(out) if r.data.tags.get(PARENT) == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert sorted(c.data.tags["source_checkpoint"] for c in children) == sorted(str(p) for p in checkpoints)
    assert len({c.data.tags["nf.config_hash"] for c in children}) == 2
    for child in children:
        assert child.data.tags["mode"] == "eval" and child.info.status == "FINISHED"
        assert child.data.metrics["objective"] == child.data.metrics["val/digits/accuracy"]
    best = max(children, key=lambda c: c.data.metrics["objective"])
    assert parent.data.tags["objective.mode"] == "max" and parent.data.metrics["objective"] == best.data.metrics["objective"]


def test_predict_mode_writes_the_models_predictions(trained, tmp_path):
    out, run, out_dir = trained
    from sklearn.datasets import load_digits

    images = load_digits().images[-12:]  # 8x8 grey, values 0..16
    folder = tmp_path / "to_predict"
    for i, image in enumerate(images):
        sub = folder / ("nested/deeper" if i % 3 == 0 else "flat")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(sub / f"digit_{i}.{'PNG' if i % 2 else 'png'}")
    (folder / "flat" / "notes.txt").write_text("not an image")
    csv_path = tmp_path / "predictions.csv"
    run_here("mode=predict", f"ckpt={out_dir}/best-accuracy.pt", f"predict.input={folder}", f"predict.output={csv_path}",
             "predict.topk=3", "mlflow.run_name=predict-12", out=out)
    (prediction,) = [r for r in runs_of_mode(out, "predict") if r.info.run_name == "predict-12"]
    assert prediction.info.status == "FINISHED" and prediction.data.tags["source_run_id"] == run.info.run_id
    assert "predictions.csv" in {a.path for a in client(out).list_artifacts(prediction.info.run_id)}

    rows = read_csv(csv_path)
    assert rows[0] == ["path", "predicted", "confidence", "top1_class", "top1_confidence", "top2_class",
                       "top2_confidence", "top3_class", "top3_confidence"]
    assert len(rows) == 13 and not any(row[0].endswith(".txt") for row in rows)
    model, _ = checkpoint_model(out_dir / "best-accuracy.pt")
    for row in rows[1:]:
        with Image.open(row[0]) as image:
            x = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None, None]
        with torch.no_grad():
            probabilities = model((x - 0.5) / 0.5).softmax(dim=1)[0]
        confidences, indices = probabilities.topk(3)
        assert row[1] == NAMES[indices[0]] == row[3]
        assert float(row[2]) == pytest.approx(confidences[0].item(), abs=1e-5)
        assert [row[5], row[7]] == [NAMES[i] for i in indices[1:]]
        assert [float(row[6]), float(row[8])] == pytest.approx(confidences[1:].tolist(), abs=1e-5)


def test_a_job_that_fails_inside_its_run_ends_it_failed_with_the_error(trained, tmp_path):
    """Predict, like every job, ends its run FAILED with the error's tags when something goes wrong in it."""
    out, run, out_dir = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    for size in (8, 9):
        Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(folder / f"{size}.png")
    line = fails_in_one_line("mode=predict", f"ckpt={out_dir}/last.pt", f"predict.input={folder}",
                             "transforms.eval=[{_target_: torchvision.transforms.v2.ToDtype, dtype: float32, scale: true}]",
                             "mlflow.run_name=predict-mixed", out=out)
    assert "have different sizes after the eval transforms; add a Resize to transforms.eval" in line
    (failed,) = [r for r in runs(out) if r.info.run_name == "predict-mixed"]
    assert failed.info.status == "FAILED" and failed.data.tags["error.type"] == "NfTrainerError"
    assert "different sizes" in failed.data.tags["error"]


def test_export_mode_writes_torchscript_from_a_checkpoint(trained):
    out, run, out_dir = trained
    run_here("mode=export", f"ckpt={out_dir}/best-accuracy.pt", "export=[torchscript]", out=out)
    (exported,) = [p for p in out.glob("runs/*/*/export/model.torchscript.pt") if p.parent.parent != out_dir]
    (export_run,) = runs_of_mode(out, "export")
    assert export_run.info.status == "FINISHED"
    assert {a.path for a in client(out).list_artifacts(export_run.info.run_id, "export")} == {"export/model.torchscript.pt"}
    scripted = torch.jit.load(str(exported))
    model, _ = checkpoint_model(out_dir / "best-accuracy.pt")
    x = digit_batch(3)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_a_missing_checkpoint_fails_in_one_line(out, tmp_path):
    line = fails_in_one_line("mode=eval", f"ckpt={tmp_path}/missing.pt", out=out)
    assert line == f"no checkpoint at '{tmp_path}/missing.pt': give ckpt= a .pt file or a run's output dir"
    assert not runs(out)


def test_a_folder_without_images_is_a_one_line_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(NfTrainerError, match=f"no images under '{tmp_path}' \\(looked for .bmp, .gif"):
        image_files(tmp_path)


def digit_pngs(folder: Path, n: int) -> list[Path]:
    """The last n digits images as 8x8 grey PNG files, as a user would have them."""
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    files = [folder / f"digit_{i:02d}.png" for i in range(n)]
    for file, image in zip(files, load_digits().images[-n:]):
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(file)
    return files


def as_base64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def test_the_logged_model_takes_raw_images_and_names_the_classes_mode_predict_names(trained, tmp_path):
    import mlflow
    import pandas as pd

    out, run, out_dir = trained
    files = digit_pngs(tmp_path / "images", 12)
    run_here("mode=predict", f"ckpt={out_dir}/best-accuracy.pt", f"predict.input={tmp_path / 'images'}",
             f"predict.output={tmp_path / 'predictions.csv'}", out=out)
    predicted = {row[0]: row[1] for row in read_csv(tmp_path / "predictions.csv")[1:]}
    expected = [predicted[str(file)] for file in files]

    with environment(MLFLOW_TRACKING_URI=None):  # set_tracking_uri exports it, and the config would read it
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    from_strings = served.predict(pd.DataFrame({"image": [as_base64(file) for file in files]}))
    assert list(from_strings.class_name) == expected  # the eval transforms are inside: same classes as mode=predict
    assert [NAMES[i] for i in from_strings.class_index] == expected
    probabilities = np.array(from_strings.probabilities.tolist())
    assert probabilities.shape == (12, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    arrays = [np.asarray(Image.open(file)) for file in files]  # uint8 (8, 8)
    assert list(served.predict(arrays).class_name) == expected
    # any size, any channels: an RGB photo-sized array is resized and turned grey by the eval preprocessing
    big_rgb = np.repeat(np.kron(arrays[0], np.ones((5, 4), dtype=np.uint8))[:, :, None], 3, axis=2)  # (40, 32, 3)
    assert served.predict(big_rgb).class_name.tolist()[0] in NAMES
    with pytest.raises(Exception, match="an image array must be uint8"):
        served.predict(np.zeros((8, 8), dtype=np.float32))


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_class_names(trained, tmp_path):
    import os
    import subprocess
    import sys

    import requests

    from tests.test_tracking_server import free_port, stop, wait_until_up

    out, run, out_dir = trained
    files = digit_pngs(tmp_path / "images", 5)
    url, log = f"http://127.0.0.1:{free_port()}", tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run.info.run_id}/model",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db",  # uvicorn: the venv's
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        wait_until_up(url, proc, log, path="/ping")
        reply = requests.post(f"{url}/invocations", timeout=60,
                              json={"dataframe_split": {"columns": ["image"], "data": [[as_base64(f)] for f in files]}})
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
    finally:
        stop(proc)
    model, _ = checkpoint_model(out_dir / "best-accuracy.pt")
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0)[None] for f in files])
    with torch.no_grad():
        expected = [NAMES[i] for i in model((pixels - 0.5) / 0.5).argmax(dim=1).tolist()]
    assert [p["class_name"] for p in predictions] == expected
    assert all(len(p["probabilities"]) == 10 and NAMES[p["class_index"]] == p["class_name"] for p in predictions)
