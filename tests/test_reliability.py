"""Interrupted, killed or crashed, a run loses nothing: real main.py processes, real signals, real SIGKILL.

Every run here uses the same small deterministic setup, so a resumed run can be compared bit for bit with
the uninterrupted reference run. What needs no process of its own (the reference run, the resumes, the
crash) runs in this one.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from nf_trainer.trainer.checkpoint import CheckpointWriter
from tests.conftest import MAIN, ROOT, client, metric_history, run_here, runs

SETUP = ("trainer.max_epochs=3", "trainer.deterministic=true", "seed=7", "loader.batch_size=32",
         "trainer.limit_train_batches=6", "trainer.limit_eval_batches=2", "trainer.early_stopping.enabled=false",
         "trainer.progress_bar=false", "trainer.log_every_n_steps=2")


def held_at(step: int, gate: Path) -> tuple[str, ...]:
    """SimpleCNN's training, with training step `step` held while the file `gate` exists (tests/bad_parts.py): a
    signal or a kill lands inside that step, however fast or slow the machine runs the others."""
    gate.touch()
    return "model._target_=tests.bad_parts.FaultyCNN", f"+model.hold_while={gate}", f"+model.hold_at={step}"


def reached(gate: Path) -> bool:
    return Path(f"{gate}.reached").exists()


def start_main(*overrides: str, out: Path) -> subprocess.Popen:
    """main.py in the background, its output in out/stdout.txt."""
    log = open(out / "stdout.txt", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(MAIN), *overrides, f"paths.output_root={out}"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for(proc: subprocess.Popen, condition, timeout: float = 300):
    """Poll until condition() returns something truthy; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"main.py ended (exit {proc.returncode}) before the awaited moment"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out")


def last_checkpoint(out: Path) -> dict | None:
    """The run's last.pt, once one exists (atomic writes: never half a file)."""
    found = sorted(out.glob("runs/*/*/last.pt"))
    return torch.load(found[-1], weights_only=True) if found else None


def logged(out: Path, text: str) -> bool:
    return text in (out / "stdout.txt").read_text()


def weights(out: Path) -> dict:
    (run,) = runs(out)
    return torch.load(Path(run.data.tags["output_dir"]) / "last.pt", weights_only=True)["model"]


def per_epoch(out: Path, key: str) -> dict[int, float]:
    """A metric per epoch (a value logged again after a kill, at the same step, counts once)."""
    (run,) = runs(out)
    return {m.step: m.value for m in metric_history(out, run.info.run_id, key)}


def assert_same_training(out: Path, reference: Path) -> None:
    mine, ref = weights(out), weights(reference)
    assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref), "weights differ"
    for key in ("train/loss", "train/accuracy", "val/digits/loss"):
        assert per_epoch(out, key) == per_epoch(reference, key), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must match."""
    out = tmp_path_factory.mktemp("reference")
    run_here(*SETUP, out=out)
    return out


@pytest.mark.slow
def test_sigkill_after_an_epoch_checkpoint_then_resume_is_bitwise_exact(reference, tmp_path):
    # the kill lands in the first step of the last epoch (held there), once epoch 1's checkpoint is on disk
    gate = tmp_path / "hold"
    proc = start_main(*SETUP, *held_at(13, gate), out=tmp_path)
    wait_for(proc, lambda: reached(gate) and (ckpt := last_checkpoint(tmp_path)) is not None and ckpt["epoch"] >= 1)
    tracker = [c for c in psutil.Process(proc.pid).children() if "nf_trainer.tracking.child" in " ".join(c.cmdline())]
    assert len(tracker) == 1  # the run's MLflow writer (nf_trainer/tracking/child.py)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    _, alive = psutil.wait_procs(tracker, timeout=15)
    assert not alive, "the tracker process leaves when the job is gone"
    (killed,) = runs(tmp_path)
    assert killed.info.status == "RUNNING"  # nothing can run on SIGKILL: the resume below ends it
    resumed_from = last_checkpoint(tmp_path)
    assert 1 <= resumed_from["epoch"] < 3

    run_here(*SETUP, f"resume={killed.data.tags['output_dir']}", out=tmp_path)
    (run,) = runs(tmp_path)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert_same_training(tmp_path, reference)


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_the_resume_is_bitwise_exact(reference, tmp_path):
    # mid-epoch checkpoints every 4 steps too: the run below passes through two before the signal, which lands
    # while step 10 (epoch 2's fourth) is held; the step goes on once the signal is seen
    gate = tmp_path / "hold"
    slow = ("trainer.checkpoint_every_n_steps=4", *held_at(10, gate))
    proc = start_main(*SETUP, *slow, out=tmp_path)
    wait_for(proc, lambda: reached(gate))
    proc.send_signal(signal.SIGTERM)
    wait_for(proc, lambda: logged(tmp_path, "SIGTERM received"))
    gate.unlink()
    assert proc.wait(120) == 128 + signal.SIGTERM  # 143
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"
    assert logged(tmp_path, "SIGTERM received: finishing the current step, then saving last.pt")
    stopped = last_checkpoint(tmp_path)
    assert stopped["step_in_epoch"] > 0 and stopped["partial_epoch"] is not None  # saved inside an epoch

    run_here(*SETUP, *slow, f"resume={run.data.tags['output_dir']}", out=tmp_path)
    (resumed,) = runs(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert_same_training(tmp_path, reference)  # weights, and the interrupted epoch's train metrics too


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_exits_130(tmp_path):
    gate = tmp_path / "hold"
    proc = start_main(*SETUP, *held_at(8, gate), out=tmp_path)  # Ctrl-C while epoch 2's second step is held
    wait_for(proc, lambda: reached(gate))
    proc.send_signal(signal.SIGINT)
    wait_for(proc, lambda: logged(tmp_path, "SIGINT received"))
    gate.unlink()  # the step ends, then the job saves and stops
    assert proc.wait(120) == 128 + signal.SIGINT  # 130
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"
    stopped = last_checkpoint(tmp_path)
    assert stopped["global_step"] > 6  # the state after the interrupted step, not just the epoch end before it
    assert logged(tmp_path, "continue with resume=")


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path):
    # the first training sample is held until the process ends: the second Ctrl-C cuts its step short
    gate = tmp_path / "hold"
    gate.touch()
    proc = start_main(*SETUP, "loader.batch_size=4", "dataset._target_=tests.bad_parts.slow_digits",
                      "+dataset.seconds=0", f"+dataset.hold_while={gate}", out=tmp_path)
    wait_for(proc, lambda: reached(gate))  # inside the first step, not before it
    proc.send_signal(signal.SIGINT)
    wait_for(proc, lambda: logged(tmp_path, "SIGINT received"))
    proc.send_signal(signal.SIGINT)
    code = proc.wait(60)
    assert code in (-signal.SIGINT, 128 + signal.SIGINT)  # Python ends an uncaught KeyboardInterrupt by SIGINT
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"
    assert last_checkpoint(tmp_path) is None  # it did not wait to finish the step and save
    output = (tmp_path / "stdout.txt").read_text()
    assert "Traceback" not in output and output.rstrip().endswith("interrupted (Ctrl-C)"), output[-2000:]
    assert "stopped by Ctrl-C, the run KILLED; no checkpoint of it was saved" in output


def test_a_nan_batch_is_skipped_then_a_crash_fails_the_run_with_its_error_and_keeps_the_last_epoch(tmp_path):
    # 6 steps per epoch: with trainer.nonfinite=skip the NaN loss of step 3 is dropped and training goes on,
    # then the forward pass of step 9 (epoch 2) raises
    with pytest.raises(RuntimeError, match="simulated crash"):  # not bad input: main.py shows its traceback, exit 1
        run_here(*SETUP, "trainer.nonfinite=skip", "model._target_=tests.bad_parts.FaultyCNN", "+model.nan_at=[3]",
                 "+model.crash_at=9", out=tmp_path)
    (run,) = runs(tmp_path)
    out_dir = Path(run.data.tags["output_dir"])
    assert "non-finite loss (nan) at epoch 1, step 3: batch skipped" in (out_dir / "main.log").read_text()

    assert run.info.status == "FAILED"
    assert run.data.tags["error.type"] == "RuntimeError"
    assert run.data.tags["error"] == "simulated crash in forward at training step 9"
    traceback_txt = client(tmp_path).download_artifacts(run.info.run_id, "error/traceback.txt", str(tmp_path))
    text = Path(traceback_txt).read_text()
    assert text.startswith("Traceback") and "bad_parts.py" in text and "simulated crash" in text

    kept = torch.load(out_dir / "last.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["global_step"] == 6  # the last completed epoch, intact
    assert all(torch.isfinite(t).all() for t in kept["model"].values())  # the NaN batch never reached the weights
    assert per_epoch(tmp_path, "train/loss")[1] == per_epoch(tmp_path, "train/loss")[1]  # epoch 1's loss is not NaN


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    """Disk full while overwriting last.pt (RLIMIT_FSIZE): the old file is intact, no temp file remains."""
    target = tmp_path / "last.pt"
    torch.save({"w": torch.ones(10)}, target)
    before = target.read_bytes()
    code = ("import torch\nfrom nf_trainer.trainer.checkpoint import save_checkpoint\n"
            f"save_checkpoint({{'w': torch.zeros(1_000_000)}}, {str(target)!r})\n")
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, preexec_fn=limit, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert f"could not write checkpoint '{target}' (File too large): is the disk full? the previous last.pt is intact" \
        in result.stderr
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_background_checkpoint_writer_saves_what_it_was_handed_and_reports_a_failed_write(tmp_path):
    weights = torch.zeros(3)
    writer = CheckpointWriter()
    writer.save({"model": {"w": weights}, "epoch": 1}, tmp_path / "last.pt", copies=(tmp_path / "best-f1.pt",))
    weights.add_(1)  # the next optimizer step, while the file is being written
    writer.close()
    for name in ("last.pt", "best-f1.pt"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert saved["epoch"] == 1 and saved["model"]["w"].tolist() == [0.0, 0.0, 0.0]
    assert os.stat(tmp_path / "last.pt").st_ino == os.stat(tmp_path / "best-f1.pt").st_ino  # linked, not rewritten

    writer = CheckpointWriter()
    writer.save({"w": weights}, tmp_path / "no-such-folder" / "last.pt")
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        writer.close()  # the error of the write reaches the loop
