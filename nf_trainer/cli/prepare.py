"""Data preparation commands.

    python -m nf_trainer.prepare manifest --root DIR --out-dir D --val-fraction 0.2 --seed 0
        train.csv + val.csv (path,label) from a folder of class subfolders, split as dataset=image_folder
        splits it; python main.py dataset=csv reads them as they are.
    python -m nf_trainer.prepare stats dataset=image_folder dataset.root=DIR
        per-channel mean/std of a dataset's train images (any dataset= option and overrides), printed as
        transforms.mean=[...] transforms.std=[...] for the command line or a transforms/ preset.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from nf_trainer.cli.compose import project_config
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.files import resolve_root
from nf_trainer.dataset.image_folder import folder_samples

log = logging.getLogger("nf_trainer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nf_trainer.prepare", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    manifest = commands.add_parser("manifest", help="train.csv/val.csv from a folder of class subfolders")
    manifest.add_argument("--root", required=True, help="the folder: ROOT/<class>/... or ROOT/train/ + ROOT/val/")
    manifest.add_argument("--out-dir", help="where train.csv and val.csv go (default: ROOT)")
    manifest.add_argument("--val-fraction", type=float, default=0.2, help="share of each class for val.csv (0.2)")
    manifest.add_argument("--seed", type=int, default=0, help="split seed, as dataset.split_seed (0)")
    stats = commands.add_parser("stats", help="per-channel mean/std of a dataset's train images")
    stats.add_argument("overrides", nargs="*", help="config overrides as for main.py, e.g. dataset=image_folder dataset.root=DIR")
    stats.add_argument("--limit", type=int, default=None, help="use at most this many images (default: all)")
    stats.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "manifest":
            write_manifest(Path(args.root), Path(args.out_dir or args.root), args.val_fraction, args.seed)
        else:
            print_stats(args.overrides, args.limit, args.workers)
    except NfTrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def write_manifest(root: Path, out_dir: Path, val_fraction: float, seed: int) -> tuple[Path, Path]:
    if not 0 < val_fraction < 1:
        raise NfTrainerError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    folder = resolve_root(root, "manifest")
    classes, train, val = folder_samples(folder, val_fraction, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = out_dir / "train.csv", out_dir / "val.csv"
    for file, samples in zip(files, (train, val)):
        with open(file, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows((Path(path).relative_to(folder).as_posix(), classes[label]) for path, label in samples)
    print(f"wrote {files[0]} ({len(train)} images) and {files[1]} ({len(val)} images), {len(classes)} classes")
    print("train with: python main.py dataset=csv " + " ".join(shlex.quote(arg) for arg in (
        f"dataset.root={folder}", f"dataset.train_csv={files[0].resolve()}", f"dataset.val_csv={files[1].resolve()}")))
    return files


def print_stats(overrides: list[str], limit: int | None = None, workers: int = 0) -> tuple[list[float], list[float]]:
    cfg = project_config(overrides)
    data = create_instance(cfg.dataset, train_transform=None, eval_transform=None)  # the images as stored
    dataset = data.train if limit is None else Subset(data.train, range(min(limit, len(data.train))))
    total = torch.zeros(data.in_channels, dtype=torch.float64)
    squares, pixels, images = torch.zeros_like(total), 0, 0
    for batch in DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=_images):
        for image in batch:  # sizes may differ: one image at a time
            x = image.double() / 255 if image.dtype == torch.uint8 else image.double()
            total += x.sum(dim=(-2, -1))
            squares += (x * x).sum(dim=(-2, -1))
            pixels += x.shape[-1] * x.shape[-2]
            images += 1
    if not images:
        raise NfTrainerError("no image to compute statistics on")
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp(min=0).sqrt()
    mean_list, std_list = [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]
    print(f"per-channel mean/std of {images} train images, scaled to [0, 1]:")
    print(f"transforms.mean=[{','.join(map(str, mean_list))}] transforms.std=[{','.join(map(str, std_list))}]")
    return mean_list, std_list


def _images(batch):
    return [image for image, _ in (sample for sample in batch if sample is not None)]


if __name__ == "__main__":
    sys.exit(main())
