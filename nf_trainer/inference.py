"""Using a trained checkpoint: `mode=eval`, `mode=predict` and `mode=export` start here.

A checkpoint carries the training run's resolved config, its class names, the data's facts
(num_classes, in_channels, image_size) and its MLflow run id. The model, dataset, transforms and
loss come from that config, so `python main.py mode=eval ckpt=PATH` needs nothing else; a group or
key given on the command line (`dataset=...`, `transforms.eval=...`) replaces the checkpoint's.
Everything else (metrics, loader, trainer.device, mlflow, ...) comes from the command line as usual.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf, open_dict

from nf_trainer.errors import NfTrainerError

FROM_CHECKPOINT = ("model", "dataset", "transforms", "loss")


def run_mode(cfg: DictConfig):
    """Dispatch `mode=eval|predict|export`; each module has one entry point taking the composed config."""
    if cfg.mode == "eval":
        from nf_trainer.evaluate import evaluate_checkpoint
        return evaluate_checkpoint(cfg)
    if cfg.mode == "predict":
        from nf_trainer.predict import predict_folder
        return predict_folder(cfg)
    from nf_trainer.export import export_checkpoint
    return export_checkpoint(cfg)


def load_for_inference(cfg: DictConfig) -> tuple[dict, Path, DictConfig]:
    """The checkpoint, its path, and the job's config with the checkpoint's model/dataset/transforms/loss."""
    from hydra.core.hydra_config import HydraConfig

    from nf_trainer.trainer.checkpoint import load_checkpoint, resolve_checkpoint

    if not Path(cfg.ckpt).expanduser().exists():
        raise NfTrainerError(f"no checkpoint at '{cfg.ckpt}': give ckpt= a .pt file or a run's output dir")
    path = resolve_checkpoint(cfg.ckpt)
    ckpt = load_checkpoint(path)
    missing = [key for key in ("config", "classes", "data") if key not in ckpt]
    if missing:
        raise NfTrainerError(f"checkpoint '{path}' lacks {', '.join(missing)}: it was not written by this version of nf_trainer's training")
    given = {re.split(r"[=./@]", override.lstrip("+~"))[0] for override in HydraConfig.get().overrides.task}
    trained = OmegaConf.create(ckpt["config"])
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in FROM_CHECKPOINT:
            if key not in given and key in trained:
                cfg[key] = trained[key]
    return ckpt, path, cfg


def data_facts(ckpt: dict) -> SimpleNamespace:
    """What the model was fitted to (num_classes, in_channels, image_size), as `model_inputs` reads it."""
    return SimpleNamespace(**ckpt["data"])


def build_model(cfg: DictConfig, facts, ckpt: dict, path: Path, device):
    """The checkpoint's model with its weights, in eval mode on `device`."""
    from nf_trainer.instantiate import create_instance
    from nf_trainer.run import load_weights, model_inputs

    no_download = {"pretrained": False} if "pretrained" in cfg.model else {}  # the checkpoint has the weights
    model = create_instance(cfg.model, **model_inputs(cfg.model, facts), **no_download)
    load_weights(model, ckpt, path)
    return model.to(device).eval()


def check_classes(ckpt: dict, classes: list[str], what: str) -> None:
    if list(ckpt["classes"]) != list(classes):
        raise NfTrainerError(f"the checkpoint was trained on classes {ckpt['classes']} but {what} has {classes}")


def predict_logits(model, loader, device, limit_batches: int | None = None):
    """(logits, second items) of every batch, concatenated on the CPU; the second item is the target."""
    import torch

    model.eval()
    logits, seconds = [], []
    with torch.inference_mode():
        for images, second in itertools.islice(loader, limit_batches):
            logits.append(model(images.to(device, non_blocking=True)).float())
            seconds.append(second)
    return torch.cat(logits).cpu(), torch.cat(seconds)
