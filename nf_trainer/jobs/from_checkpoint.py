"""What `mode=eval`, `mode=predict` and `mode=export` share: a trained checkpoint, its config, its model,
and the MLflow run that records the job.

A checkpoint carries the training run's resolved config, its class names, the data's facts
(num_classes, in_channels, image_size) and its MLflow run id. The task, model, dataset, transforms,
loss and metrics come from that config, so `python main.py mode=eval ckpt=PATH` needs nothing else; a
group or key given on the command line (`dataset=...`, `transforms.eval=...`) replaces the checkpoint's.
Everything else (loader, trainer.device, mlflow, ...) comes from the command line as usual.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.jobs.run_record import overrides, run_params, run_tags
from nf_trainer.model.build import build_model, load_weights
from nf_trainer.tasks import Task, build_task
from nf_trainer.tracking.interface import Tracker
from nf_trainer.trainer.checkpoint import load_checkpoint, resolve_checkpoint

log = logging.getLogger("nf_trainer")

FROM_CHECKPOINT = ("task", "model", "dataset", "transforms", "loss", "metrics")


@dataclass(frozen=True)
class Source:
    """A trained checkpoint, and the job's config with the checkpoint's model/dataset/transforms/loss."""
    ckpt: dict
    path: Path
    cfg: DictConfig

    @property
    def facts(self) -> dict:
        """What the model was fitted to: num_classes, in_channels, image_size."""
        return dict(self.ckpt["data"])

    @property
    def classes(self) -> list[str]:
        return list(self.ckpt["classes"])


def open_checkpoint(cfg: DictConfig) -> Source:
    if not Path(cfg.ckpt).expanduser().exists():
        raise NfTrainerError(f"no checkpoint at '{cfg.ckpt}': give ckpt= a .pt file or a run's output dir")
    path = resolve_checkpoint(cfg.ckpt)
    ckpt = load_checkpoint(path)
    missing = [key for key in ("config", "classes", "data") if key not in ckpt]
    if missing:
        raise NfTrainerError(f"checkpoint '{path}' lacks {', '.join(missing)}: it was not written by this version "
                             "of nf_trainer's training")
    given = {re.split(r"[=./@]", override.lstrip("+~"))[0] for override in overrides()}
    trained = OmegaConf.create(ckpt["config"])
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in FROM_CHECKPOINT:
            if key not in given and key in trained:
                cfg[key] = trained[key]
    return Source(ckpt, path, cfg)


def checkpoint_task(source: Source, device: torch.device | None = None, loss: bool = False) -> Task:
    """The checkpoint's task for its classes, with what it fitted after training (`task_state`: multi-label's
    thresholds); with the `loss` group's loss (`loss`: for mode=eval)."""
    return build_task(source.cfg, source.classes, source.facts if loss else None, device, state=source.ckpt.get("task_state"))


def checkpoint_model(source: Source, task: Task, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model with its weights, in eval mode on `device`."""
    no_download = {key: value for key, value in (("pretrained", False), ("pretrained_path", None))
                   if key in source.cfg.model}  # the checkpoint has the weights
    model = build_model(source.cfg.model, task.model_facts(source.facts), **no_download)
    load_weights(model, source.ckpt, source.path)
    return model.to(device).eval()


def check_classes(source: Source, classes: list[str], what: str) -> None:
    if source.classes != list(classes):
        raise NfTrainerError(f"the checkpoint was trained on classes {source.classes} but {what} has {classes}")


def start_checkpoint_run(source: Source, tracker: Tracker, out_dir: Path, extra_tags: dict[str, str]) -> str | None:
    """The job's MLflow run: `<mode>-<checkpoint>-<training run name>`, tagged with the training run it came from."""
    cfg, trained_in = source.cfg, source.ckpt.get("run_id")
    source_name = tracker.run_name_of(trained_in) or (trained_in or "unknown")[:8]
    tags = run_tags(cfg, out_dir, extra_tags, source_run_id=trained_in, source_checkpoint=source.path.resolve(),
                    source_epoch=source.ckpt["epoch"])
    run_name = cfg.mlflow.run_name or f"{cfg.mode}-{source.path.stem}-{source_name}"
    run_id = tracker.start(run_name, run_params(cfg), tags)
    log.info("%s of %s (epoch %d of run %s) in MLflow run %s (%s)", cfg.mode, source.path, source.ckpt["epoch"],
             trained_in, run_id, run_name)
    return run_id
