"""A folder of images with one subfolder per class: `python main.py dataset=image_folder dataset.root=DIR`.

    DIR/<class>/**/*.png|jpg|jpeg|webp|bmp|gif|tif   split into train/val by val_fraction (stratified, fixed seed)
    DIR/train/<class>/... + DIR/val/<class>/...      used as given

Subfolders inside a class folder are searched too; extensions match in any case; hidden files and
folders (.ipynb_checkpoints, ._x.jpg) are ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets.folder import make_dataset

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.files import Samples, check_options, file_splits, resolve_root
from nf_trainer.dataset.images import IMAGE_EXTENSIONS
from nf_trainer.dataset.splits import DataSplits, stratified_split


def image_folder(root: str | None = None, name: str | None = None, mode: str = "RGB", val_fraction: float = 0.2,
                 split_seed: int = 0, train_dir: str = "train", val_dir: str = "val", on_bad_file: str = "skip",
                 check: str = "quick", cache: str = "none", cache_dir: str | None = None, train_transform=None,
                 eval_transform=None) -> DataSplits:
    check_options(mode, on_bad_file, check)
    folder = resolve_root(root, "image_folder")
    classes, train, val = folder_samples(folder, val_fraction, split_seed, train_dir, val_dir)
    return file_splits(train, val, classes, name or folder.name, str(folder), str(folder), mode, on_bad_file, check,
                       train_transform, eval_transform, cache, cache_dir)


def folder_samples(folder: Path, val_fraction: float = 0.2, split_seed: int = 0, train_dir: str = "train",
                   val_dir: str = "val") -> tuple[list[str], Samples, Samples]:
    """(classes, train samples, val samples): the train/ + val/ pair as given, else a stratified split."""
    if (folder / train_dir).is_dir() and (folder / val_dir).is_dir():
        classes = class_folders(folder / train_dir)
        val_classes = class_folders(folder / val_dir)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise NfTrainerError(f"{folder / val_dir} has class folders that {folder / train_dir} lacks: {', '.join(unknown)}")
        return classes, list_images(folder / train_dir, classes), list_images(folder / val_dir, classes, only=val_classes)
    classes = class_folders(folder)
    samples = list_images(folder, classes)
    train_idx, val_idx = stratified_split([label for _, label in samples], val_fraction, split_seed, str(folder))
    return classes, [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the visible subfolders: index i is class i."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise NfTrainerError(f"no class folders in {folder}: expected {folder}/<class>/<image files> "
                             f"(or {folder}/train/<class>/... and {folder}/val/<class>/...)")
    return classes


def list_images(folder: Path, classes: list[str], only: list[str] | None = None) -> Samples:
    """(path, class index) for every image under folder/<class>/, in a stable order; an empty class is an error."""
    present = only if only is not None else classes
    class_to_idx = {c: classes.index(c) for c in present}
    samples = make_dataset(str(folder), class_to_idx, allow_empty=True,
                           is_valid_file=lambda path: is_image_file(os.path.relpath(path, folder)))
    counts = {c: 0 for c in present}
    for _, label in samples:
        counts[classes[label]] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise NfTrainerError(f"class folder(s) with no images in {folder}: {', '.join(empty)} "
                             f"(images end in {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)")
    return samples


def is_image_file(relative_path: str) -> bool:
    """An image extension in any case, and nothing hidden on the way (.ipynb_checkpoints/, ._x.jpg)."""
    return relative_path.lower().endswith(IMAGE_EXTENSIONS) and not any(
        part.startswith(".") for part in Path(relative_path).parts)
