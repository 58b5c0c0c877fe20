"""`python main.py mode=predict ckpt=PATH predict.input=DIR`: a CSV of predictions for every image under DIR.

Columns: `path`, `predicted` (class name), `confidence` (its softmax probability), then
`top1_class, top1_confidence, ..., topK_*` (`predict.topk`, at most the number of classes).
Images get the checkpoint's eval transforms; the CSV goes to `predict.output` (default: the job's
output dir).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from nf_trainer.core.device import resolve_device
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.images import load_image
from nf_trainer.jobs.from_checkpoint import checkpoint_model, open_checkpoint, start_checkpoint_run
from nf_trainer.jobs.run_record import output_dir, record_config, record_log
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.outcome import tracked_outcome
from nf_trainer.trainer.evaluation import predict_logits
from nf_trainer.transforms import build_transforms

log = logging.getLogger("nf_trainer")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


def predict(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str]) -> None:
    """Returns no objective: a prediction has no metric to optimize."""
    source = open_checkpoint(cfg)
    cfg, out_dir = source.cfg, output_dir()
    files = image_files(Path(cfg.predict.input).expanduser())
    device = resolve_device(cfg.trainer.device)
    model = checkpoint_model(source, device)
    _, eval_transform = build_transforms(cfg.transforms)
    batch_size = cfg.predict.batch_size or cfg.loader.eval_batch_size or cfg.loader.batch_size
    loader = DataLoader(ImageFiles(files, source.facts["in_channels"], eval_transform), batch_size=batch_size,
                        num_workers=cfg.loader.num_workers)
    output = Path(cfg.predict.output or out_dir / "predictions.csv").expanduser()

    start_checkpoint_run(source, tracker, out_dir, extra_tags)
    with tracked_outcome(tracker, out_dir):
        record_config(cfg, tracker, out_dir)
        try:
            logits, _ = predict_logits(model, loader, device)
        except RuntimeError as exc:
            if "stack expects each tensor to be equal size" not in str(exc):
                raise
            raise NfTrainerError(f"images under {cfg.predict.input} have different sizes after the eval transforms; "
                                 "add a Resize to transforms.eval (or predict.batch_size=1)") from exc
        write_predictions(output, files, logits.softmax(dim=1), source.classes, cfg.predict.topk)
        log.info("wrote %d predictions of %s to %s", len(files), source.path, output)
        tracker.log_artifact(output)
        record_log(tracker, out_dir)


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise NfTrainerError(f"predict.input '{folder}' is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise NfTrainerError(f"no images under '{folder}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class ImageFiles(Dataset):
    """(transformed image, index into `files`)."""

    def __init__(self, files: list[Path], channels: int, transform=None):
        self.files, self.channels, self.transform = files, channels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = load_image(self.files[index], "L" if self.channels == 1 else "RGB")  # uint8, as in training
        return (self.transform(image) if self.transform is not None else image), index


def write_predictions(output: Path, files: list[Path], probabilities: torch.Tensor, classes: list[str], topk: int) -> None:
    k = min(topk, len(classes))
    confidences, indices = probabilities.topk(k, dim=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        writer = csv.writer(f)
        ranked = (f"top{i}_{what}" for i in range(1, k + 1) for what in ("class", "confidence"))
        writer.writerow(["path", "predicted", "confidence", *ranked])
        for file, confs, idxs in zip(files, confidences.tolist(), indices.tolist()):
            top = [value for c, i in zip(confs, idxs) for value in (classes[i], f"{c:.6f}")]
            writer.writerow([str(file), classes[idxs[0]], f"{confs[0]:.6f}", *top])
