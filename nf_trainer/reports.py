"""Per-class views of one eval set: a confusion matrix (PNG and CSV) and a per-class report (CSV)."""
from __future__ import annotations

import csv
from pathlib import Path


def write_reports(targets, predictions, classes: list[str], folder: Path, title: str) -> Path:
    """`targets`, `predictions`: class indices. Writes confusion_matrix.png, confusion_matrix.csv
    (rows: true class, columns: predicted class) and per_class_report.csv into `folder`."""
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
            writer.writerow([name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1-score']:.4f}", int(row["support"])])

    size = min(4 + 0.5 * len(classes), 40)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=axes, cmap="Blues", colorbar=False, xticks_rotation="vertical", include_values=len(classes) <= 30)
    accuracy = matrix.trace() / max(matrix.sum(), 1)
    axes.set_title(f"{title}: accuracy {accuracy:.4f} ({matrix.sum()} images)")
    figure.savefig(folder / "confusion_matrix.png", dpi=100)
    return folder
