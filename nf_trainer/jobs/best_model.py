"""After `fit`: the best checkpoint is loaded back, the task fits what it decides with besides the weights (saved
into that checkpoint), each eval set gets its reports, and the model is logged
to MLflow once and exported to the formats in `export`; the checkpoints and the job log become artifacts."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nf_trainer.jobs.export import export_model
from nf_trainer.jobs.reports import report_eval_sets
from nf_trainer.jobs.run_record import record_log
from nf_trainer.model.build import for_export
from nf_trainer.tasks.base import move
from nf_trainer.tracking.interface import Tracker
from nf_trainer.trainer.checkpoint import load_checkpoint, save_checkpoint
from nf_trainer.trainer.distributed import barrier, unwrap
from nf_trainer.trainer.state import Parts, Settings
from nf_trainer.transforms import node_list

log = logging.getLogger("nf_trainer")


def finish_training(parts: Parts, settings: Settings, cfg: DictConfig, tracker: Tracker) -> Path:
    """Returns the best checkpoint's path."""
    barrier()  # under torchrun, rank 0 has written the best checkpoint: every rank loads it
    path = best_checkpoint(settings.out_dir, list(parts.best))
    ckpt = load_checkpoint(path)
    unwrap(parts.model).load_state_dict(ckpt["model"])
    log.info("best model: %s (epoch %d)", path.name, ckpt["epoch"])
    state = fit_task_state(parts, settings, tracker, ckpt, path)
    report_eval_sets(parts.task, parts.model, parts.eval_loaders, settings.device, settings.limit_eval_batches,
                     settings.out_dir, tracker)
    if settings.is_main and (cfg.mlflow.log_model or cfg.export):
        example = example_batch(parts)
        model = for_export(unwrap(parts.model))
        if cfg.mlflow.log_model:
            uri = tracker.log_model(model, example, parts.task.classes, cfg.mlflow.registered_model_name,
                                    node_list(cfg.transforms.get("eval")), cfg.mlflow.registered_model_alias,
                                    task={**OmegaConf.to_container(cfg.task, resolve=True), **state})
            log.info("logged the model: %s", uri)
        if cfg.export:
            folder = export_model(parts.task, model, example, list(cfg.export), settings.out_dir / "export")
            tracker.log_artifact(folder, "export")
    log_checkpoints(tracker, settings.out_dir, cfg.mlflow.log_checkpoints)
    record_log(tracker, settings.out_dir)
    return path


def fit_task_state(parts: Parts, settings: Settings, tracker: Tracker, ckpt: dict, path: Path) -> dict:
    """The task's fit after training on the best model (multi-label's per-label thresholds): its metrics logged at the
    best epoch, its state written into the best checkpoint (`task_state`, which eval, predict and export rebuild the
    task with) and returned for the logged model's task node."""
    values = parts.task.after_training(parts.model, parts.eval_loaders, settings.device, settings.limit_eval_batches)
    if values:
        tracker.log_metrics(values, step=ckpt["epoch"])
    state = parts.task.state()
    if state and settings.is_main:
        save_checkpoint({**ckpt, "task_state": state}, path)
    return state


def best_checkpoint(out_dir: Path, stems: list[str]) -> Path:
    """best-<first save_best metric>.pt, else last.pt (with `trainer.save_best=[]`)."""
    for stem in stems:
        if (out_dir / f"best-{stem}.pt").is_file():
            return out_dir / f"best-{stem}.pt"
    return out_dir / "last.pt"


def example_batch(parts: Parts):
    """2 real inputs after the eval transforms, on the CPU: an example batch of 1 would freeze the batch size."""
    loader = next(iter(parts.eval_loaders.values()), parts.train_loader)
    inputs = next(iter(loader))[0]
    two = [*inputs[:2], *inputs[:2]][:2]  # a batch of 1, twice
    return torch.stack(two).cpu() if isinstance(inputs, torch.Tensor) else move(two, torch.device("cpu"))


def log_checkpoints(tracker: Tracker, out_dir: Path, which: str) -> None:
    """`mlflow.log_checkpoints`: best (the best-*.pt files), all (every .pt) or none."""
    if which == "none":
        return
    for path in sorted(out_dir.glob("best-*.pt" if which == "best" else "*.pt")):
        tracker.log_artifact(path, "checkpoints")
