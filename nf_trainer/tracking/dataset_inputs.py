"""What the run trained and evaluated on, recorded on its MLflow run.

Each train part and eval set becomes a dataset input (name, source, digest, and its size in the
profile); the files skipped as bad are counted (`data/bad_files`) and listed (`data/bad_files.tsv`), and so are
the annotations repaired on reading (`data/annotation_fixes`, `data/annotation_fixes.tsv`: a box clipped to
its image, or dropped for zero area).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from nf_trainer.dataset.splits import DataSplits, targets_of
from nf_trainer.tracking.interface import Tracker


def record_data(tracker: Tracker, data: DataSplits, out_dir: Path) -> None:
    """Log the inputs, the bad-file and the annotation-fix counts and lists through the run's tracker."""
    tracker.log_inputs(describe_inputs(data))
    record_bad_files(tracker, data, out_dir)
    if data.annotation_fixes:
        record_list(tracker, "annotation_fixes", ("file", "fix"), data.annotation_fixes, out_dir, step=0)


def record_bad_files(tracker: Tracker, data: DataSplits, out_dir: Path, step: int = 0) -> None:
    """The count and the list; logged again after training when decoding in the main process found more
    (`loader.decode=gpu`: nf_trainer/dataset/gpu_decode.py)."""
    record_list(tracker, "bad_files", ("path", "reason"), data.bad_files, out_dir, step)


def record_list(tracker: Tracker, name: str, columns: tuple[str, str], rows: list[tuple[str, str]], out_dir: Path,
                step: int) -> None:
    """`data/<name>`: the count as a metric, and the rows as the artifact `data/<name>.tsv` (when there are any)."""
    tracker.log_metrics({f"data/{name}": len(rows)}, step=step)
    if rows:
        listing = Path(out_dir) / f"{name}.tsv"
        listing.write_text("\t".join(columns) + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
        tracker.log_artifact(listing, "data")


def describe_inputs(data: DataSplits) -> list[dict]:
    """Each train part and eval set as plain values (`MlflowTracker.log_inputs` makes the MLflow datasets):
    name, context (training/evaluation), source, digest, and the labels (so the profile shows the size)."""
    parts = data.train.datasets if isinstance(data.train, ConcatDataset) else [data.train]
    named = [(getattr(part, "name", "train"), part, "training") for part in parts]
    named += [(name, dataset, "evaluation") for name, dataset in data.eval.items()]
    return [{"name": name, "context": context, "source": source_of(dataset), "digest": digest_of(dataset),
             "labels": labels_of(dataset)} for name, dataset, context in named]


def labels_of(dataset: Dataset):
    try:
        return targets_of(dataset).numpy()
    except Exception:  # a dataset without .targets: its size is all we know
        return np.arange(len(dataset))


def source_of(dataset: Dataset) -> str:
    if isinstance(dataset, ConcatDataset):
        return "; ".join(dict.fromkeys(source_of(part) for part in dataset.datasets))
    return getattr(dataset, "source", "") or type(dataset).__name__


def digest_of(dataset: Dataset) -> str:
    """Changes with the data: file lists with sizes, or the bytes of in-memory images and labels."""
    h = hashlib.blake2b(digest_size=8)
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            h.update(digest_of(part).encode())
    elif hasattr(dataset, "digest"):
        h.update(dataset.digest().encode())
    elif hasattr(dataset, "images") and hasattr(dataset, "labels"):
        h.update(dataset.images.contiguous().numpy().tobytes())
        h.update(dataset.labels.contiguous().numpy().tobytes())
    else:
        h.update(f"{type(dataset).__name__}:{len(dataset)}".encode())
    return h.hexdigest()
