"""`mode=train`: the recipe of a training job, as named steps, each built from the composed config.

    join processes -> read the checkpoint to resume -> read the data, build the task for it, its loaders
    -> the model -> the optimization, metrics, watchers and pictures -> start the MLflow run -> fit
    -> finish (best model, reports, exports)
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nf_trainer.core.device import describe_device, resolve_device, seed_everything
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.metric_keys import known_keys, resolve_key, resolve_mode
from nf_trainer.dataset.loaders import Data, build_loaders, read_splits
from nf_trainer.jobs.best_model import finish_training
from nf_trainer.jobs.run_record import default_run_name, output_dir, overrides, record_config, run_params, run_tags
from nf_trainer.jobs.summary import run_summary
from nf_trainer.model.build import build_model, data_facts, load_weights
from nf_trainer.model.finetune import build_optimizer
from nf_trainer.tasks import Task, build_task
from nf_trainer.tracking.dataset_inputs import record_bad_files, record_data
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.null import NullTracker
from nf_trainer.tracking.outcome import tracked_outcome
from nf_trainer.tracking.secrets import redact
from nf_trainer.trainer import distributed, speed
from nf_trainer.trainer.checkpoint import load_checkpoint, resolve_checkpoint
from nf_trainer.trainer.guard import NonFiniteGuard
from nf_trainer.trainer.loop import fit
from nf_trainer.trainer.pictures import Pictures, first_images
from nf_trainer.trainer.schedule import build_schedule, optimizer_steps_per_epoch
from nf_trainer.trainer.signals import StopRequest
from nf_trainer.trainer.state import LoopState, Parts, Settings, restore
from nf_trainer.trainer.watch import best_watchers, early_stop_watcher

log = logging.getLogger("nf_trainer")


def train(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str],
          report: Callable[[int, float], bool] | None = None) -> float:
    """Train and log one run; returns the objective (the best `objective.metric` over the epochs).

    `report(epoch, objective of that epoch)`, after every epoch: True ends the training there (an Optuna trial's
    pruner, nf_trainer/sweep/study.py); the run still finishes as any other, FINISHED with its checkpoints."""
    ddp, device, out_dir = join_processes(cfg)
    resumed = read_resume(cfg)
    task, data = build_task_and_data(cfg, ddp, device)
    model, step_settings = build_training_model(cfg, task, data, resumed, ddp, device)
    parts = build_parts(cfg, task, data, model, step_settings, ddp, device, out_dir)
    objective_key = resolve_objective(cfg, parts)
    log.debug("device %s, %d train samples, eval sets %s; objective %s", device, len(data.splits.train),
              {name: len(split) for name, split in data.splits.eval.items()}, objective_key)
    state = restore_state(parts, resumed, cfg.resume)  # before the run reopens: a misfit leaves it untouched
    carry_best_checkpoints(resumed, out_dir, list(parts.best), ddp.is_main)

    tracker = tracker if ddp.is_main else NullTracker()  # only rank 0 talks to MLflow
    run_id, run_name = start_training_run(cfg, tracker, data, model, ddp, device, step_settings, out_dir, resumed,
                                           extra_tags)
    settings = loop_settings(cfg, data, ddp, device, out_dir, run_id)
    # From here the run is RUNNING: it ends FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED whatever happens.
    with tracked_outcome(tracker, out_dir), StopRequest() as state.stop:
        log.info("MLflow run %s (%s) in %s; outputs in %s", run_id, run_name, cfg.mlflow.tracking_uri, out_dir)
        record_config(cfg, tracker, out_dir)
        tracker.log_text("".join(f"{name}\n" for name in data.splits.classes), "classes.txt")  # the vocabulary, in order
        if ddp.is_main:
            record_data(tracker, data.splits, out_dir)  # dataset inputs, data/bad_files count and list
        bad_before = len(data.splits.bad_files)
        fit(parts, settings, state, tracker, (lambda epoch, metrics: report(epoch, metrics[objective_key])) if report else None)
        if ddp.is_main and len(data.splits.bad_files) > bad_before:  # files that failed to decode in a batch
            record_bad_files(tracker, data.splits, out_dir, step=state.epoch)
        best = tracker.log_objective(objective_key, resolve_mode(objective_key, cfg.objective.mode))
        checkpoint = finish_training(parts, settings, cfg, tracker)
    log.info("%s", run_summary("FINISHED", objective_key, best, checkpoint, run_id, run_name, cfg.mlflow.tracking_uri,
                               overrides()))
    return best.value


@dataclass(frozen=True)
class Resumed:
    ckpt: dict
    path: Path

    @property
    def run_id(self) -> str | None:
        return self.ckpt.get("run_id")


def join_processes(cfg: DictConfig) -> tuple[distributed.Dist, torch.device, Path]:
    """Join torchrun's process group (a no-op in one process), seed, pick the device; rank 0's output dir
    holds the run (one set of checkpoints)."""
    ddp, ddp_device = distributed.setup(cfg.trainer.device)
    out_dir = Path(distributed.broadcast(str(output_dir())))
    if not ddp.is_main:
        log.setLevel(logging.WARNING)  # one voice: rank 0 logs epochs and progress
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    return ddp, ddp_device or resolve_device(cfg.trainer.device), out_dir


def read_resume(cfg: DictConfig) -> Resumed | None:
    return Resumed(load_checkpoint(cfg.resume), resolve_checkpoint(cfg.resume)) if cfg.resume else None


def build_task_and_data(cfg: DictConfig, ddp: distributed.Dist, device: torch.device) -> tuple[Task, Data]:
    """The dataset's splits, the task built for them (its loss and MixUp/CutMix) and checking them, and the
    loaders, whose batches the task collates."""
    splits = read_splits(cfg, device)
    task = build_task(cfg, splits.classes, data_facts(splits), device, train=True)
    task.check_data(splits)
    return task, build_loaders(cfg, splits, device, task.collate, ddp.world_size, ddp.rank)


def build_training_model(cfg: DictConfig, task: Task, data: Data, resumed: Resumed | None, ddp: distributed.Dist,
                         device: torch.device) -> tuple[torch.nn.Module, speed.Speed]:
    """The model fitted to the data (as the task counts its classes), on the device, with the speed settings
    applied (and wrapped in DDP under torchrun); the step's speed settings."""
    model = build_model(cfg.model, task.model_facts(data_facts(data.splits)))
    if resumed is not None:
        load_weights(model, resumed.ckpt, resumed.path)
    if ddp.enabled and cfg.trainer.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    step_settings = speed.build(cfg.trainer, model, device)  # in place: channels_last, compile; EMA copy
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, step_settings


def build_parts(cfg: DictConfig, task: Task, data: Data, model: torch.nn.Module, step_settings: speed.Speed,
                ddp: distributed.Dist, device: torch.device, out_dir: Path) -> Parts:
    """The optimization (optimizer, schedule), the task's metrics, the watchers and the pictures, around the model
    and data."""
    optimizer = build_optimizer(cfg.optimizer, distributed.unwrap(model),  # optimizer.head_lr: the head's own group
                                **speed.optimizer_kwargs(cfg.optimizer, device, cfg.trainer.fused_optimizer))
    steps = optimizer_steps_per_epoch(len(data.loaders["train"]), cfg.trainer.limit_train_batches,
                                      cfg.trainer.accumulate_grad_batches)
    scheduler = build_schedule(cfg.scheduler, optimizer, steps, cfg.trainer.max_epochs)
    eval_sets = list(data.splits.eval)
    known = known_metric_keys(cfg, task, eval_sets)
    return Parts(
        model=model, task=task, optimizer=optimizer, scheduler=scheduler,
        train_loader=data.loaders["train"], train_generator=data.generator, eval_loaders=data.eval_loaders,
        train_metrics=task.build_metrics(cfg.metrics, device, train=True),
        eval_metrics={name: task.build_metrics(cfg.metrics, device) for name in eval_sets},
        best=best_watchers(cfg.trainer.save_best, eval_sets, known),
        early_stop=early_stop_watcher(cfg.trainer.early_stopping, eval_sets, known),
        speed=step_settings, guard=NonFiniteGuard(cfg.trainer.nonfinite, out_dir / "last.pt"),
        # a DistributedSampler under torchrun; a shard stream splits itself and takes its epoch from train_generator
        train_sampler=data.loaders["train"].sampler if ddp.enabled and hasattr(data.loaders["train"].sampler, "set_epoch")
        else None,
        pictures=build_pictures(cfg.trainer.pictures, task, data, device) if ddp.is_main else None,
    )


def known_metric_keys(cfg: DictConfig, task: Task, eval_sets: list[str]) -> set[str]:
    """Every epoch metric the run will log: what `objective.metric`, `trainer.save_best` and early stopping may name."""
    return known_keys(eval_sets, task.metric_names(cfg.metrics), task.metric_names(cfg.metrics, train=True))


def build_pictures(count: int, task: Task, data: Data, device: torch.device) -> Pictures | None:
    """The first `count` images of the first eval set, drawn at each evaluation (`trainer.pictures`; 0: none)."""
    if not count:
        return None
    name, loader = next(iter(data.eval_loaders.items()))
    batch = first_images(task, loader, count, device)
    return Pictures(task, batch, f"val/{name}/predictions") if batch is not None else None


def resolve_objective(cfg: DictConfig, parts: Parts) -> str:
    """The metric key of `objective.metric`: checked before the run starts, as the watchers' are."""
    eval_sets = list(parts.eval_loaders)
    return resolve_key(cfg.objective.metric, eval_sets, known_metric_keys(cfg, parts.task, eval_sets))


def carry_best_checkpoints(resumed: Resumed | None, out_dir: Path, stems: list[str], is_main: bool) -> None:
    """The resumed run's best-<metric>.pt files come into this run's output dir: the watchers restored from the
    checkpoint say what they hold, and the best model at the end (the task's thresholds, the logged model) may be one
    of them, not last.pt."""
    if resumed is None or not is_main:
        return
    for stem in stems:
        source, target = resumed.path.parent / f"best-{stem}.pt", out_dir / f"best-{stem}.pt"
        if source.is_file() and not target.exists():
            shutil.copy2(source, target)


def restore_state(parts: Parts, resumed: Resumed | None, where: str | None) -> LoopState:
    """A fresh loop, or the resumed checkpoint's optimizer, schedule, watchers, random state and position."""
    if resumed is None:
        return LoopState()
    saved = resumed.ckpt["optimizer"]["param_groups"][0]
    missing = sorted(set(parts.optimizer.defaults) - set(saved))  # torch would take it, then fail at the first step
    if missing:
        raise NfTrainerError(f"checkpoint '{where}' holds the state of another optimizer than "
                             f"{type(parts.optimizer).__name__} (it has no {', '.join(missing)}): resume with the "
                             "optimizer= the run was trained with")
    try:
        state = restore(parts, resumed.ckpt)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise NfTrainerError(f"checkpoint '{where}' does not fit this optimizer or scheduler "
                             f"(was it trained with other ones?): {' '.join(str(exc).split())[:300]}") from exc
    log.info("resuming %s at epoch %d, step %d", where, state.epoch, state.global_step)
    return state


def start_training_run(cfg: DictConfig, tracker: Tracker, data: Data, model: torch.nn.Module, ddp: distributed.Dist,
                       device: torch.device, step_settings: speed.Speed, out_dir: Path, resumed: Resumed | None,
                       extra_tags: dict[str, str]) -> tuple[str | None, str]:
    """Create the MLflow run, or reopen the resumed one: (its id, which every rank gets from rank 0, its name)."""
    splits = data.splits
    params = run_params(cfg, **{
        "data.num_classes": splits.num_classes, "data.train_size": len(splits.train),
        "data.in_channels": splits.in_channels, "model.num_params": sum(p.numel() for p in model.parameters()),
        **{f"data.{name}.size": len(dataset) for name, dataset in splits.eval.items()},
        "trainer.world_size": ddp.world_size})
    tags = run_tags(cfg, out_dir, extra_tags, device=describe_device(device),
                    precision=step_settings.precision)  # what trainer.device/precision=auto chose
    run_name = cfg.mlflow.run_name or default_run_name(cfg)
    run_id = distributed.broadcast(tracker.start(run_name, params, tags, resume_run_id=resumed.run_id if resumed else None))
    return run_id, run_name


def loop_settings(cfg: DictConfig, data: Data, ddp: distributed.Dist, device: torch.device, out_dir: Path,
                  run_id: str | None) -> Settings:
    tc, splits = cfg.trainer, data.splits
    config = OmegaConf.to_yaml(redact(OmegaConf.to_container(cfg, resolve=True)))  # secrets never reach a checkpoint
    return Settings(
        device=device, seed=cfg.seed, max_epochs=tc.max_epochs, out_dir=out_dir,
        limit_train_batches=tc.limit_train_batches, limit_eval_batches=tc.limit_eval_batches,
        log_every_n_steps=tc.log_every_n_steps, checkpoint_every_n_steps=tc.checkpoint_every_n_steps,
        progress_bar=tc.progress_bar and ddp.is_main, is_main=ddp.is_main,
        background_checkpoints=cfg.loader.num_workers == 0,
        checkpoint_extras={"classes": splits.classes, "config": config, "data": data_facts(splits),
                           "run_id": run_id},
    )
