"""From a training run to a usable model: reports, the MLflow model, exports, mode=eval and mode=predict.

One real training run (simple_cnn on digits with named classes) is shared by every check."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import client, metric_history, run_main, runs
from tests.named_digits import NAMES

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # steady timings on a shared 2-core machine
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "outputs"
    out.mkdir()
    run_main("dataset._target_=tests.named_digits.named_digits", "trainer.max_epochs=3", "trainer.limit_train_batches=8",
             "trainer.save_best=[accuracy]", "loss.label_smoothing=0.1", "mlflow.log_model=true", "mlflow.registered_model_name=digits-cnn",
             "export=[torchscript,onnx]", "trainer.progress_bar=false", out=out, env=ONE_THREAD)
    (run,) = runs(out)
    out_dir = Path(run.data.tags["output_dir"])
    return out, run, out_dir


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
    assert files == {f"reports/digits/{name}" for name in ("confusion_matrix.png", "confusion_matrix.csv", "per_class_report.csv")}
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
    logged = set(run.data.metrics)  # the train set: all but the `eval_only` entries (AUROC, calibration)
    assert {"train/accuracy", "train/f1", "train/f1_micro", "train/loss"} <= logged
    assert not {"train/auroc", "train/calibration_error"} & logged
    assert metric_history(out, run.info.run_id, "val/digits/f1_micro")[-1].value == pytest.approx(accuracy)


def test_logged_model_loads_and_predicts_like_the_checkpoint(trained):
    import mlflow

    out, run, out_dir = trained
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    uri = f"runs:/{run.info.run_id}/model"
    logged = mlflow.pytorch.load_model(uri)
    model, ckpt = checkpoint_model(out_dir / "best-accuracy.pt")
    x = digit_batch(16)
    with torch.no_grad():
        assert torch.allclose(logged(x), model(x), atol=1e-5)
        assert logged(x[:5]).shape == (5, 10)  # the batch size is not frozen
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["classes"] == NAMES
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    version = client(out).get_model_version("digits-cnn", "1")  # mlflow.registered_model_name=digits-cnn
    assert version.run_id == run.info.run_id and version.status == "READY"


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


def test_eval_mode_logs_a_run_with_the_training_runs_best_accuracy(trained):
    out, run, out_dir = trained
    run_main("mode=eval", f"ckpt={out_dir}/best-accuracy.pt", out=out, env=ONE_THREAD)
    evaluation = next(r for r in runs(out) if r.data.tags.get("mode") == "eval")
    assert evaluation.info.status == "FINISHED" and evaluation.info.run_id != run.info.run_id
    assert evaluation.data.tags["source_run_id"] == run.info.run_id
    best_acc = max(m.value for m in metric_history(out, run.info.run_id, "val/digits/accuracy"))
    (point,) = metric_history(out, evaluation.info.run_id, "val/digits/accuracy")
    assert point.value == best_acc
    assert point.step == int(evaluation.data.tags["source_epoch"])
    assert evaluation.data.params["model._target_"] == "nf_trainer.model.simple_cnn.SimpleCNN"
    reports = {a.path for a in client(out).list_artifacts(evaluation.info.run_id, "reports/digits")}
    assert "reports/digits/per_class_report.csv" in reports


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
    run_main("mode=predict", f"ckpt={out_dir}/best-accuracy.pt", f"predict.input={folder}", f"predict.output={csv_path}",
             "predict.topk=3", out=out, env=ONE_THREAD)

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


def test_export_mode_writes_torchscript_from_a_checkpoint(trained):
    out, run, out_dir = trained
    run_main("mode=export", f"ckpt={out_dir}/best-accuracy.pt", "export=[torchscript]", out=out, env=ONE_THREAD)
    (exported,) = [p for p in out.glob("runs/*/*/export/model.torchscript.pt") if p.parent.parent != out_dir]
    scripted = torch.jit.load(str(exported))
    model, _ = checkpoint_model(out_dir / "best-accuracy.pt")
    x = digit_batch(3)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize("overrides,needle", [
    (["mode=eval"], "mode=eval needs ckpt=PATH"),
    (["mode=predict", "ckpt=x.pt"], "mode=predict needs predict.input=DIR"),
    (["mode=serve", "ckpt=x.pt"], "mode must be one of train, eval, predict, export, got 'serve'"),
    (["ckpt=x.pt"], "ckpt= is read by mode=eval|predict|export; to continue training use resume="),
    (["export=[tflite]"], "export: unknown format 'tflite'; choose from torchscript, onnx"),
])
def test_bad_mode_settings_are_one_line_errors(overrides, needle):
    from nf_trainer.config import validate
    from nf_trainer.errors import NfTrainerError
    from tests.test_config import compose_cfg

    with pytest.raises(NfTrainerError) as err:
        validate(compose_cfg(*overrides))
    assert needle in str(err.value)


def test_a_missing_checkpoint_fails_in_one_line(out, tmp_path):
    result = run_main("mode=eval", f"ckpt={tmp_path}/missing.pt", out=out, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"no checkpoint at '{tmp_path}/missing.pt': give ckpt= a .pt file or a run's output dir" in result.stderr


def test_a_folder_without_images_is_a_one_line_error(tmp_path):
    from nf_trainer.errors import NfTrainerError
    from nf_trainer.predict import image_files

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(NfTrainerError, match=f"no images under '{tmp_path}' \\(looked for .bmp, .gif"):
        image_files(tmp_path)
