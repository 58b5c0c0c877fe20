"""Per-class views of one eval set for segmentation, from one pixel confusion matrix of the whole set (void
pixels left out): confusion_matrix.csv (pixels; rows: truth, columns: predictions) and .png (each row as a
share of the class's pixels), per_class_iou.csv (IoU, accuracy, pixels in the truth and in the predictions;
"absent" for a class in neither) and per_class_iou.png."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from nf_trainer.tasks.classification_reports import MATRIX_CLASSES
from nf_trainer.trainer.evaluation import predictions

VOID = 255


def pixel_confusion(task, model, loader, device, limit_batches) -> np.ndarray:
    k = len(task.classes)
    matrix = torch.zeros(k * k, dtype=torch.long)
    found, truths = predictions(task, model, loader, device, limit_batches)
    for probabilities, masks in zip(found, truths):
        predicted, masks = probabilities.argmax(dim=1).cpu().flatten(), masks.cpu().long().flatten()
        keep = masks != VOID
        matrix += torch.bincount(masks[keep] * k + predicted[keep], minlength=k * k)
    return matrix.reshape(k, k).numpy()


def write_reports(task, model, loader, device, limit_batches, folder: Path, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    matrix = pixel_confusion(task, model, loader, device, limit_batches)
    classes = task.classes
    with open(folder / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted (pixels)", *classes])
        writer.writerows([name, *row] for name, row in zip(classes, matrix.tolist()))
    hits, truth, found = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    union = truth + found - hits
    rows = []
    for i, name in enumerate(classes):
        if union[i] == 0:
            rows.append([name, "absent", "absent", 0, 0])
        else:
            accuracy = f"{hits[i] / truth[i]:.4f}" if truth[i] else "no truth"
            rows.append([name, f"{hits[i] / union[i]:.4f}", accuracy, int(truth[i]), int(found[i])])
    present = union > 0
    miou = float((hits[present] / union[present]).mean()) if present.any() else 0.0
    with open(folder / "per_class_iou.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "iou", "accuracy", "true_pixels", "predicted_pixels"])
        writer.writerows(rows)
    heading = f"{title}: mIoU {miou:.4f}, pixel accuracy {hits.sum() / max(matrix.sum(), 1):.4f} ({matrix.sum()} pixels)"
    iou_chart(rows, heading, folder / "per_class_iou.png")
    if len(classes) <= MATRIX_CLASSES:
        matrix_picture(matrix, classes, heading, folder / "confusion_matrix.png")


def iou_chart(rows: list[list], heading: str, path: Path) -> None:
    from matplotlib.figure import Figure  # lazy: only the reports draw

    shown = [r for r in rows if r[1] != "absent"][::-1]
    figure = Figure(figsize=(7, 0.3 * len(shown) + 1.5), layout="constrained")
    axes = figure.subplots()
    bars = axes.barh([r[0] for r in shown], [float(r[1]) for r in shown], color="tab:blue")
    axes.bar_label(bars, labels=[r[1] for r in shown], padding=2, fontsize=8)
    axes.set_xlim(0, 1.1)
    axes.set_xlabel("IoU (absent classes left out)")
    axes.set_title(heading, fontsize=9)
    figure.savefig(path, dpi=100)


def matrix_picture(matrix: np.ndarray, classes: list[str], heading: str, path: Path) -> None:
    from matplotlib.figure import Figure

    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 4 + 0.4 * len(classes)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)), classes, rotation=90)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(classes) <= 12:
        for (t, p), share in np.ndenumerate(shares):
            axes.text(p, t, f"{share:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if share > 0.5 else "black")
    axes.set_title(f"{heading}\nshare of each true class's pixels", fontsize=9)
    figure.savefig(path, dpi=100)
