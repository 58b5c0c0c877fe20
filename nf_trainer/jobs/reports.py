"""Per-class views of one eval set: a confusion matrix (PNG and CSV) and a per-class report (CSV)."""
from __future__ import annotations

import csv
from pathlib import Path

from nf_trainer.tracking.interface import Tracker
from nf_trainer.trainer.evaluation import predict_logits


def report_eval_sets(model, loaders: dict, classes: list[str], device, limit_batches: int | None, out_dir: Path,
                     tracker: Tracker) -> None:
    """The reports of every eval set, in out_dir/reports/<set>/ and as the run's artifacts `reports/<set>/`."""
    for name, loader in loaders.items():
        logits, targets = predict_logits(model, loader, device, limit_batches)
        folder = write_reports(targets.numpy(), logits.argmax(1).numpy(), classes, out_dir / "reports" / name, name)
        tracker.log_artifact(folder, f"reports/{name}")


def write_reports(targets, predictions, classes: list[str], folder: Path, title: str) -> Path:
    """`targets`, `predictions`: class indices. Writes confusion_matrix.png, confusion_matrix.csv
    (rows: true class, columns: predicted class) and per_class_report.csv into `folder`."""
    # lazy: scikit-learn and matplotlib would add about a second to every job's start; reports come at its end
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
    from sklearn.metrics import ConfusionMatrixDisplay, classification_report, confusion_matrix

    folder.mkdir(parents=True, exist_ok=True)
    labels = list(range(len(classes)))
    matrix = confusion_matrix(targets, predictions, labels=labels)
    with open(folder / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes])
        writer.writerows([name, *row] for name, row in zip(classes, matrix.tolist()))

    report = classification_report(targets, predictions, labels=labels, target_names=classes,
                                   output_dict=True, zero_division=0)
    with open(folder / "per_class_report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name in [*classes, "macro avg", "weighted avg"]:
            row = report[name]
            scores = [f"{row[key]:.4f}" for key in ("precision", "recall", "f1-score")]
            writer.writerow([name, *scores, int(row["support"])])

    size = min(4 + 0.5 * len(classes), 40)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=axes, cmap="Blues", colorbar=False, xticks_rotation="vertical", include_values=len(classes) <= 30)
    accuracy = matrix.trace() / max(matrix.sum(), 1)
    axes.set_title(f"{title}: accuracy {accuracy:.4f} ({matrix.sum()} images)")
    figure.savefig(folder / "confusion_matrix.png", dpi=100)
    return folder
