"""YOLO txt labels with Ultralytics' data.yaml: `python main.py task=detection dataset=yolo dataset.data=data.yaml`.

    path: ../datasets/mine     # the dataset folder; relative: to the data.yaml's folder; absent: that folder
    train: images/train        # relative to path: a folder of images, a .txt list of image paths, or a list of these
    val: images/val            # absent: the train images are split by val_fraction (by image, fixed by split_seed)
    names: [cat, dog]          # or {0: cat, 1: dog}

Each image's labels are where Ultralytics looks for them: the last `/images/` of its path becomes `/labels/`
and its suffix `.txt`. A line is `class cx cy w h`, the box centre and size as fractions of the image's width
and height (a line `class x1 y1 x2 y2 ...` is a polygon, and its extent is the box, as Ultralytics reads
segment labels). An image without a label file, or with an empty one, is a background image.
Paths in a .txt list are relative to the list's folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.detection import ImageBoxes, detection_splits, image_files, required_file
from nf_trainer.dataset.splits import DataSplits

TOLERANCE = 0.01  # how far past 0..1 a coordinate may be (rounding in exports) before the file counts as unnormalized


def yolo(data: str | None = None, name: str | None = None, mode: str = "RGB", val_fraction: float | None = 0.2,
         split_seed: int = 0, on_bad_file: str = "skip", check: str = "quick", train_transform=None,
         eval_transform=None) -> DataSplits:
    file = required_file(data, "dataset.data")
    spec = read_yaml(file)
    classes = class_names(spec, file)
    root = (file.parent / str(spec["path"])).resolve() if spec.get("path") else file.parent
    if not root.is_dir():
        raise NfTrainerError(f"{file}: path: {spec['path']} is not a folder ({root})")
    if not spec.get("train"):
        raise NfTrainerError(f"{file} has no 'train' entry: give the train images (a folder or a .txt list)")
    train = [labelled(image, classes, file) for image in image_paths(spec["train"], root, file, "train")]
    val = [labelled(image, classes, file) for image in image_paths(spec["val"], root, file, "val")] if spec.get("val") else None
    return detection_splits(train, val, classes, name=name or root.name, source=str(file), root=str(root), mode=mode,
                            on_bad_file=on_bad_file, check=check, val_fraction=val_fraction, split_seed=split_seed,
                            train_transform=train_transform, eval_transform=eval_transform)


def read_yaml(file: Path) -> dict:
    try:
        spec = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
        raise NfTrainerError(f"{where}: YAML does not parse: {exc.problem or exc.context}; fix the file") from None
    if not isinstance(spec, dict):
        raise NfTrainerError(f"{file} is not a YOLO data.yaml: expected keys path, train, val, names")
    return spec


def class_names(spec: dict, file: Path) -> list[str]:
    """`names` as a list, or an id -> name mapping with the ids 0..K-1; without it, `nc` names 'class_0'...."""
    names = spec.get("names")
    if isinstance(names, dict):
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise NfTrainerError(f"{file}: the ids of names must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [names[i] for i in ids]
    elif names is None and isinstance(spec.get("nc"), int):
        names = [f"class_{i}" for i in range(spec["nc"])]
    if not isinstance(names, list) or not names:
        raise NfTrainerError(f"{file}: 'names' must list the class names (a list, or a mapping from id to name)")
    names = [str(n) for n in names]
    if isinstance(spec.get("nc"), int) and spec["nc"] != len(names):
        raise NfTrainerError(f"{file}: nc is {spec['nc']} but names lists {len(names)} classes; make them agree")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise NfTrainerError(f"{file}: names lists {', '.join(map(repr, twice))} more than once: class names must be "
                             "unique")
    return names


def image_paths(entry, root: Path, file: Path, key: str) -> list[Path]:
    """The images a train/val entry names: folders (searched at any depth) and .txt lists, one or several."""
    paths = []
    for item in entry if isinstance(entry, list) else [entry]:
        path = (root / str(item)).resolve()
        if path.is_dir():
            paths += image_files(path)
        elif path.is_file() and path.suffix == ".txt":
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            paths += [(path.parent / line).resolve() for line in lines if line]
        else:
            raise NfTrainerError(f"{file}: {key}: {item} is neither a folder nor a .txt list of images ({path})")
    if not paths:
        raise NfTrainerError(f"{file}: {key}: no images in {entry}")
    return paths


def label_path(image: Path) -> Path:
    """Ultralytics' rule (img2label_paths): the last /images/ of the path becomes /labels/, the suffix .txt."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(labels.join(str(image).rsplit(images, 1)).rsplit(".", 1)[0] + ".txt")


def labelled(image: Path, classes: list[str], data: Path) -> ImageBoxes:
    """The image with the boxes of its label file (none without one)."""
    labels = label_path(image)
    record = ImageBoxes(str(image), str(labels), box_format="cxcywh", normalized=True)
    if not labels.is_file():
        return record
    for number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        where = f"{labels}:{number}"
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise NfTrainerError(f"{where}: expected 'class cx cy w h' (5 numbers) or a polygon 'class x1 y1 x2 y2 "
                                 f"x3 y3 ...', got {len(values)} value(s): {line.strip()[:80]}")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise NfTrainerError(f"{where}: '{bad}' is not a number") from None
        label, coords = numbers[0], numbers[1:]
        if not label.is_integer() or not 0 <= label < len(classes):
            raise NfTrainerError(f"{where}: class id {values[0]} is beyond names ({len(classes)} classes: ids 0.."
                                 f"{len(classes) - 1} in {data}); fix the line or add the class to names")
        if not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in coords):
            raise NfTrainerError(f"{where}: coordinates must be fractions of the image size (0..1), got "
                                 f"{' '.join(values[1:])[:80]}; convert pixel coordinates to YOLO's normalized ones")
        if len(coords) > 4:  # a polygon: its extent, as cx cy w h
            xs, ys = coords[0::2], coords[1::2]
            coords = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        record.boxes.append(coords)
        record.labels.append(int(label))
        record.refs.append(f"line {number}")
    return record


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
