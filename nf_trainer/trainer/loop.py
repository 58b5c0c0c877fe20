"""The training loop. Read it top to bottom: `fit` runs epochs of train -> evaluate -> pictures -> schedule
-> log -> checkpoint -> early stop. Everything it uses is built from the config by nf_trainer/jobs/train.py;
it logs through the tracker it is handed and knows nothing of MLflow. What differs between tasks (how a
batch reaches the device, the loss and its parts, the metrics, the pictures) is the task's
(`parts.task`, nf_trainer/tasks/base.py): the loop never looks inside a batch.

Hot-loop rule: no host sync per step. Loss sums and metric states stay on the device; `.item()`
happens once per epoch, and on the steps that log (every `trainer.log_every_n_steps`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tqdm import tqdm

from nf_trainer.core.metric_keys import metric_key
from nf_trainer.trainer.checkpoint import CheckpointWriter
from nf_trainer.trainer.distributed import rank0_decides
from nf_trainer.trainer.evaluation import evaluate_sets, limited
from nf_trainer.trainer.speed import grad_sync
from nf_trainer.trainer.state import LoopState, Parts, Settings, checkpoint_payload, load_partial_epoch, partial_epoch
from nf_trainer.trainer.step import LossSums

log = logging.getLogger("nf_trainer")


def fit(parts: Parts, settings: Settings, state: LoopState, tracker,
        on_epoch: Callable[[int, dict[str, float]], bool] | None = None) -> dict[str, float]:
    """Train from `state` (a fresh LoopState, or a restored one) to `settings.max_epochs` or an early stop;
    returns the last epoch's metrics.

    `on_epoch(epoch, metrics)`, after each epoch's checkpoint: True stops the training there, a complete run
    (a sweep's pruner, handed down by the job; rank 0 decides)."""
    writer = CheckpointWriter(settings.background_checkpoints)  # written while the next epoch trains
    try:
        return train_epochs(parts, settings, state, tracker, writer, on_epoch)
    finally:
        writer.close()  # the last checkpoint is on disk before fit returns or raises


def train_epochs(parts: Parts, settings: Settings, state: LoopState, tracker, writer: CheckpointWriter,
                 on_epoch: Callable[[int, dict[str, float]], bool] | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for epoch in range(state.epoch, settings.max_epochs):
        state.stop.raise_if_requested()  # Ctrl-C/SIGTERM came during the last evaluation: its last.pt is written
        started = time.perf_counter()
        metrics = {"lr": parts.optimizer.param_groups[0]["lr"]}
        # one order per (seed, epoch): with seed + epoch, seed=1 shuffled as seed=0 one epoch later
        parts.train_generator.manual_seed(settings.seed * 1_000_003 + epoch)
        if parts.train_sampler is not None:
            parts.train_sampler.set_epoch(epoch)
        train = train_one_epoch(parts, settings, state, tracker, writer, epoch)
        metrics |= {metric_key(k): v for k, v in train.items()}
        metrics |= evaluate_sets(parts.task, parts.eval_model, parts.eval_loaders, parts.eval_metrics,
                                 settings.device, settings.limit_eval_batches, parts.speed)
        if parts.pictures is not None and settings.is_main:  # the fixed val images, drawn with this epoch's predictions
            parts.pictures.log(parts.eval_model, tracker, step=epoch + 1)
        if parts.scheduler is not None:
            parts.scheduler.epoch_ended()  # a schedule per epoch (trainer/schedule.py)
        state.epoch, state.step_in_epoch = epoch + 1, 0

        tracker.log_metrics(metrics, step=state.epoch)
        log.info("epoch %d/%d  %s  (%.1fs)", state.epoch, settings.max_epochs, summary(metrics, parts.task.shown),
                 time.perf_counter() - started)

        improved = [stem for stem, watcher in parts.best.items() if watcher.update(metrics[watcher.key])]
        stop = False
        if parts.early_stop is not None:
            parts.early_stop.update(metrics[parts.early_stop.key])
            stop = rank0_decides(parts.early_stop.bad_epochs >= parts.early_stop.patience)
        if settings.is_main:
            writer.save(checkpoint_payload(parts, settings, state, metrics), settings.out_dir / "last.pt",
                        # the same bytes as last.pt: linked, not serialized again
                        copies=tuple(settings.out_dir / f"best-{stem}.pt" for stem in improved))
        if on_epoch is not None and rank0_decides(settings.is_main and on_epoch(state.epoch, metrics)):
            break
        if stop:
            log.info("early stopping: %s has not improved for %d epochs (best %.4f)",
                     parts.early_stop.key, parts.early_stop.patience, parts.early_stop.best)
            break
    return metrics


def train_one_epoch(parts: Parts, settings: Settings, state: LoopState, tracker, writer: CheckpointWriter,
                    epoch: int) -> dict[str, float]:
    model, task, device, speed = parts.model, parts.task, settings.device, parts.speed
    model.train()
    parts.train_metrics.reset()
    sums = LossSums(device)
    total = len(parts.train_loader) if settings.limit_train_batches is None else min(
        settings.limit_train_batches, len(parts.train_loader))
    batches = iter(limited(parts.train_loader, settings.limit_train_batches))
    if state.step_in_epoch:  # resumed from a mid-epoch checkpoint: skip the batches already trained on
        for _ in range(state.step_in_epoch):
            next(batches, None)  # loads the batch (and draws its augmentation): the random state is set after
        sums = load_partial_epoch(parts, settings, state)
    bar = tqdm(batches, total=total, initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{settings.max_epochs}",
               leave=False, dynamic_ncols=True, disable=None if settings.progress_bar else True)
    for batch in bar:
        batch = task.to_device(batch, device, speed.channels_last)
        state.global_step += 1
        state.step_in_epoch += 1
        # an optimizer step every `accumulate` batches (and on the epoch's last one)
        update = state.step_in_epoch % speed.accumulate == 0 or state.step_in_epoch == total
        with grad_sync(model, update):  # DDP averages gradients only on the batch that steps
            with speed.autocast():
                step = task.train_step(model, batch)  # the total loss, its parts, the batch's size and outputs
            if parts.guard.keep(step.loss, epoch, state.global_step):  # False only for a NaN/Inf loss with nonfinite=skip
                speed.backward(step.loss)
                sums.add(step)
                parts.train_metrics.update(step.outputs, step.targets)
        if update:
            speed.step(parts.optimizer, model)  # (unscale, clip,) step, zero_grad, EMA update
            if parts.scheduler is not None:
                parts.scheduler.optimizer_stepped()  # a schedule per optimizer step

        if settings.log_every_n_steps and state.global_step % settings.log_every_n_steps == 0:
            parts.guard.check(epoch)  # this step syncs anyway: stop early on a NaN/Inf loss
            step_loss = step.loss.item()  # the one sync, on logging steps only
            lr = parts.optimizer.param_groups[0]["lr"]  # the lr the next step trains with
            tracker.log_step_metrics({metric_key("step_loss"): step_loss, metric_key("step_lr"): lr}, step=state.global_step)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        every = settings.checkpoint_every_n_steps
        if state.stop.requested or (every and state.global_step % every == 0):
            parts.guard.check(epoch)  # never save NaN weights over good ones
            if settings.is_main:
                payload = checkpoint_payload(parts, settings, state, {}, partial_epoch(parts, sums))
                writer.save(payload, settings.out_dir / "last.pt")
                writer.wait()  # inside an epoch on disk at once: what a preempted job (SIGTERM) counts on
            state.stop.raise_if_requested()  # Ctrl-C/SIGTERM: the state after this step is saved, stop
    parts.guard.check(epoch)  # before anything of this epoch is evaluated or saved
    return sums.means() | parts.train_metrics.compute()


def summary(metrics: dict[str, float], shown: tuple[str, ...]) -> str:
    """lr, and the task's `shown` metrics of every set ('loss', 'accuracy', ...; 'map' for detection)."""
    keys = [k for k in metrics if k == "lr" or k.rsplit("/", 1)[-1] in shown]
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys)
