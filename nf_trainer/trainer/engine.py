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

from nf_trainer.trainer.checkpoint import save_checkpoint
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
    batch_transform: object | None = None  # MixUp/CutMix on train batches: soft targets for the loss
    epoch: int = 0  # epochs completed
    global_step: int = 0


def fit(job: Job, tracker) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for epoch in range(job.epoch, job.max_epochs):
        started = time.perf_counter()
        metrics = {"lr": job.optimizer.param_groups[0]["lr"]}
        job.train_generator.manual_seed(job.seed + epoch)
        metrics |= _prefixed("train", train_one_epoch(job, tracker, epoch))
        per_set = {name: evaluate(job.model, loader, job.loss_fn, job.eval_metrics[name], job.device,
                                  job.limit_eval_batches) for name, loader in job.eval_loaders.items()}
        for name, values in per_set.items():
            metrics |= _prefixed(f"val/{name}", values)
        if len(per_set) > 1:  # each eval set weighs the same, whatever its size
            keys = next(iter(per_set.values()))
            metrics |= _prefixed("val/avg", {k: sum(v[k] for v in per_set.values()) / len(per_set) for k in keys})
        if job.scheduler is not None:
            job.scheduler.step()
        job.epoch = epoch + 1

        tracker.log_metrics(metrics, step=job.epoch)
        log.info("epoch %d/%d  %s  (%.1fs)", job.epoch, job.max_epochs, _summary(metrics), time.perf_counter() - started)

        improved = [stem for stem, watcher in job.best.items() if watcher.update(metrics[watcher.key])]
        stop = False
        if job.early_stop is not None:
            job.early_stop.update(metrics[job.early_stop.key])
            stop = job.early_stop.bad_epochs >= job.patience
        payload = checkpoint_payload(job, metrics)
        for stem in improved:
            save_checkpoint(payload, job.out_dir / f"best-{stem}.pt")
        save_checkpoint(payload, job.out_dir / "last.pt")
        if stop:
            log.info("early stopping: %s has not improved for %d epochs (best %.4f)",
                     job.early_stop.key, job.patience, job.early_stop.best)
            break
    return metrics


def train_one_epoch(job: Job, tracker, epoch: int) -> dict[str, float]:
    model, device = job.model, job.device
    model.train()
    job.train_metrics.reset()
    loss_sum, seen = torch.zeros((), device=device), 0
    batches = _limited(job.train_loader, job.limit_train_batches)
    bar = tqdm(batches, total=_length(job.train_loader, job.limit_train_batches), desc=f"epoch {epoch + 1}/{job.max_epochs}",
               leave=False, dynamic_ncols=True, disable=None if job.progress_bar else True)
    for images, targets in bar:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        inputs, loss_targets = job.batch_transform(images, targets) if job.batch_transform else (images, targets)
        logits = model(inputs)
        loss = job.loss_fn(logits, loss_targets)
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        job.optimizer.step()

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
def evaluate(model, loader, loss_fn, metrics, device, limit_batches=None) -> dict[str, float]:
    model.eval()
    metrics.reset()
    loss_sum, seen = torch.zeros((), device=device), 0
    for images, targets in _limited(loader, limit_batches):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += loss_fn(logits, targets) * targets.shape[0]
        seen += targets.shape[0]
        metrics.update(logits, targets)
    return _results(loss_sum, seen, metrics)


def checkpoint_payload(job: Job, metrics: dict[str, float]) -> dict:
    """Everything needed to continue exactly where this epoch ended."""
    return {
        "model": job.model.state_dict(),
        "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict() if job.scheduler is not None else None,
        "epoch": job.epoch,
        "global_step": job.global_step,
        "best": {stem: w.state_dict() for stem, w in job.best.items()},
        "early_stop": job.early_stop.state_dict() if job.early_stop is not None else None,
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
    values = {"loss": (loss_sum / max(seen, 1)).item()}
    values |= {name: value.item() for name, value in metrics.compute().items()}
    return values


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def _summary(metrics: dict[str, float]) -> str:
    shown = [k for k in metrics if k == "lr" or k.endswith(("/loss", "/accuracy", "/f1"))]
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in shown)
