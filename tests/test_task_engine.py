"""Everything the engine does for classification, done for every other task (detection, segmentation, multi-label)
on a small, deterministic shapes setup each, with the same tests: resume after a SIGKILL inside an epoch (bitwise,
multi-label's tuned thresholds included), rerun, early stopping and the best checkpoint on the task's monitor (map,
miou, map), a sweep (one parent, a child per job), an Optuna study optimizing the monitor in its direction, torchrun
with two CPU ranks (the monitor gathered over both; what the task fits after training, fitted on the whole val set),
and the training options (warmup per step, gradient accumulation and clipping, EMA, bf16 autocast). What differs
between the tasks is one row of CASES."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from tests.conftest import compose_cfg, metric_history, only_run, rerun_argv, run_here, run_main, runs
from tests.test_distributed import torchrun
from tests.test_reliability import last_checkpoint, reached, start_main, wait_for

COMMON = ("dataset.train_size=48", "dataset.val_size=16", "loader.batch_size=8", "seed=3", "trainer.deterministic=true",
          "trainer.pictures=0", "trainer.progress_bar=false", "mlflow.log_model=false", "trainer.log_every_n_steps=2")
EPOCHS = 3  # 6 steps an epoch


@dataclass(frozen=True)
class Case:
    task: str
    small: tuple[str, ...]  # the task's small, deterministic setup (COMMON included)
    monitor: str  # the task's monitor: what the objective, early stopping and the best checkpoint follow
    direction: str  # the monitor's: Optuna's study direction
    train: tuple[str, ...]  # train/<name> and val/<eval_set>/<name> metrics equal, step by step, after a resume and
    val: tuple[str, ...]  # in a rerun
    state: tuple[str, ...] = ()  # what the task fits after training, in the best checkpoint's task_state
    eval_set: str = "shapes"  # dataset=shapes' eval set

    def key(self, name: str) -> str:
        return f"val/{self.eval_set}/{name}"

    @property
    def compared(self) -> list[str]:
        return [f"train/{name}" for name in self.train] + [self.key(name) for name in self.val]

    @property
    def best(self):  # the best of several values of the monitor
        return max if self.direction == "maximize" else min


CASES = [
    Case("detection", ("task=detection", *COMMON), "map", "maximize",
         train=("loss", "loss/classifier"), val=("map", "map_50", "ap/circle")),
    Case("segmentation", ("task=segmentation", "dataset.image_size=32", *COMMON), "miou", "maximize",
         train=("loss",), val=("loss", "miou", "pixel_accuracy", "iou/circle")),
    Case("multilabel", ("task=multilabel", "dataset.image_size=32", "transforms.image_size=32", *COMMON), "map", "maximize",
         train=("loss", "map"), val=("loss", "map", "f1", "ap/circle", "f1_tuned"), state=("thresholds",)),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.task)
def case(request) -> Case:
    return request.param


def history(out: Path, key: str) -> list[tuple[int, float]]:
    run = only_run(out)
    return sorted({m.step: m.value for m in metric_history(out, run.info.run_id, key)}.items())


def checkpoint(out: Path, name: str) -> dict:
    return torch.load(Path(only_run(out).data.tags["output_dir"]) / name, weights_only=True)


def held_at(case: Case, step: int, gate: Path) -> tuple[str, ...]:
    """The task's model, with training step `step` held while the file `gate` exists (tests/bad_parts.py): the kill
    lands inside that step however fast the task's steps are."""
    return ("model._target_=tests.bad_parts.held", f"+model.inner={compose_cfg(*case.small).model._target_}",
            f"+model.hold_while={gate}", f"+model.hold_at={step}")


def fitted_in_one_process(ckpt: dict) -> tuple[dict[str, float], dict]:
    """What the checkpoint's task fits after training on its model and the whole val set, in this process: (the
    metrics it logs, its state)."""
    from omegaconf import OmegaConf

    from nf_trainer.dataset.loaders import build_loaders, read_splits
    from nf_trainer.model.build import build_model
    from nf_trainer.tasks import build_task

    cfg, cpu, facts = OmegaConf.create(ckpt["config"]), torch.device("cpu"), dict(ckpt["data"])
    splits = read_splits(cfg, cpu)
    task = build_task(cfg, splits.classes, facts, cpu)
    model = build_model(cfg.model, task.model_facts(facts))
    model.load_state_dict(ckpt["model"])
    values = task.after_training(model, build_loaders(cfg, splits, cpu, task.collate).eval_loaders, cpu, None)
    return values, task.state()


@pytest.fixture(scope="module")
def reference(case, tmp_path_factory) -> Path:
    """The uninterrupted small run of the task."""
    out = tmp_path_factory.mktemp(f"reference-{case.task}")
    run_here(*case.small, f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping.enabled=false", out=out)
    return out


@pytest.mark.slow
def test_a_run_killed_inside_an_epoch_resumes_bitwise(case, reference, tmp_path):
    setup = (*case.small, f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping.enabled=false",
             "trainer.checkpoint_every_n_steps=2")
    gate = tmp_path / "hold"
    gate.touch()
    held = held_at(case, 9, gate)  # step 9: the 3rd of epoch 2, after step 8's checkpoint
    proc = start_main(*setup, *held, out=tmp_path)
    wait_for(proc, lambda: reached(gate) and (c := last_checkpoint(tmp_path)) is not None and c["global_step"] == 8)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    psutil.wait_procs(children, timeout=15)
    gate.unlink()  # the resumed job holds nowhere
    assert only_run(tmp_path).info.status == "RUNNING"
    assert last_checkpoint(tmp_path)["partial_epoch"] is not None  # killed inside an epoch
    run_here(*setup, *held, f"resume={only_run(tmp_path).data.tags['output_dir']}", out=tmp_path)
    assert only_run(tmp_path).info.status == "FINISHED"
    mine, ref = checkpoint(tmp_path, "last.pt")["model"], checkpoint(reference, "last.pt")["model"]
    assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref), "weights differ"
    for key in case.compared:
        assert history(tmp_path, key) == history(reference, key), key
    # what the task fitted after training on the best model (multi-label's per-label thresholds): the same bits
    best = f"best-{case.monitor}.pt"
    # the resumed run's output dir holds the best checkpoint of the epochs before the kill too (it may be one of them)
    assert checkpoint(tmp_path, best)["epoch"] == checkpoint(reference, best)["epoch"]
    state, ref_state = checkpoint(tmp_path, best).get("task_state", {}), checkpoint(reference, best).get("task_state", {})
    assert sorted(ref_state) == sorted(case.state) and state == ref_state


@pytest.mark.slow
def test_a_rerun_gives_the_same_metrics(case, reference):
    run = only_run(reference)
    run_here(*rerun_argv(f"rerun={run.info.run_id}", out=reference), out=reference)
    (again,) = [r for r in runs(reference) if r.info.run_id != run.info.run_id]
    for key in case.compared:
        assert [(m.step, m.value) for m in metric_history(reference, again.info.run_id, key)] == \
               [(m.step, m.value) for m in metric_history(reference, run.info.run_id, key)], key


def test_early_stopping_and_the_best_checkpoint_follow_the_monitor(case, out):
    # a gain of 1 (all of map's and miou's range) counts as improving: after epoch 1, no epoch improves
    run_here(*case.small, "trainer.max_epochs=6", "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=1",
             "trainer.limit_train_batches=1", out=out)
    run = only_run(out)
    values = [m.value for m in metric_history(out, run.info.run_id, case.key(case.monitor))]
    assert len(values) == 2  # stopped after one epoch without gain
    best = torch.load(Path(run.data.tags["output_dir"]) / f"best-{case.monitor}.pt", weights_only=True)
    assert best["metrics"][case.key(case.monitor)] == case.best(values) == run.data.metrics["objective"]
    assert best["epoch"] == 1 + values.index(case.best(values))


def test_warmup_accumulation_clipping_ema_and_bf16_autocast_train(case, out):
    run_here(*case.small, "trainer.max_epochs=2", "scheduler=cosine", "scheduler.interval=step", "scheduler.warmup_epochs=1",
             "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0", "trainer.ema_decay=0.9",
             "trainer.precision=bf16", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED"
    lrs = [m.value for m in metric_history(out, run.info.run_id, "train/step_lr")]
    assert lrs[0] < max(lrs)  # the warmup rises first
    losses = [m.value for m in metric_history(out, run.info.run_id, "train/loss")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert run.data.params["trainer.precision"] == "bf16"
    assert [m.step for m in metric_history(out, run.info.run_id, case.key(case.monitor))] == [1, 2]


@pytest.mark.slow
def test_a_sweep_is_one_parent_with_a_child_per_job_each_with_its_monitor(case, out):
    run_main("-m", *case.small, "trainer.max_epochs=1", "optimizer.lr=1e-3,2e-3", out=out)
    parents = [r for r in runs(out) if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs(out) if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    (parent,) = parents
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id and c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.001", "0.002"]
    for child in children:  # one epoch: the objective is the monitor of that epoch
        (value,) = [m.value for m in metric_history(out, child.info.run_id, case.key(case.monitor))]
        assert child.data.metrics["objective"] == value
    assert (parent.data.tags["objective.metric"], parent.data.tags["objective.mode"]) == (case.monitor, case.direction[:3])
    assert parent.data.metrics["objective"] == case.best(c.data.metrics["objective"] for c in children)


@pytest.mark.slow
def test_an_optuna_study_optimizes_the_monitor_in_its_direction(case, out):
    import optuna

    run_main("hparams_search=optuna", "hydra.sweeper.n_trials=2", *case.small, "trainer.max_epochs=1", out=out)
    children = [r for r in runs(out) if "optuna.trial" in r.data.tags]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:  # each trial's objective is its best val monitor
        assert child.data.metrics["objective"] == case.best(
            m.value for m in metric_history(out, child.info.run_id, case.key(case.monitor)))
    (results,) = out.glob("multirun/*/*/optimization_results.yaml")
    study = yaml.safe_load(results.read_text())
    assert study["best_value"] == pytest.approx(case.best(c.data.metrics["objective"] for c in children))
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{out}/optuna.db")
    assert summary.direction == optuna.study.StudyDirection[case.direction.upper()]


@pytest.mark.slow
def test_torchrun_two_ranks_train_one_run_whose_monitor_covers_both_ranks(case, tmp_path):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    torchrun(*case.small, "trainer.max_epochs=1", "loader.batch_size=4", out=ddp)
    (run,) = runs(ddp)  # rank 1 logs nothing
    assert run.info.status == "FINISHED" and run.data.params["trainer.world_size"] == "2"
    logged = run.data.metrics[case.key(case.monitor)]
    # what the task fits after training on the best model (multi-label's thresholds, the F1 at them) is fitted on the
    # whole val set, as one process fits it
    best = torch.load(Path(run.data.tags["output_dir"]) / f"best-{case.monitor}.pt", weights_only=True)
    values, state = fitted_in_one_process(best)
    assert sorted(state) == sorted(case.state) and best.get("task_state", {}) == state
    assert {key: run.data.metrics[key] for key in values} == pytest.approx(values, abs=1e-6)
    # the same checkpoint measured by one process on the whole val set: the 2-rank value gathered both halves
    run_here("mode=eval", f"ckpt={run.data.tags['output_dir']}/last.pt", out=ddp)
    (evaluated,) = [r for r in runs(ddp) if r.data.tags.get("mode") == "eval"]
    assert evaluated.data.metrics[case.key(case.monitor)] == pytest.approx(logged, abs=1e-6)
