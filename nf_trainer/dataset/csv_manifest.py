"""CSV manifests: a header row, a path column and a label column.

    python main.py dataset=csv dataset.train_csv=train.csv dataset.val_csv=val.csv dataset.root=DIR

Paths are relative to `root` (default: the CSV's own folder) unless absolute. Labels are class names
(`label_type=name`: the classes are the sorted names found in the train CSV, or `classes`) or class
indices (`label_type=index`: `classes` names them, else they are '0', '1', ...). Without `val_csv`
the train CSV is split by `val_fraction` (stratified, fixed by `split_seed`).

Multi-label (`task=multilabel`: `task` is the task's name) reads either layout found in the wild:
- one column holding the labels, split by `label_delimiter` (`path,labels` with "cat dog"; `label_column`);
- one 0/1 column per label (`label_columns`, else every column but the path: their names are the labels).
An empty cell (or a row of zeros) is a valid image with no label. Its target is a multi-hot vector of the labels;
without `val_csv` the split is random (fixed by `split_seed`).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.files import Samples, check_options, file_splits
from nf_trainer.dataset.splits import DataSplits, stratified_split

LABEL_TYPES = ("name", "index")
TASKS = ("classification", "multilabel")


def csv_manifest(train_csv: str | None = None, val_csv: str | None = None, root: str | None = None,
                 path_column: str = "path", label_column: str = "label", label_type: str = "name",
                 classes: list[str] | None = None, name: str | None = None, mode: str = "RGB",
                 val_fraction: float = 0.2, split_seed: int = 0, on_bad_file: str = "skip", check: str = "quick",
                 cache: str = "none", cache_dir: str | None = None, task: str = "classification",
                 label_delimiter: str = " ", label_columns: list[str] | None = None, train_transform=None,
                 eval_transform=None) -> DataSplits:
    check_options(mode, on_bad_file, check)
    if task not in TASKS:
        raise NfTrainerError(f"dataset=csv serves task classification or multilabel, not '{task}'")
    if task == "multilabel":
        return multilabel_manifest(train_csv, val_csv, root, path_column, label_column, classes, name, mode,
                                   val_fraction, split_seed, on_bad_file, check, cache, cache_dir, label_delimiter,
                                   label_columns, train_transform, eval_transform)
    if label_type not in LABEL_TYPES:
        raise NfTrainerError(f"dataset.label_type must be name or index, not '{label_type}'")
    if not train_csv:
        raise NfTrainerError("csv: dataset.train_csv is not set; pass dataset.train_csv=FILE.csv")
    train_rows = read_rows(train_csv, path_column, label_column, root)
    val_rows = read_rows(val_csv, path_column, label_column, root) if val_csv else None
    classes = list(classes) if classes else infer_classes(train_rows, label_type, train_csv)
    train = to_samples(train_rows, classes, label_type, train_csv)
    if val_rows is None:
        train_idx, val_idx = stratified_split([label for _, label in train], val_fraction, split_seed, str(train_csv))
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
    else:
        val = to_samples(val_rows, classes, label_type, val_csv)
    folder = base_folder(train_csv, root)
    return file_splits(train, val, classes, name or folder.name, str(Path(train_csv).resolve()), str(folder), mode,
                       on_bad_file, check, train_transform, eval_transform, cache, cache_dir)


def base_folder(csv_path: str, root: str | None) -> Path:
    return Path(str(root)).expanduser().resolve() if root else Path(csv_path).expanduser().resolve().parent


def read_rows(csv_path: str, path_column: str, label_column: str, root: str | None) -> list[tuple[int, str, str]]:
    """(line number, absolute path, label) per row; a missing file or column is a one-line error."""
    file = Path(str(csv_path)).expanduser()
    if not file.is_file():
        raise NfTrainerError(f"CSV file {csv_path} does not exist")
    folder = base_folder(csv_path, root)
    if not folder.is_dir():
        raise NfTrainerError(f"dataset.root={root} is not a folder")
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for column, key in ((path_column, "path_column"), (label_column, "label_column")):
            if column not in columns:
                raise NfTrainerError(f"{csv_path} has no column '{column}' (its columns: {', '.join(columns) or 'none'}); "
                                     f"set dataset.{key}")
        rows = [(line, str(folder / row[path_column].strip()), row[label_column].strip())
                for line, row in enumerate(reader, start=2) if any((v or "").strip() for v in row.values())]
    if not rows:
        raise NfTrainerError(f"{csv_path} lists no images")
    missing = [(line, path) for line, path, _ in rows if not Path(path).is_file()]
    if missing:
        line, path = missing[0]
        more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise NfTrainerError(f"{csv_path} line {line}: {path} does not exist{more}; paths are relative to dataset.root "
                             f"({folder})")
    return rows


def infer_classes(rows, label_type: str, csv_path: str) -> list[str]:
    labels = {label for _, _, label in rows}
    if label_type == "name":
        return sorted(labels)
    indices = [_index(label, line, csv_path) for line, _, label in rows]
    return [str(i) for i in range(max(indices) + 1)]


def to_samples(rows, classes: list[str], label_type: str, csv_path: str) -> Samples:
    lookup = {c: i for i, c in enumerate(classes)}
    samples = []
    for line, path, label in rows:
        if label_type == "index":
            index = _index(label, line, csv_path)
            if not 0 <= index < len(classes):
                raise NfTrainerError(f"{csv_path} line {line}: class index {index} is out of range for "
                                     f"{len(classes)} classes ({', '.join(classes)})")
        elif label in lookup:
            index = lookup[label]
        else:
            raise NfTrainerError(f"{csv_path} line {line}: label '{label}' is not in the class list "
                                 f"({', '.join(classes)}); set dataset.classes or fix the label")
        samples.append((path, index))
    return samples


def _index(label: str, line: int, csv_path: str) -> int:
    try:
        return int(label)
    except ValueError:
        raise NfTrainerError(f"{csv_path} line {line}: label '{label}' is not a class index; "
                             "set dataset.label_type=name for class names") from None


# -- multi-label ------------------------------------------------------------------------------------------------
BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def multilabel_manifest(train_csv, val_csv, root, path_column, label_column, classes, name, mode, val_fraction,
                        split_seed, on_bad_file, check, cache, cache_dir, delimiter, label_columns, train_transform,
                        eval_transform) -> DataSplits:
    if not train_csv:
        raise NfTrainerError("csv: dataset.train_csv is not set; pass dataset.train_csv=FILE.csv")
    if not delimiter:
        raise NfTrainerError("dataset.label_delimiter must not be empty: the text between two labels in a cell, e.g. ' '")
    train_rows, layout = read_multilabel_rows(train_csv, path_column, label_column, label_columns, classes, root, delimiter)
    if layout["columns"] is not None:  # one 0/1 column per label: the columns name the labels
        classes = layout["columns"]
    elif not classes:
        classes = sorted({label for _, _, labels in train_rows for label in labels})
        if not classes:
            raise NfTrainerError(f"{train_csv}: no image has a label, so there is no label to learn; set dataset.classes "
                                 "or fix the label column")
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise NfTrainerError(f"dataset.classes names a label twice: {classes}")
    train = multi_hot_samples(train_rows, classes, train_csv)
    if val_csv:
        val_rows, _ = read_multilabel_rows(val_csv, path_column, label_column, layout["columns"] and classes, classes,
                                           root, delimiter)
        val = multi_hot_samples(val_rows, classes, val_csv)
    else:
        train, val = random_split(train, val_fraction, split_seed, train_csv)
    folder = base_folder(train_csv, root)
    return file_splits(train, val, classes, name or folder.name, str(Path(train_csv).resolve()), str(folder), mode,
                       on_bad_file, check, train_transform, eval_transform, cache, cache_dir)


def read_multilabel_rows(csv_path, path_column, label_column, label_columns, classes, root, delimiter):
    """((line, absolute path, [label names]) per row, {"columns": the 0/1 columns, or None for the delimited layout})."""
    file = Path(str(csv_path)).expanduser()
    if not file.is_file():
        raise NfTrainerError(f"CSV file {csv_path} does not exist")
    folder = base_folder(csv_path, root)
    if not folder.is_dir():
        raise NfTrainerError(f"dataset.root={root} is not a folder")
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        records = [(line, row) for line, row in enumerate(reader, start=2)
                   if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    if path_column not in columns:
        raise NfTrainerError(f"{csv_path} has no column '{path_column}' (its columns: {', '.join(columns) or 'none'}); "
                             "set dataset.path_column")
    if not records:
        raise NfTrainerError(f"{csv_path} lists no images")
    binary = list(label_columns) if label_columns else None
    if binary is None and label_column not in columns:  # the 0/1 layout: dataset.classes (or every other column)
        binary = list(classes) if classes else binary_columns(csv_path, columns, path_column, label_column, records)
    if binary is not None:
        missing = [c for c in binary if c not in columns]
        if missing:
            raise NfTrainerError(f"{csv_path} has no column {', '.join(map(repr, missing))} of dataset.label_columns "
                                 f"(its columns: {', '.join(columns)})")
        rows = [(line, str(folder / row[path_column].strip()), [c for c in binary if binary_value(row, c, line, csv_path)])
                for line, row in records]
    else:
        rows = [(line, str(folder / row[path_column].strip()),
                 [label for label in (row[label_column] or "").strip().split(delimiter) if label.strip()])
                for line, row in records]
        rows = [(line, path, [label.strip() for label in labels]) for line, path, labels in rows]
    missing = [(line, path) for line, path, _ in rows if not Path(path).is_file()]
    if missing:
        line, path = missing[0]
        more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise NfTrainerError(f"{csv_path} line {line}: {path} does not exist{more}; paths are relative to dataset.root "
                             f"({folder})")
    return rows, {"columns": binary}


def binary_columns(csv_path, columns: list[str], path_column: str, label_column: str, records) -> list[str]:
    """The layout with one 0/1 column per label, when the CSV has no label column: every other column, each holding
    0/1. A CSV with neither layout is a one-line error."""
    others = [c for c in columns if c != path_column]
    neither = (f"{csv_path} has neither a '{label_column}' column of labels (e.g. \"cat dog\", split by "
               f"dataset.label_delimiter) nor one 0/1 column per label (its columns: {', '.join(columns)})")
    if not others:
        raise NfTrainerError(f"{neither}: add the labels, or set dataset.label_column")
    for column in others:
        values = {(row.get(column) or "").strip().lower() for _, row in records}
        if not values & set(BINARY):  # no 0/1 at all: not a 0/1 column (a label column of another name?)
            raise NfTrainerError(f"{neither}: column '{column}' holds no 0/1; if it holds the labels, set "
                                 f"dataset.label_column={column}")
    return others


def binary_value(row: dict, column: str, line: int, csv_path) -> int:
    value = (row.get(column) or "").strip()
    if value.lower() not in BINARY:
        raise NfTrainerError(f"{csv_path} line {line}: the 0/1 column '{column}' holds '{value}'; write 0 or 1 (1: the "
                             "image has that label)")
    return BINARY[value.lower()]


def multi_hot_samples(rows, classes: list[str], csv_path) -> list[tuple[str, tuple[int, ...]]]:
    lookup = {c: i for i, c in enumerate(classes)}
    samples = []
    for line, path, labels in rows:
        hot = [0] * len(classes)
        for label in labels:
            if label not in lookup:
                raise NfTrainerError(f"{csv_path} line {line}: label '{label}' is not in the vocabulary "
                                     f"({', '.join(classes)}); add it to dataset.classes or fix the label")
            hot[lookup[label]] = 1
        samples.append((path, tuple(hot)))
    return samples


def random_split(samples: list, val_fraction: float, seed: int, where) -> tuple[list, list]:
    """(train, val): a seeded random split (stratifying label sets would leave rare combinations out)."""
    n_val = math.ceil(val_fraction * len(samples))
    if not 0 < n_val < len(samples):
        raise NfTrainerError(f"cannot split {where} ({len(samples)} images) by val_fraction={val_fraction}: give "
                             "0 < val_fraction < 1 and more images, or a separate dataset.val_csv")
    order = np.random.RandomState(seed).permutation(len(samples))
    return [samples[i] for i in sorted(order[n_val:])], [samples[i] for i in sorted(order[:n_val])]
