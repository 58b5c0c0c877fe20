"""Per-class views of one eval set for classification: the confusion matrix (CSV, and a picture that stays
readable: the matrix itself up to `MATRIX_CLASSES` classes, else the most-confused pairs and the worst
classes) and a per-class report (CSV)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

MATRIX_CLASSES = 30  # beyond this, a matrix picture is a wall of crammed labels: pairs and worst classes instead
SHOWN = 20  # pairs and classes in the picture of a larger set


def write_reports(targets, predictions, classes: list[str], folder: Path, title: str) -> Path:
    """`targets`, `predictions`: class indices. Writes confusion_matrix.csv (rows: true class, columns: predicted
    class), per_class_report.csv, and confusion_matrix.png (up to MATRIX_CLASSES classes) or most_confused.png
    and most_confused.csv into `folder`."""
    # lazy: scikit-learn would add about a second to every job's start; reports come at its end
    from sklearn.metrics import classification_report, confusion_matrix

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

    accuracy = matrix.trace() / max(matrix.sum(), 1)
    heading = f"{title}: accuracy {accuracy:.4f} ({matrix.sum()} images)"
    if len(classes) <= MATRIX_CLASSES:
        matrix_picture(matrix, classes, heading, folder / "confusion_matrix.png")
    else:
        most_confused(matrix, classes, report, heading, folder)
    return folder


def matrix_picture(matrix: np.ndarray, classes: list[str], heading: str, path: Path) -> None:
    from matplotlib.figure import Figure  # lazy: as above; no pyplot: no GUI backend, no global figure state
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 4 + 0.4 * len(classes)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(ax=axes, cmap="Blues", colorbar=False,
                                                                xticks_rotation="vertical")
    axes.set_title(heading)
    figure.savefig(path, dpi=100)


def confused_pairs(matrix: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The `count` largest off-diagonal cells: (true class, predicted class, images), most first."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:count]
    return [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.unravel_index(order, off.shape)) if off[t, p] > 0]


def most_confused(matrix: np.ndarray, classes: list[str], report: dict, heading: str, folder: Path) -> None:
    """most_confused.csv (every confused pair, most first) and most_confused.png: the SHOWN most-confused pairs
    beside the SHOWN classes of lowest F1."""
    from matplotlib.figure import Figure  # lazy: see write_reports

    pairs = confused_pairs(matrix, int((matrix > 0).sum()))
    with open(folder / "most_confused.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true", "predicted", "images", "share of the true class"])
        support = matrix.sum(axis=1)
        writer.writerows([classes[t], classes[p], n, f"{n / max(support[t], 1):.4f}"] for t, p, n in pairs)
    worst = sorted(classes, key=lambda name: report[name]["f1-score"])[:SHOWN]
    figure = Figure(figsize=(14, 0.35 * SHOWN + 1.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    shown = pairs[:SHOWN][::-1]
    left.barh([f"{classes[t]} → {classes[p]}" for t, p, _ in shown], [n for *_, n in shown], color="tab:red")
    left.set_title(f"most-confused pairs (true → predicted) of {len(classes)} classes")
    left.set_xlabel("images")
    right.barh(worst[::-1], [report[name]["f1-score"] for name in worst[::-1]], color="tab:blue")
    right.set_xlim(0, 1)
    right.set_title("lowest F1 (per_class_report.csv has every class)")
    figure.suptitle(heading)
    figure.savefig(folder / "most_confused.png", dpi=100)
