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
    speed: Speed = field(default_factory=Speed)  # precision, accumulation, clipping, EMA (trainer/speed.py)
    epoch: int = 0  # epochs completed
    global_step: int = 0


def fit(job: Job, tracker) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for epoch in range(job.epoch, job.max_epochs):
        started = time.perf_counter()
        metrics = {"lr": job.optimizer.param_groups[0]["lr"]}
        job.train_generator.manual_seed(job.seed + epoch)
        if job.train_sampler is not None:
            job.train_sampler.set_epoch(epoch)
        metrics |= _prefixed("train", train_one_epoch(job, tracker, epoch))
        eval_model = job.speed.ema.module if job.speed.ema is not None else job.model  # the EMA weights, when on
        for name, loader in job.eval_loaders.items():
            metrics |= _prefixed(f"val/{name}", evaluate(eval_model, loader, job.loss_fn, job.eval_metrics[name],
                                                          job.device, job.limit_eval_batches, job.speed))
        if job.scheduler is not None:
            job.scheduler.step()
        job.epoch = epoch + 1

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
    batches, total = _limited(job.train_loader, job.limit_train_batches), _length(job.train_loader, job.limit_train_batches)
    bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{job.max_epochs}",
               leave=False, dynamic_ncols=True, disable=None if job.progress_bar else True)
    for i, (images, targets) in enumerate(bar):
        images, targets = speed.to_device(images, targets, device)
        update = (i + 1) % speed.accumulate == 0 or i + 1 == total  # an optimizer step every `accumulate` batches
        with grad_sync(model, update):  # DDP averages gradients only on the batch that steps
            with speed.autocast():
                logits = model(images)
                loss = job.loss_fn(logits, targets)
            speed.backward(loss)
        if update:
            speed.step(job.optimizer, model)  # (unscale, clip,) step, zero_grad, EMA update

        job.global_step += 1
        loss_sum += loss.detach() * targets.shape[0]
        seen += targets.shape[0]
        job.train_metrics.update(logits.detach(), targets)
        if job.log_every_n_steps and job.global_step % job.log_every_n_steps == 0:
            step_loss = loss.item()  # the one sync, on logging steps only
            tracker.log_step_metrics({"train/step_loss": step_loss}, step=job.global_step)
            bar.set_postfix(loss=f"{step_loss:.4f}")
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


def checkpoint_payload(job: Job, metrics: dict[str, float]) -> dict:
    """Everything needed to continue exactly where this epoch ended."""
    return {
        "model": unwrap(job.model).state_dict(),
        "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict() if job.scheduler is not None else None,
        "epoch": job.epoch,
        "global_step": job.global_step,
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
    job.epoch, job.global_step = ckpt["epoch"], ckpt["global_step"]
    job.speed.load_state_dict(ckpt.get("speed") or {})
    for stem, state in ckpt.get("best", {}).items():
        if stem in job.best:
            job.best[stem].load_state_dict(state)
    if job.early_stop is not None and ckpt.get("early_stop") is not None:
        job.early_stop.load_state_dict(ckpt["early_stop"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    random.setstate(ckpt["rng"]["python"])


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
