"""Everything the engine does for classification, done for task=detection on a small, deterministic shapes setup:
resume after a SIGKILL inside an epoch (bitwise), early stopping and best checkpoints on map, rerun, an Optuna
study maximizing map, torchrun with two CPU ranks (mAP gathered over both), and the training options (warmup per
step, gradient accumulation and clipping, EMA, bf16 autocast)."""
from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from tests.conftest import metric_history, only_run, rerun_argv, run_here, run_main, runs
from tests.test_distributed import torchrun
from tests.test_reliability import last_checkpoint, start_main, wait_for

SMALL = ("task=detection", "dataset.train_size=48", "dataset.val_size=16", "loader.batch_size=8", "seed=3",
         "trainer.deterministic=true", "trainer.pictures=0", "trainer.progress_bar=false", "mlflow.log_model=false",
         "trainer.log_every_n_steps=2")
EPOCHS = 3  # 6 steps an epoch


def history(out: Path, key: str) -> list[tuple[int, float]]:
    run = only_run(out)
    return sorted({m.step: m.value for m in metric_history(out, run.info.run_id, key)}.items())


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(only_run(out).data.tags["output_dir"]) / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted small detection run."""
    out = tmp_path_factory.mktemp("reference")
    run_here(*SMALL, f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping.enabled=false", out=out)
    return out


@pytest.mark.slow
def test_a_detector_killed_inside_an_epoch_resumes_bitwise(reference, tmp_path):
    setup = (*SMALL, f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping.enabled=false",
             "trainer.checkpoint_every_n_steps=2")
    proc = start_main(*setup, out=tmp_path)
    wait_for(proc, lambda: (c := last_checkpoint(tmp_path)) is not None and c["global_step"] >= 8 and c["step_in_epoch"] > 0)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    psutil.wait_procs(children, timeout=15)
    assert only_run(tmp_path).info.status == "RUNNING"
    assert last_checkpoint(tmp_path)["partial_epoch"] is not None  # killed inside an epoch
    run_here(*setup, f"resume={only_run(tmp_path).data.tags['output_dir']}", out=tmp_path)
    assert only_run(tmp_path).info.status == "FINISHED"
    mine, ref = weights(tmp_path), weights(reference)
    assert all(torch.equal(mine[k], ref[k]) for k in ref), "weights differ"
    for key in ("train/loss", "train/loss/classifier", "val/shapes/map", "val/shapes/map_50"):
        assert history(tmp_path, key) == history(reference, key), key


@pytest.mark.slow
def test_rerun_of_a_detection_run_gives_the_same_map(reference):
    run = only_run(reference)
    run_here(*rerun_argv(f"rerun={run.info.run_id}", out=reference), out=reference)
    (again,) = [r for r in runs(reference) if r.info.run_id != run.info.run_id]
    for key in ("train/loss", "val/shapes/map", "val/shapes/ap/circle"):
        assert [(m.step, m.value) for m in metric_history(reference, again.info.run_id, key)] == \
               [(m.step, m.value) for m in metric_history(reference, run.info.run_id, key)], key


def test_early_stopping_and_the_best_checkpoint_follow_map(out):
    # a gain of 1 (all of mAP's range) counts as improving: after epoch 1, no epoch improves
    run_here(*SMALL, "trainer.max_epochs=6", "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=1",
             "trainer.limit_train_batches=1", out=out)
    run = only_run(out)
    maps = [m.value for m in metric_history(out, run.info.run_id, "val/shapes/map")]
    assert len(maps) == 2  # stopped after one epoch without gain
    best = torch.load(Path(run.data.tags["output_dir"]) / "best-map.pt", weights_only=True)
    assert best["metrics"]["val/shapes/map"] == max(maps) == run.data.metrics["objective"]
    assert best["epoch"] == 1 + maps.index(max(maps))


def test_warmup_accumulation_clipping_ema_and_bf16_autocast_train_a_detector(out):
    run_here(*SMALL, "trainer.max_epochs=2", "scheduler=cosine", "scheduler.interval=step", "scheduler.warmup_epochs=1",
             "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0", "trainer.ema_decay=0.9",
             "trainer.precision=bf16", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED"
    lrs = [m.value for m in metric_history(out, run.info.run_id, "train/step_lr")]
    assert lrs[0] < max(lrs)  # the warmup rises first
    losses = [m.value for m in metric_history(out, run.info.run_id, "train/loss")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert run.data.params["trainer.precision"] == "bf16"
    assert [m.step for m in metric_history(out, run.info.run_id, "val/shapes/map")] == [1, 2]


@pytest.mark.slow
def test_an_optuna_study_maximizes_map(out):
    run_main("hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, "trainer.max_epochs=1", out=out)
    children = [r for r in runs(out) if "optuna.trial" in r.data.tags]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:  # each trial's objective is its best val map
        assert child.data.metrics["objective"] == max(m.value for m in metric_history(out, child.info.run_id,
                                                                                      "val/shapes/map"))
    (results,) = out.glob("multirun/*/*/optimization_results.yaml")
    study = yaml.safe_load(results.read_text())
    assert study["best_value"] == pytest.approx(max(c.data.metrics["objective"] for c in children))
    import optuna

    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{out}/optuna.db")
    assert summary.direction == optuna.study.StudyDirection.MAXIMIZE


@pytest.mark.slow
def test_torchrun_two_ranks_train_one_detection_run_whose_map_covers_both_ranks(tmp_path):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    torchrun(*SMALL, "trainer.max_epochs=1", "loader.batch_size=4", out=ddp)
    (run,) = runs(ddp)  # rank 1 logs nothing
    assert run.info.status == "FINISHED" and run.data.params["trainer.world_size"] == "2"
    logged = run.data.metrics["val/shapes/map"]
    # the same checkpoint measured by one process on the whole val set: the 2-rank value gathered both halves
    run_here("mode=eval", f"ckpt={run.data.tags['output_dir']}/last.pt", out=ddp)
    (evaluated,) = [r for r in runs(ddp) if r.data.tags.get("mode") == "eval"]
    assert evaluated.data.metrics["val/shapes/map"] == pytest.approx(logged, abs=1e-6)
