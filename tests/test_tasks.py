"""The task interface: a task defined outside the package trains through main.py with no edit of nf_trainer;
what the loop adds up (Steps, loss parts) and what tasks turn metrics into (plain floats under class names)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nf_trainer.core.metric_keys import per_class_key
from nf_trainer.tasks.classification import Classification
from nf_trainer.trainer.step import LossSums, Step
from tests.conftest import metric_history, run_here, runs

CENTRE = ("task._target_=tests.centre_task.Centre", "task.name=centre", "task.monitor=error",
          "model._target_=tests.centre_task.CentreNet", "dataset._target_=tests.centre_task.centres",
          "dataset.name=centres", "~model._tasks_", "~dataset._tasks_", "~loss", "~metrics", "transforms=none",
          "trainer.max_epochs=6", "trainer.progress_bar=false", "trainer.early_stopping.enabled=false")


def test_a_task_defined_in_the_test_tree_trains_through_main_and_learns(tmp_path, empty_store):
    """The original design's promise: the trainer extends to other tasks. This one regresses where a square is;
    the same run on shuffled targets is the control."""
    errors = {}
    for shuffled in (False, True):
        out = tmp_path / f"shuffled-{shuffled}"
        out.mkdir()
        (out / "mlflow.db").write_bytes(empty_store.read_bytes())
        run_here(*CENTRE, f"+dataset.shuffled={shuffled}", out=out)
        (run,) = runs(out)
        assert run.info.status == "FINISHED" and run.data.params["task._target_"] == "tests.centre_task.Centre"
        history = metric_history(out, run.info.run_id, "val/centres/error")
        assert [m.step for m in history] == list(range(1, 7))
        assert metric_history(out, run.info.run_id, "train/loss")
        # the objective, the best checkpoint and early stopping follow the task's monitor: the least error
        assert run.data.metrics["objective"] == min(m.value for m in history)
        assert list((out / "runs").rglob("best-error.pt"))
        errors[shuffled] = min(m.value for m in history)
    assert errors[False] < 0.05 and errors[True] > 2 * errors[False], errors


def test_loss_sums_add_each_part_and_the_total_weighted_by_images():
    sums = LossSums(torch.device("cpu"))
    sums.add(Step(torch.tensor(3.0), 2, parts={"box": torch.tensor(1.0), "cls": torch.tensor(2.0)}))
    sums.add(Step(torch.tensor(6.0), 1, parts={"box": torch.tensor(4.0), "cls": torch.tensor(2.0)}))
    assert sums.means() == pytest.approx({"loss": 4.0, "loss/box": 2.0, "loss/cls": 2.0})
    restored = LossSums.from_state(sums.state_dict(), torch.device("cpu"))
    assert restored.means() == sums.means() and restored.seen == 3


def test_steps_without_a_loss_count_images_only():
    sums = LossSums(torch.device("cpu"))
    sums.add(Step(None, 4, outputs=[], targets=[]))
    assert sums.means() == {} and sums.seen == 4


def test_per_class_values_go_under_class_names_and_scalars_stay_scalars():
    task = Classification(["cat", "sea lion", "T-shirt/top"])
    values = task.values({"accuracy": torch.tensor(0.5), "f1": torch.tensor([0.1, 0.2, 0.3])})
    assert values == pytest.approx({"accuracy": 0.5, "f1/cat": 0.1, "f1/sea lion": 0.2, "f1/T-shirt/top": 0.3})
    with pytest.raises(Exception, match="average=macro"):
        task.values({"odd": torch.tensor([1.0, 2.0])})


def test_class_names_become_valid_mlflow_keys():
    assert per_class_key("ap", "person (adult)") == "ap/person _adult_"
    assert per_class_key("iou", "road") == "iou/road"
    assert per_class_key("ap", "ünïcode") == "ap/_n_code"


def test_reports_of_many_classes_show_the_most_confused_pairs_not_a_crammed_matrix(tmp_path):
    from PIL import Image

    from nf_trainer.tasks.classification_reports import write_reports

    classes = [f"class {i}" for i in range(40)]
    targets = torch.arange(40).repeat(5)
    predictions = targets.clone()
    predictions[:40] = (targets[:40] + 1) % 40  # every class once taken for the next
    predictions[40:43] = 7  # and three more images of classes 0-2 for class 7
    write_reports(targets.numpy(), predictions.numpy(), classes, tmp_path, "many")
    assert not (tmp_path / "confusion_matrix.png").exists()
    rows = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 41 and rows[0].count(",") == 40  # the full matrix stays, as CSV
    confused = (tmp_path / "most_confused.csv").read_text().splitlines()
    assert confused[0] == "true,predicted,images,share of the true class" and len(confused) == 1 + 40 + 3
    with Image.open(tmp_path / "most_confused.png") as picture:
        assert picture.width <= 1600 and picture.height <= 1200  # readable, not 4000x4000


def test_reports_of_a_few_classes_keep_the_matrix_picture(tmp_path):
    from nf_trainer.tasks.classification_reports import write_reports

    targets = torch.tensor([0, 1, 2, 2])
    write_reports(targets.numpy(), torch.tensor([0, 2, 2, 2]).numpy(), ["a", "b", "c"], tmp_path, "few")
    assert (tmp_path / "confusion_matrix.png").exists() and not (tmp_path / "most_confused.png").exists()
    assert "b,0.0000,0.0000,0.0000,1" in (tmp_path / "per_class_report.csv").read_text()


class Recorder:
    """A tracker that keeps the pictures it is given (the job's tracker is tested in tests/test_tracking.py)."""

    def __init__(self):
        self.pictures = []

    def log_image(self, image, key, step):
        self.pictures.append((key, step, image))


def test_pictures_come_at_each_evaluation_unless_they_would_take_more_than_their_share(monkeypatch):
    from nf_trainer.trainer import pictures as module

    task = Classification([str(i) for i in range(10)])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    shown, tracker = module.Pictures(task, batch, "val/digits/predictions"), Recorder()
    shown.log(model, tracker, step=1)
    (key, step, image), = tracker.pictures
    assert (key, step) == ("val/digits/predictions", 1) and image.dtype == np.uint8 and image.shape[2] == 3
    shown.cost = 3600.0  # as if drawing took an hour: the next evaluation comes too soon for another picture
    shown.log(model, tracker, step=2)
    assert [s for _, s, _ in tracker.pictures] == [1]
    monkeypatch.setattr(module, "SHARE", float("inf"))  # any share allowed: a picture at every evaluation
    shown.log(model, tracker, step=3)
    assert [s for _, s, _ in tracker.pictures] == [1, 3]
