"""The tracker interface: every implementation has every method of `Tracker`, with its signature; the
child-process tracker carries each call to a real MLflow store; a job's outcome sets the run's status."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nf_trainer.tracking.child import ChildProcessTracker
from nf_trainer.tracking.factory import open_tracker
from nf_trainer.tracking.interface import OBJECTIVE, TRACKER_METHODS, Tracker
from nf_trainer.tracking.mlflow_tracker import MlflowTracker
from nf_trainer.tracking.null import NullTracker
from nf_trainer.tracking.outcome import tracked_outcome
from nf_trainer.tracking.secrets import MASK
from nf_trainer.trainer.signals import Interrupted
from tests.conftest import client, compose_cfg, environment, metric_history, runs, store_uri


def signature(cls, name: str) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(getattr(cls, name)).parameters.values()]


def test_the_interface_names_every_call_a_job_makes():
    assert set(TRACKER_METHODS) == {"start", "log_metrics", "log_step_metrics", "log_objective", "log_artifact",
                                    "log_text", "log_image", "log_inputs", "log_model", "set_tags", "run_name_of", "end",
                                    "close"}


@pytest.mark.parametrize("implementation", [MlflowTracker, NullTracker])
def test_in_process_trackers_implement_every_method_with_its_signature(implementation):
    for name in TRACKER_METHODS:
        assert name in vars(implementation), f"{implementation.__name__} lacks {name}"
        if name != "close":  # the interface's close takes nothing; an implementation may add defaults
            assert signature(implementation, name) == signature(Tracker, name), name
    assert isinstance(NullTracker(), Tracker)


def test_the_null_tracker_accepts_no_name_outside_the_interface():
    with pytest.raises(AttributeError):
        NullTracker().log_metric("x", 1.0)  # a typo must not pass silently


@pytest.mark.parametrize("where,expected", [("process", ChildProcessTracker), ("inline", MlflowTracker),
                                            ("auto", MlflowTracker)])  # auto: MLflow is loaded in this process
def test_mlflow_tracker_chooses_where_mlflow_runs(out, where, expected):
    import mlflow  # noqa: F401

    tracker = open_tracker(compose_cfg(f"mlflow.tracker={where}", f"paths.output_root={out}").mlflow)
    try:
        assert type(tracker) is expected
    finally:
        tracker.close()


def test_other_ranks_get_the_null_tracker(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert type(open_tracker(compose_cfg().mlflow)) is NullTracker


@pytest.fixture
def child(out: Path):
    tracker = ChildProcessTracker(store_uri(out), "nf_trainer", str(out / "mlartifacts"))
    yield tracker
    tracker.close()


def test_a_run_whose_start_the_job_never_saw_ends_killed_when_the_job_closes_the_child(out):
    from nf_trainer.tracking.child import send

    tracker = ChildProcessTracker(store_uri(out), "nf_trainer", str(out / "mlartifacts"))
    # a Ctrl-C while the job waited for `start`'s reply: the child made the run, the job never read its id
    tracker._calls += 1  # what _call counts before it sends
    send(tracker._outbox, (tracker._calls, "start", ("cut-short", {}, {}), {}))
    tracker.close()
    (run,) = runs(out)
    assert run.info.run_name == "cut-short" and run.info.status == "KILLED"


def test_the_child_process_tracker_forwards_every_method_to_a_real_store(child, out, tmp_path):
    assert isinstance(child, Tracker)
    with pytest.raises(AttributeError, match="not a Tracker method"):
        child.log_metric  # noqa: B018  (only the interface's names are forwarded)

    run_id = child.start("a-run", {"optimizer.lr": "0.1", "db.password": "hunter2-x"}, {"mode": "train"})
    assert child.run_id == run_id and child.run_name_of(run_id) == "a-run" and child.run_name_of("nope") is None
    child.log_step_metrics({"train/step_loss": 2.0}, step=5)
    for epoch, loss in [(1, 0.9), (2, 0.4), (3, 0.6)]:
        child.log_metrics({"val/digits/loss": loss}, step=epoch)
    assert child.log_objective("val/digits/loss", "min") == (0.4, 2)  # the value and its epoch
    assert math.isnan(child.log_objective("val/digits/nothing", "min").value)
    (tmp_path / "notes.txt").write_text("password: hunter2-x and more")
    child.log_artifact(tmp_path / "notes.txt", "extra")
    child.log_artifact(tmp_path / "missing.txt")  # skipped, not an error
    child.log_text("text with hunter2-x", "error/traceback.txt")
    child.set_tags({"error": "boom"})
    picture = np.zeros((6, 4, 3), np.uint8)
    picture[:, :, 0] = 255  # red
    child.log_image(picture, "val/digits/predictions", step=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    uri = child.log_model(model, torch.rand(2, 1, 2, 2), ["a", "b", "c"])
    assert uri.startswith(f"runs:/{run_id}/model")
    child.end("FINISHED")
    child.close()

    (run,) = runs(out)
    assert run.info.status == "FINISHED" and run.info.run_name == "a-run"
    assert run.data.params == {"optimizer.lr": "0.1", "db.password": MASK}
    assert run.data.tags["mode"] == "train" and run.data.tags["error"] == "boom"
    assert [(m.step, m.value) for m in metric_history(out, run_id, "train/step_loss")] == [(5, 2.0)]
    assert run.data.metrics[OBJECTIVE] == 0.4
    assert [(m.step, m.value) for m in metric_history(out, run_id, OBJECTIVE)] == [(2, 0.4)]  # at the epoch that reached it
    notes = Path(client(out).download_artifacts(run_id, "extra/notes.txt", str(tmp_path / "dl"))).read_text()
    text = Path(client(out).download_artifacts(run_id, "error/traceback.txt", str(tmp_path / "dl"))).read_text()
    assert "hunter2-x" not in notes + text and MASK in notes
    (png,) = [a.path for a in client(out).list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert "val~digits~predictions+step+2+" in png  # the key and its step, which the run page's image view reads
    shown = np.asarray(Image.open(client(out).download_artifacts(run_id, png, str(tmp_path / "dl"))))
    assert shown.shape == (6, 4, 3) and (shown[..., 0] == 255).all()
    import mlflow

    with environment(MLFLOW_TRACKING_URI=None):  # set_tracking_uri exports it, and the config would read it
        mlflow.set_tracking_uri(store_uri(out))
        logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model")  # the model crossed to the child and was logged there
    x = torch.rand(5, 1, 2, 2)
    assert torch.allclose(logged(x), model(x), atol=1e-6)


def test_a_failed_queued_write_surfaces_at_the_next_call_that_waits(child, out):
    child.start("a-run", {}, {})
    child.log_metrics({"x": float("nan")}, step="not a step")  # queued; fails in the child
    with pytest.raises(Exception, match="."):  # MLflow's own error for the bad step, carried back from the child
        child.end("FINISHED")


def test_a_closed_child_tracker_refuses_calls(child):
    child.close()
    with pytest.raises(Exception, match="after the tracker was closed"):
        child.set_tags({"a": "b"})


@pytest.fixture
def tracker(out):
    tracker = MlflowTracker(store_uri(out), "nf_trainer")
    tracker.start("outcome", {}, {})
    return tracker


def test_an_error_fails_the_run_with_its_message_type_and_traceback(tracker, out, tmp_path):
    with pytest.raises(ValueError):
        with tracked_outcome(tracker, tmp_path):
            raise ValueError("the data is  wrong\nhere")
    (run,) = runs(out)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "the data is wrong here" and run.data.tags["error.type"] == "ValueError"
    text = Path(client(out).download_artifacts(run.info.run_id, "error/traceback.txt", str(tmp_path))).read_text()
    assert text.startswith("Traceback") and "the data is" in text


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), Interrupted(15)], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_kills_the_run(tracker, out, tmp_path, stop):
    with pytest.raises((KeyboardInterrupt, SystemExit)) as raised:
        with tracked_outcome(tracker, tmp_path):
            raise stop
    if isinstance(stop, Interrupted):
        assert raised.value.code == 143  # exits as the signal would
    (run,) = runs(out)
    assert run.info.status == "KILLED" and "error" not in run.data.tags


def test_a_clean_body_finishes_the_run(tracker, out, tmp_path):
    with tracked_outcome(tracker, tmp_path):
        tracker.log_metrics({"val/x/loss": 1.0}, step=1)
    (run,) = runs(out)
    assert run.info.status == "FINISHED" and run.data.metrics["val/x/loss"] == 1.0
