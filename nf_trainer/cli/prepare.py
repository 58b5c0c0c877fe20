"""Data preparation commands.

    python -m nf_trainer.prepare manifest --root DIR --out-dir D --val-fraction 0.2 --seed 0
        train.csv + val.csv (path,label) from a folder of class subfolders, split as dataset=image_folder
        splits it; python main.py dataset=csv reads them as they are.
    python -m nf_trainer.prepare stats dataset=image_folder dataset.root=DIR
        per-channel mean/std of a dataset's train images (any dataset= option and overrides), printed as
        transforms.mean=[...] transforms.std=[...] for the command line or a transforms/ preset.
    python -m nf_trainer.prepare shards SRC OUT --shard-size 1000
        WebDataset tar shards of a folder of class subfolders (split as dataset=image_folder splits it) or of a
        CSV manifest (as dataset=csv reads it), and OUT/index.json; python main.py dataset=shards trains on them.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from nf_trainer.cli.compose import project_config
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.csv_manifest import csv_manifest
from nf_trainer.dataset.files import Samples, resolve_root
from nf_trainer.dataset.image_folder import folder_samples, image_folder
from nf_trainer.dataset.shards import FORMAT, INDEX
from nf_trainer.dataset.splits import DataSplits

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
    shards = commands.add_parser("shards", help="WebDataset tar shards and their index.json from a folder or a CSV")
    shards.add_argument("src", help="a folder (SRC/<class>/... or SRC/train/ + SRC/val/) or a CSV manifest (path,label)")
    shards.add_argument("out", help="the folder the shards and index.json go to (new, or without an index.json)")
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    shards.add_argument("--val-fraction", type=float, default=0.2, help="without a val set of its own: share of each "
                        "class for val (0.2)")
    shards.add_argument("--seed", type=int, default=0, help="split seed, as dataset.split_seed; also orders the train "
                        "samples across shards (0)")
    shards.add_argument("--val-csv", help="the val CSV, for a CSV SRC (default: split SRC by --val-fraction)")
    shards.add_argument("--root", help="for a CSV SRC: the folder its paths are relative to (default: the CSV's)")
    shards.add_argument("--check", choices=("quick", "full"), default="quick",
                        help="how files are checked before writing, as dataset.check: bad ones are left out and listed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "manifest":
            write_manifest(Path(args.root), Path(args.out_dir or args.root), args.val_fraction, args.seed)
        elif args.command == "shards":
            write_shards(Path(args.src), Path(args.out), args.shard_size, args.val_fraction, args.seed, args.val_csv,
                         args.root, args.check)
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


def write_shards(src: Path, out: Path, shard_size: int = 1000, val_fraction: float = 0.2, seed: int = 0,
                 val_csv: str | None = None, root: str | None = None, check: str = "quick") -> Path:
    """OUT/train-NNNNNN.tar, OUT/val-NNNNNN.tar and OUT/index.json (written last: no index, no finished shards)."""
    if shard_size < 1:
        raise NfTrainerError(f"--shard-size must be at least 1, got {shard_size}")
    if (out / INDEX).exists():
        raise NfTrainerError(f"{out} holds shards already ({out / INDEX}): choose another OUT, or remove them first")
    data = source_splits(src, val_fraction, seed, val_csv, root, check)
    (name, val_set), = data.eval.items()
    train = list(data.train.samples)
    random.Random(seed).shuffle(train)  # a shard holds all classes: a worker's shuffle buffer mixes them
    out.mkdir(parents=True, exist_ok=True)
    splits = {split: write_split(out, split, samples, shard_size, data.classes)
              for split, samples in (("train", train), ("val", list(val_set.samples)))}
    index = {"format": FORMAT, "name": name, "classes": data.classes, "source": str(src.resolve()),
             "shard_size": shard_size, "splits": splits, "bad_files": [list(bad) for bad in data.bad_files]}
    part = out / f"{INDEX}.part"
    part.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(part, out / INDEX)
    last = len(splits["train"]["shards"]) - 1
    shards = {split: f"{len(written['shards'])} {split} shard" + ("" if len(written["shards"]) == 1 else "s")
              for split, written in splits.items()}
    print(f"wrote {shards['train']} ({len(train)} images) and {shards['val']} ({len(val_set.samples)} images), "
          f"{len(data.classes)} classes, to {out}"
          + (f"; left out {len(data.bad_files)} bad file(s), listed in {out / INDEX}" if data.bad_files else ""))
    # quoted for Hydra too: its override grammar reads an unquoted {...} as a dict
    print("train with: python main.py dataset=shards "
          f"\"dataset.urls='{out.resolve()}/train-{{{0:06d}..{last:06d}}}.tar'\"")
    return out / INDEX


def source_splits(src: Path, val_fraction: float, seed: int, val_csv: str | None, root: str | None, check: str
                  ) -> DataSplits:
    """What dataset=image_folder (a folder) or dataset=csv (a .csv file) reads from SRC, bad files checked and left out."""
    if not 0 < val_fraction < 1:
        raise NfTrainerError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    common = dict(val_fraction=val_fraction, split_seed=seed, check=check, on_bad_file="skip")
    if src.is_file():
        return csv_manifest(train_csv=str(src), val_csv=val_csv, root=root, **common)
    return image_folder(root=str(src), **common)


def write_split(out: Path, split: str, samples: Samples, shard_size: int, classes: list[str]) -> dict:
    """The split's shards (each written to a .part file, then renamed) and what the index records of them."""
    from webdataset import TarWriter  # lazy: only this command writes shards

    shards = []
    for start in range(0, len(samples), shard_size):
        path = out / f"{split}-{start // shard_size:06d}.tar"
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as f, TarWriter(f, encoder=False) as tar:
            for n, (file, label) in enumerate(samples[start:start + shard_size], start=start):
                tar.write({"__key__": f"{n:08d}", Path(file).suffix.lower().lstrip("."): Path(file).read_bytes(),
                           "cls": str(label).encode()})
        os.replace(part, path)
        shards.append({"name": path.name, "samples": min(shard_size, len(samples) - start), "bytes": path.stat().st_size})
    counts = {c: 0 for c in classes}
    for _, label in samples:
        counts[classes[label]] += 1
    return {"samples": len(samples), "class_counts": counts, "shards": shards}


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
