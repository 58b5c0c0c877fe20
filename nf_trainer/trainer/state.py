"""What the loop works with, in three parts: the objects built from the config (`Parts`), the plain
settings it runs by (`Settings`), and its own progress (`LoopState`); and the checkpoint that holds
all three, so a run continues exactly where it stopped."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nf_trainer.trainer.distributed import unwrap
from nf_trainer.trainer.guard import NonFiniteGuard
from nf_trainer.trainer.metrics import TaskMetrics
from nf_trainer.trainer.pictures import Pictures
from nf_trainer.trainer.signals import StopRequest
from nf_trainer.trainer.speed import Speed
from nf_trainer.trainer.step import LossSums
from nf_trainer.trainer.watch import MetricWatcher


@dataclass
class Parts:
    """The objects the loop trains with, built from the config (nf_trainer/jobs/train.py)."""
    model: torch.nn.Module
    task: object  # what differs between tasks: batches, steps, metrics, pictures (nf_trainer/tasks/base.py:Task)
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    train_loader: torch.utils.data.DataLoader
    train_generator: torch.Generator  # re-seeded each epoch: the shuffle order depends only on (seed, epoch)
    eval_loaders: dict[str, torch.utils.data.DataLoader]
    train_metrics: TaskMetrics
    eval_metrics: dict[str, TaskMetrics]  # eval set -> its metrics (torchmetrics, computed as the task says)
    best: dict[str, MetricWatcher]  # file stem -> watcher, one best-<stem>.pt each
    early_stop: MetricWatcher | None = None
    speed: Speed = field(default_factory=Speed)  # precision, accumulation, clipping, EMA (trainer/speed.py)
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)  # NaN/Inf loss: stop or skip
    train_sampler: object | None = None  # a DistributedSampler under torchrun (set_epoch each epoch)
    pictures: Pictures | None = None  # fixed val images drawn with the predictions at each evaluation

    @property
    def eval_model(self) -> torch.nn.Module:
        """What evaluation (and so early stopping and the best checkpoints) uses: the EMA weights when on."""
        return self.speed.ema.module if self.speed.ema is not None else self.model


@dataclass(frozen=True)
class Settings:
    """How the loop runs: plain values from the config."""
    device: torch.device
    seed: int
    max_epochs: int
    out_dir: Path
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 0  # also write last.pt mid-epoch every N steps (0: at epoch ends only)
    progress_bar: bool = False
    is_main: bool = True  # rank 0 (or the only process): the one that writes checkpoints
    background_checkpoints: bool = True  # written while the next epoch trains (not with forked loader workers)
    checkpoint_extras: dict = field(default_factory=dict)  # classes, config, data facts, run id: in every checkpoint


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    step_in_epoch: int = 0  # batches done in the current epoch
    resume_partial: dict | None = None  # a mid-epoch checkpoint's sums and random state, until replayed
    stop: StopRequest = field(default_factory=StopRequest)  # set by Ctrl-C / SIGTERM


def checkpoint_payload(parts: Parts, settings: Settings, state: LoopState, metrics: dict[str, float],
                       partial_epoch: dict | None = None) -> dict:
    """Everything needed to continue exactly from here: the end of an epoch, or a step inside one."""
    return {
        "model": unwrap(parts.model).state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "step_in_epoch": state.step_in_epoch,
        "partial_epoch": partial_epoch,
        "best": {stem: w.state_dict() for stem, w in parts.best.items()},
        "early_stop": parts.early_stop.state_dict() if parts.early_stop is not None else None,
        "speed": parts.speed.state_dict(),  # the EMA weights and the fp16 loss scale, when on
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
        "metrics": dict(metrics),
        **settings.checkpoint_extras,
    }


def restore(parts: Parts, ckpt: dict) -> LoopState:
    """A checkpoint's state loaded into already built parts (model weights are loaded by the caller),
    and the loop's progress at that moment."""
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.scheduler is not None and ckpt.get("scheduler") is not None:
        parts.scheduler.load_state_dict(ckpt["scheduler"])
    state = LoopState(ckpt["epoch"], ckpt["global_step"], ckpt.get("step_in_epoch", 0))
    if state.step_in_epoch:  # replayed by train_one_epoch, after it skipped the batches already done
        state.resume_partial = {**ckpt["partial_epoch"], "rng": ckpt["rng"]}
    parts.speed.load_state_dict(ckpt.get("speed") or {})
    for stem, watcher_state in ckpt.get("best", {}).items():
        if stem in parts.best:
            parts.best[stem].load_state_dict(watcher_state)
    if parts.early_stop is not None and ckpt.get("early_stop") is not None:
        parts.early_stop.load_state_dict(ckpt["early_stop"])
    set_rng(ckpt["rng"])
    return state


def partial_epoch(parts: Parts, sums: LossSums) -> dict:
    """The running sums of the current epoch, for a mid-epoch checkpoint."""
    parts.train_metrics.persistent(True)  # torchmetrics leaves metric states out of state_dict() by default
    return {**sums.state_dict(), "train_metrics": parts.train_metrics.state_dict()}


def load_partial_epoch(parts: Parts, settings: Settings, state: LoopState) -> LossSums:
    """Put back the running sums and the random state of a mid-epoch checkpoint's moment."""
    partial, state.resume_partial = state.resume_partial, None
    parts.train_metrics.persistent(True)
    parts.train_metrics.load_state_dict(partial["train_metrics"])
    parts.train_metrics.to(settings.device)  # the loaded states are on the CPU (map_location)
    set_rng(partial["rng"])
    return LossSums.from_state(partial, settings.device)


def set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
