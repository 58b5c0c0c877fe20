"""The training loop. Read it top to bottom: `fit` runs epochs of train -> evaluate -> schedule ->
log -> checkpoint -> early stop. Everything it uses is built from the config in `nf_trainer/run.py`.

Hot-loop rule: no host sync per step. Loss sums and metric states stay on the device; `.item()`
happens once per epoch, and on the steps that log (every `trainer.log_every_n_steps`).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nf_trainer.trainer.checkpoint import copy_checkpoint, save_checkpoint
from nf_trainer.trainer.distributed import rank0_decides, sum_across_ranks, unwrap
from nf_trainer.trainer.guard import NonFiniteGuard
from nf_trainer.trainer.signals import StopRequest
from nf_trainer.trainer.speed import Speed, grad_sync
from nf_trainer.trainer.watch import MetricWatcher

log = logging.getLogger("nf_trainer")


@dataclass
class Job:
    """Everything the loop needs, already built."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    loss_fn: torch.nn.Module
    train_loader: torch.utils.data.DataLoader
    train_generator: torch.Generator  # re-seeded each epoch: the shuffle order depends only on (seed, epoch)
    eval_loaders: dict[str, torch.utils.data.DataLoader]
    train_metrics: object  # torchmetrics.MetricCollection
    eval_metrics: dict[str, object]
    device: torch.device
    seed: int
    max_epochs: int
    limit_train_batches: int | None
    limit_eval_batches: int | None
    log_every_n_steps: int
    progress_bar: bool
    out_dir: Path
    best: dict[str, MetricWatcher]  # file stem -> watcher, one best-<stem>.pt each
    early_stop: MetricWatcher | None
    patience: int
    extra_state: dict = field(default_factory=dict)  # classes, config, ...: stored in every checkpoint
    train_sampler: object | None = None  # a DistributedSampler under torchrun (set_epoch each epoch)
    is_main: bool = True  # rank 0 (or the only process): the one that writes checkpoints
    checkpoint_every_n_steps: int = 0  # also write last.pt mid-epoch every N steps (0: at epoch ends only)
    stop: StopRequest = field(default_factory=StopRequest)  # set by Ctrl-C / SIGTERM
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)  # NaN/Inf loss: stop or skip
    batch_transform: object | None = None  # MixUp/CutMix on train batches: soft targets for the loss
    speed: Speed = field(default_factory=Speed)  # precision, accumulation, clipping, EMA (trainer/speed.py)
    epoch: int = 0  # epochs completed
    global_step: int = 0
    step_in_epoch: int = 0  # batches done in the current epoch
    resume_partial: dict | None = None  # a mid-epoch checkpoint's sums and random state, until replayed


def fit(job: Job, tracker) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for epoch in range(job.epoch, job.max_epochs):
        job.stop.raise_if_requested()  # Ctrl-C/SIGTERM came during the last evaluation: its last.pt is written
        started = time.perf_counter()
        metrics = {"lr": job.optimizer.param_groups[0]["lr"]}
        job.train_generator.manual_seed(job.seed + epoch)
        if job.train_sampler is not None:
            job.train_sampler.set_epoch(epoch)
        metrics |= _prefixed("train", train_one_epoch(job, tracker, epoch))
        eval_model = job.speed.ema.module if job.speed.ema is not None else job.model  # the EMA weights, when on
        per_set = {name: evaluate(eval_model, loader, job.loss_fn, job.eval_metrics[name], job.device,
                                  job.limit_eval_batches, job.speed) for name, loader in job.eval_loaders.items()}
        for name, values in per_set.items():
            metrics |= _prefixed(f"val/{name}", values)
        if len(per_set) > 1:  # each eval set weighs the same, whatever its size
            keys = next(iter(per_set.values()))
            metrics |= _prefixed("val/avg", {k: sum(v[k] for v in per_set.values()) / len(per_set) for k in keys})
        if job.scheduler is not None:
            job.scheduler.step()
        job.epoch, job.step_in_epoch = epoch + 1, 0

        tracker.log_metrics(metrics, step=job.epoch)
        log.info("epoch %d/%d  %s  (%.1fs)", job.epoch, job.max_epochs, _summary(metrics), time.perf_counter() - started)

        improved = [stem for stem, watcher in job.best.items() if watcher.update(metrics[watcher.key])]
        stop = False
        if job.early_stop is not None:
            job.early_stop.update(metrics[job.early_stop.key])
            stop = rank0_decides(job.early_stop.bad_epochs >= job.patience)
        if job.is_main:
            save_checkpoint(checkpoint_payload(job, metrics), job.out_dir / "last.pt")
            for stem in improved:  # the same bytes as last.pt: linked, not serialized again
                copy_checkpoint(job.out_dir / "last.pt", job.out_dir / f"best-{stem}.pt")
        if stop:
            log.info("early stopping: %s has not improved for %d epochs (best %.4f)",
                     job.early_stop.key, job.patience, job.early_stop.best)
            break
    return metrics


def train_one_epoch(job: Job, tracker, epoch: int) -> dict[str, float]:
    model, device, speed = job.model, job.device, job.speed
    model.train()
    job.train_metrics.reset()
    loss_sum, seen = torch.zeros((), device=device), 0
    total = _length(job.train_loader, job.limit_train_batches)
    batches = iter(_limited(job.train_loader, job.limit_train_batches))
    if job.step_in_epoch:  # resumed from a mid-epoch checkpoint
        loss_sum, seen = _fast_forward(job, batches)
    bar = tqdm(batches, total=total, initial=job.step_in_epoch, desc=f"epoch {epoch + 1}/{job.max_epochs}",
               leave=False, dynamic_ncols=True, disable=None if job.progress_bar else True)
    for images, targets in bar:
        images, targets = speed.to_device(images, targets, device)
        inputs, loss_targets = job.batch_transform(images, targets) if job.batch_transform else (images, targets)
        job.global_step += 1
        job.step_in_epoch += 1
        # an optimizer step every `accumulate` batches (and on the epoch's last one)
        update = job.step_in_epoch % speed.accumulate == 0 or job.step_in_epoch == total
        with grad_sync(model, update):  # DDP averages gradients only on the batch that steps
            with speed.autocast():
                logits = model(inputs)
                loss = job.loss_fn(logits, loss_targets)
            if job.guard.keep(loss, epoch, job.global_step):  # False only for a NaN/Inf loss with trainer.nonfinite=skip
                speed.backward(loss)
                loss_sum += loss.detach() * targets.shape[0]
                seen += targets.shape[0]
                job.train_metrics.update(logits.detach(), targets)
        if update:
            speed.step(job.optimizer, model)  # (unscale, clip,) step, zero_grad, EMA update

        if job.log_every_n_steps and job.global_step % job.log_every_n_steps == 0:
            job.guard.check(epoch)  # this step syncs anyway: stop early on a NaN/Inf loss
            step_loss = loss.item()  # the one sync, on logging steps only
            tracker.log_step_metrics({"train/step_loss": step_loss}, step=job.global_step)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        if job.stop.requested or (job.checkpoint_every_n_steps and job.global_step % job.checkpoint_every_n_steps == 0):
            job.guard.check(epoch)  # never save NaN weights over good ones
            if job.is_main:
                save_checkpoint(checkpoint_payload(job, {}, _partial_epoch(job, loss_sum, seen)), job.out_dir / "last.pt")
            job.stop.raise_if_requested()  # Ctrl-C/SIGTERM: the state after this step is saved, stop
    job.guard.check(epoch)  # before anything of this epoch is evaluated or saved
    return _results(loss_sum, seen, job.train_metrics)


@torch.inference_mode()
def evaluate(model, loader, loss_fn, metrics, device, limit_batches=None, speed: Speed = Speed()) -> dict[str, float]:
    model.eval()
    metrics.reset()
    loss_sum, seen = torch.zeros((), device=device), 0
    for images, targets in _limited(loader, limit_batches):
        images, targets = speed.to_device(images, targets, device)
        with speed.autocast():
            logits = model(images)
            loss_sum += loss_fn(logits, targets) * targets.shape[0]
        seen += targets.shape[0]
        metrics.update(logits, targets)
    return _results(loss_sum, seen, metrics)


def checkpoint_payload(job: Job, metrics: dict[str, float], partial_epoch: dict | None = None) -> dict:
    """Everything needed to continue exactly from here: the end of an epoch, or a step inside one."""
    return {
        "model": unwrap(job.model).state_dict(),
        "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict() if job.scheduler is not None else None,
        "epoch": job.epoch,
        "global_step": job.global_step,
        "step_in_epoch": job.step_in_epoch,
        "partial_epoch": partial_epoch,
        "best": {stem: w.state_dict() for stem, w in job.best.items()},
        "early_stop": job.early_stop.state_dict() if job.early_stop is not None else None,
        "speed": job.speed.state_dict(),  # the EMA weights and the fp16 loss scale, when on
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
        "metrics": dict(metrics),
        **job.extra_state,
    }


def restore(job: Job, ckpt: dict) -> None:
    """Load a checkpoint's state into an already built job (model weights are loaded by the caller)."""
    job.optimizer.load_state_dict(ckpt["optimizer"])
    if job.scheduler is not None and ckpt.get("scheduler") is not None:
        job.scheduler.load_state_dict(ckpt["scheduler"])
    job.epoch, job.global_step, job.step_in_epoch = ckpt["epoch"], ckpt["global_step"], ckpt.get("step_in_epoch", 0)
    if job.step_in_epoch:  # replayed by train_one_epoch, after it skipped the batches already done
        job.resume_partial = {**ckpt["partial_epoch"], "rng": ckpt["rng"]}
    job.speed.load_state_dict(ckpt.get("speed") or {})
    for stem, state in ckpt.get("best", {}).items():
        if stem in job.best:
            job.best[stem].load_state_dict(state)
    if job.early_stop is not None and ckpt.get("early_stop") is not None:
        job.early_stop.load_state_dict(ckpt["early_stop"])
    _set_rng(ckpt["rng"])


def _partial_epoch(job: Job, loss_sum, seen: int) -> dict:
    """The running sums of the current epoch, for a mid-epoch checkpoint."""
    job.train_metrics.persistent(True)  # torchmetrics leaves metric states out of state_dict() by default
    return {"loss_sum": loss_sum, "seen": seen, "train_metrics": job.train_metrics.state_dict()}


def _fast_forward(job: Job, batches) -> tuple[torch.Tensor, int]:
    """Resume inside an epoch: skip the batches it already trained on (the order depends only on seed and
    epoch), then put back the running sums and the random state of that moment."""
    for _ in range(job.step_in_epoch):
        next(batches, None)  # loads the batch (and draws its augmentation): the random state is set after
    partial, job.resume_partial = job.resume_partial, None
    job.train_metrics.persistent(True)
    job.train_metrics.load_state_dict(partial["train_metrics"])
    job.train_metrics.to(job.device)  # the loaded states are on the CPU (map_location)
    _set_rng(partial["rng"])
    return partial["loss_sum"].to(job.device), partial["seen"]


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def _limited(loader, limit):
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def _length(loader, limit) -> int:
    return len(loader) if limit is None else min(limit, len(loader))


def _results(loss_sum, seen, metrics) -> dict[str, float]:
    seen = torch.tensor(float(seen), device=loss_sum.device)
    sum_across_ranks(loss_sum, seen)  # torchmetrics syncs its own states in compute()
    values = {"loss": (loss_sum / seen.clamp(min=1)).item()}
    values |= {name: value.item() for name, value in metrics.compute().items()}
    return values


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def _summary(metrics: dict[str, float]) -> str:
    shown = [k for k in metrics if k == "lr" or k.endswith(("/loss", "/accuracy", "/f1"))]
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in shown)
