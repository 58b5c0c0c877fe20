"""CSV manifests: a header row, a path column and a label column.

    python main.py dataset=csv dataset.train_csv=train.csv dataset.val_csv=val.csv dataset.root=DIR

Paths are relative to `root` (default: the CSV's own folder) unless absolute. Labels are class names
(`label_type=name`: the classes are the sorted names found in the train CSV, or `classes`) or class
indices (`label_type=index`: `classes` names them, else they are '0', '1', ...). Without `val_csv`
the train CSV is split by `val_fraction` (stratified, fixed by `split_seed`).
"""
from __future__ import annotations

import csv
from pathlib import Path

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.files import Samples, check_options, file_splits
from nf_trainer.dataset.splits import DataSplits, stratified_split

LABEL_TYPES = ("name", "index")


def csv_manifest(train_csv: str | None = None, val_csv: str | None = None, root: str | None = None,
                 path_column: str = "path", label_column: str = "label", label_type: str = "name",
                 classes: list[str] | None = None, name: str | None = None, mode: str = "RGB",
                 val_fraction: float = 0.2, split_seed: int = 0, on_bad_file: str = "skip", check: str = "quick",
                 cache: str = "none", cache_dir: str | None = None, train_transform=None, eval_transform=None) -> DataSplits:
    check_options(mode, on_bad_file, check)
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
