"""The end-of-training views of each eval set, as its task writes them (classification: the confusion matrix
and a per-class report; detection: the per-class AP table and precision-recall curves)."""
from __future__ import annotations

from pathlib import Path

from nf_trainer.tracking.interface import Tracker


def report_eval_sets(task, model, loaders: dict, device, limit_batches: int | None, out_dir: Path,
                     tracker: Tracker) -> None:
    """The reports of every eval set, in out_dir/reports/<set>/ and as the run's artifacts `reports/<set>/`."""
    for name, loader in loaders.items():
        folder = out_dir / "reports" / name
        folder.mkdir(parents=True, exist_ok=True)
        task.report(model, loader, device, limit_batches, folder, name)
        tracker.log_artifact(folder, f"reports/{name}")
