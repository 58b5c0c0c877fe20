"""What the run trained and evaluated on, recorded on its MLflow run.

Each train part and eval set becomes a dataset input (name, source, digest, and its size in the
profile); the files skipped as bad are counted (`data/bad_files`) and listed (`data/bad_files.tsv`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from nf_trainer.dataset.splits import DataSplits


def record_data(tracker, data: DataSplits, out_dir: Path) -> None:
    """Log the inputs, the bad-file count and list through the run's `Tracker`."""
    from mlflow.exceptions import MlflowException

    inputs = dataset_inputs(data)
    try:
        tracker.client.log_inputs(tracker.run_id, datasets=inputs)
    except MlflowException:  # parallel sweep jobs registering the same dataset at once (a UNIQUE race): it exists now
        tracker.client.log_inputs(tracker.run_id, datasets=inputs)
    tracker.log_metrics({"data/bad_files": len(data.bad_files)}, step=0)
    if data.bad_files:
        listing = Path(out_dir) / "bad_files.tsv"
        listing.write_text("path\treason\n" + "".join(f"{path}\t{reason}\n" for path, reason in data.bad_files))
        tracker.log_artifact(listing, "data")


def dataset_inputs(data: DataSplits) -> list:
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    parts = data.train.datasets if isinstance(data.train, ConcatDataset) else [data.train]
    named = [(getattr(part, "name", "train"), part, "training") for part in parts]
    named += [(name, dataset, "evaluation") for name, dataset in data.eval.items()]
    return [DatasetInput(dataset=mlflow_dataset(name, dataset)._to_mlflow_entity(),
                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]) for name, dataset, context in named]


def mlflow_dataset(name: str, dataset: Dataset):
    """An MLflow dataset of the labels (so the profile shows the size), with our source and digest."""
    import numpy as np
    from mlflow.data import from_numpy

    from nf_trainer.dataset.splits import targets_of

    try:
        labels = targets_of(dataset).numpy()
    except Exception:  # a dataset without .targets: its size is all we know
        labels = np.arange(len(dataset))
    return from_numpy(labels, source=_source(source_of(dataset)), name=name, digest=digest_of(dataset))


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


def _source(text: str):
    """A local source for paths, a code source (named by the text) for the rest (sklearn's digits)."""
    if os.path.exists(text.split(" (")[0]):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers two local sources and warns it picked one
            warnings.simplefilter("ignore")
            return resolve_dataset_source(text)
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={"source": text})
