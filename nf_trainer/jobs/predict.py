"""`python main.py mode=predict ckpt=PATH predict.input=DIR`: the checkpoint's predictions for every image under
DIR, written out as its task writes them (classification: a CSV of the top classes; detection: COCO results
JSON and a CSV of boxes), in each image's own pixels. Images get the checkpoint's eval transforms; the CSV goes
to `predict.output` (default: predictions.csv in the job's output dir), other files beside it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from nf_trainer.core.device import resolve_device
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.images import load_image
from nf_trainer.jobs.from_checkpoint import checkpoint_model, checkpoint_task, open_checkpoint, start_checkpoint_run
from nf_trainer.jobs.run_record import output_dir, record_config, record_log
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.outcome import tracked_outcome
from nf_trainer.transforms import build_transforms

log = logging.getLogger("nf_trainer")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


def predict(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str]) -> None:
    """Returns no objective: a prediction has no metric to optimize."""
    source = open_checkpoint(cfg)
    cfg, out_dir = source.cfg, output_dir()
    files = image_files(Path(cfg.predict.input).expanduser())
    device = resolve_device(cfg.trainer.device)
    task = checkpoint_task(source)
    model = checkpoint_model(source, task, device)
    _, eval_transform = build_transforms(cfg.transforms)
    batch_size = cfg.predict.batch_size or cfg.loader.eval_batch_size or cfg.loader.batch_size
    loader = DataLoader(ImageFiles(files, source.facts["in_channels"], eval_transform), batch_size=batch_size,
                        num_workers=cfg.loader.num_workers, collate_fn=task.collate)
    output = Path(cfg.predict.output or out_dir / "predictions.csv").expanduser()

    start_checkpoint_run(source, tracker, out_dir, extra_tags)
    with tracked_outcome(tracker, out_dir):
        record_config(cfg, tracker, out_dir)
        try:
            found, sizes = predict_files(task, model, loader, device)
        except RuntimeError as exc:
            if "stack expects each tensor to be equal size" not in str(exc):
                raise
            raise NfTrainerError(f"images under {cfg.predict.input} have different sizes after the eval transforms; "
                                 "add a Resize to transforms.eval (or predict.batch_size=1)") from exc
        for path in task.write_predictions(output, files, found, sizes, cfg.predict):
            tracker.log_artifact(path)
        log.info("wrote %d predictions of %s to %s", len(files), source.path, output)
        record_log(tracker, out_dir)


@torch.inference_mode()
def predict_files(task, model, loader, device) -> tuple[list, list[tuple[int, int]]]:
    """One prediction per file, in the pixels of its own size, and the (height, width) of each file."""
    found, sizes = [], []
    for inputs, own_sizes in loader:
        inputs, _ = task.to_device((inputs, None), device)
        own = [tuple(int(v) for v in size) for size in own_sizes]
        found += task.unbatch(task.predict(model, inputs), [tuple(image.shape[-2:]) for image in inputs], own)
        sizes += own
    return found, sizes


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise NfTrainerError(f"predict.input '{folder}' is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise NfTrainerError(f"no images under '{folder}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class ImageFiles(Dataset):
    """(transformed image, the file's own (height, width))."""

    def __init__(self, files: list[Path], channels: int, transform=None):
        self.files, self.channels, self.transform = files, channels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = load_image(self.files[index], "L" if self.channels == 1 else "RGB")  # uint8, as in training
        size = torch.tensor(image.shape[-2:])
        return (self.transform(image) if self.transform is not None else image), size
