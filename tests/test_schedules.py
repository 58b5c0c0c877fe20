"""Learning-rate schedules per optimizer step, with a linear warmup: the lr a real run logs against the
formula, a resume from inside the warmup bit for bit, and the lengths that cannot work."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import fails_in_one_line, metric_history, only_run, run_here, runs

LR, MIN_LR = 0.1, 1e-4


def warmup_cosine(k: int, warmup: int, total: int, start_factor: float = 0.01) -> float:
    """The lr after k optimizer steps: linear from start_factor * LR to LR over `warmup` steps, then a cosine to MIN_LR."""
    if k < warmup:
        return LR * (start_factor + (1 - start_factor) * k / warmup)
    return MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2


def step_lrs(out: Path) -> dict[int, float]:
    run = only_run(out)
    return {m.step: m.value for m in metric_history(out, run.info.run_id, "train/step_lr")}


def test_warmup_then_cosine_per_optimizer_step_follows_the_formula(out):
    # 8 batches an epoch, 2 per optimizer step: 4 steps an epoch, 8 in the run, the warmup half an epoch (2 steps)
    run_here("scheduler=cosine", "scheduler.interval=step", "scheduler.warmup_epochs=0.5", f"scheduler.min_lr={MIN_LR}",
             "optimizer=sgd", f"optimizer.lr={LR}", "trainer.max_epochs=2", "trainer.limit_train_batches=8",
             "trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1", "trainer.limit_eval_batches=1",
             "trainer.progress_bar=false", out=out)
    logged = step_lrs(out)
    assert sorted(logged) == list(range(1, 17))  # every batch logs: the lr the next batch trains with
    for batch in (1, 2, 3, 4, 6, 9, 12, 15, 16):
        assert logged[batch] == pytest.approx(warmup_cosine(batch // 2, warmup=2, total=8), rel=1e-6), batch
    assert logged[16] == pytest.approx(MIN_LR)  # the run ends exactly where the cosine does
    epoch_lrs = [m.value for m in metric_history(out, only_run(out).info.run_id, "lr")]
    assert epoch_lrs == pytest.approx([warmup_cosine(0, 2, 8), warmup_cosine(4, 2, 8)])  # at each epoch's start


def test_onecycle_runs_its_whole_cycle_per_optimizer_step(out):
    run_here("scheduler=onecycle", "optimizer=sgd", f"optimizer.lr={LR}", "trainer.max_epochs=2",
             "trainer.limit_train_batches=5", "trainer.log_every_n_steps=1", "trainer.limit_eval_batches=1",
             "trainer.progress_bar=false", out=out)
    logged = step_lrs(out)  # logged[k]: the lr of batch k + 1
    peak = max(logged, key=logged.get)
    assert logged[peak] == pytest.approx(LR) and peak == 2  # max_lr (the optimizer's lr) at 30% of the 10 steps
    assert logged[9] == pytest.approx(LR / 25 / 1e4)  # the last batch's: max_lr / div_factor / final_div_factor


RESUME_SETUP = ("trainer.max_epochs=2", "seed=5", "loader.batch_size=32",
                "trainer.limit_train_batches=6", "trainer.limit_eval_batches=2", "trainer.early_stopping.enabled=false",
                "trainer.progress_bar=false", "trainer.log_every_n_steps=1", "scheduler=cosine", "scheduler.interval=step",
                "scheduler.warmup_epochs=1.5", "model._target_=tests.bad_parts.FaultyCNN")


def test_a_resume_from_inside_the_warmup_is_bitwise_exact(tmp_path):
    reference, split = tmp_path / "reference", tmp_path / "split"
    reference.mkdir(), split.mkdir()
    run_here(*RESUME_SETUP, out=reference)
    with pytest.raises(SystemExit) as stopped:  # SIGTERM at step 4 of 9 warmup steps: last.pt inside the epoch
        run_here(*RESUME_SETUP, "+model.term_at=4", out=split)
    assert stopped.value.code == 143
    (killed,) = runs(split)
    saved = torch.load(Path(killed.data.tags["output_dir"]) / "last.pt", weights_only=True)
    assert saved["step_in_epoch"] == 4 and saved["scheduler"]["last_epoch"] == 4  # the schedule's position is saved
    assert saved["optimizer"]["param_groups"][0]["lr"] < 0.5 * 3e-3  # still warming up towards adamw's lr

    run_here(*RESUME_SETUP, f"resume={killed.data.tags['output_dir']}", out=split)
    ref_run, resumed = only_run(reference), only_run(split)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    load = lambda run: torch.load(Path(run.data.tags["output_dir"]) / "last.pt", weights_only=True)
    mine, theirs = load(resumed), load(ref_run)
    assert all(torch.equal(mine["model"][k], theirs["model"][k]) for k in theirs["model"]), "weights differ"
    assert step_lrs(split) == step_lrs(reference)
    assert mine["optimizer"]["param_groups"][0]["lr"] == theirs["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.parametrize("overrides, needle", [
    (("scheduler.warmup_epochs=3",), "scheduler.warmup_epochs=3 is not shorter than the run (trainer.max_epochs=2"),
    (("scheduler.warmup_epochs=0.5",), "scheduler.warmup_epochs=0.5 is a fraction of an epoch: set scheduler.interval=step"),
    (("scheduler=onecycle", "scheduler.warmup_epochs=1"), "scheduler=onecycle warms up by itself"),
    (("scheduler.interval=batch",), "scheduler.interval must be one of epoch, step, got 'batch'"),
])
def test_schedules_that_cannot_work_fail_in_one_line_before_the_run(out, overrides, needle):
    message = fails_in_one_line("trainer.max_epochs=2", *overrides, out=out)
    assert needle in message and "\n" not in message
    assert runs(out) == []  # nothing started
