"""Per-class views of one eval set for detection: the AP table (per_class_ap.csv and a bar chart) and the
precision-recall curves at IoU 0.5 (pr_curves.png), from one COCO evaluation of the whole set."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from nf_trainer.tasks.charts import ap_chart
from nf_trainer.trainer.evaluation import predictions

CURVES = 12  # classes drawn in pr_curves.png: all up to this many, else the lowest AP50 (the mean curve always)


def write_reports(task, model, loader, device, limit_batches, folder: Path, title: str) -> None:
    # lazy: the COCO evaluation (pycocotools or faster-coco-eval) loads only for the reports
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(backend="faster_coco_eval", class_metrics=True, extended_summary=True)
    boxes = Counter()
    found, truths = predictions(task, model, loader, device, limit_batches)
    for batch_found, batch_truth in zip(found, truths):
        truth = [{"boxes": t["boxes"].as_subclass(torch.Tensor).cpu(), "labels": t["labels"].cpu()} for t in batch_truth]
        metric.update([{k: v.cpu() for k, v in f.items()} for f in batch_found], truth)
        boxes.update(label for t in truth for label in t["labels"].tolist())
    result = metric.compute()
    rows = per_class_rows(result, task.classes, boxes)
    with open(folder / "per_class_ap.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "ap", "ap_50", "ap_75", "ar_100", "boxes"])
        writer.writerows([r["class"], *(fmt(r[k]) for k in ("ap", "ap_50", "ap_75", "ar_100")), r["boxes"]] for r in rows)
    heading = f"{title}: mAP {result['map'].item():.4f}, mAP50 {result['map_50'].item():.4f} ({sum(boxes.values())} boxes)"
    ap_chart(rows, "class", [("ap_50", "AP50", 0.3), ("ap", "AP 0.50:0.95", 1.0)], heading,
             folder / "per_class_ap.png")
    pr_curves(result, rows, heading, folder / "pr_curves.png")


def per_class_rows(result: dict, classes: list[str], boxes: Counter) -> list[dict]:
    """One row per class: AP (0.50:0.95), AP at IoU 0.5 and 0.75, AR at 100 detections, its true boxes. A class
    without true boxes in the set has no AP (None), not 0."""
    ids = result["classes"].flatten().tolist()
    precision = result["precision"]  # (IoU thresholds, recall points, classes, areas, max detections)
    rows = []
    for index, name in enumerate(classes):
        row = {"class": name, "boxes": boxes[index], "ap": None, "ap_50": None, "ap_75": None, "ar_100": None}
        if index in ids and boxes[index]:
            k = ids.index(index)
            row |= {"ap": value(result["map_per_class"].flatten()[k]), "ar_100": value(result["mar_100_per_class"].flatten()[k]),
                    "ap_50": mean_precision(precision[0, :, k, 0, -1]), "ap_75": mean_precision(precision[5, :, k, 0, -1])}
        rows.append(row)
    return rows


def value(tensor: torch.Tensor) -> float | None:
    v = float(tensor)
    return None if v < 0 else v


def mean_precision(curve: torch.Tensor) -> float | None:
    """AP as COCO reads it off a precision curve: the mean over its 101 recall points (-1: undefined)."""
    curve = curve[curve > -1]
    return float(curve.mean()) if len(curve) else None


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def pr_curves(result: dict, rows: list[dict], heading: str, path: Path) -> None:
    from matplotlib.figure import Figure  # lazy: reports come at a job's end; no pyplot: no GUI backend

    ids = result["classes"].flatten().tolist()
    recall = np.linspace(0, 1, result["precision"].shape[1])
    curves = {r["class"]: result["precision"][0, :, ids.index(i), 0, -1].numpy()
              for i, r in enumerate(rows) if r["ap_50"] is not None}
    shown = sorted(curves, key=lambda name: np.clip(curves[name], 0, None).mean())[:CURVES]
    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.subplots()
    for name in shown:
        axes.plot(recall, np.where(curves[name] < 0, np.nan, curves[name]), label=name, linewidth=1)
    if curves:
        mean = np.nanmean(np.stack([np.where(c < 0, np.nan, c) for c in curves.values()]), axis=0)
        axes.plot(recall, mean, label="mean", color="black", linewidth=2.5)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize="small", loc="lower left")
    note = "" if len(curves) <= CURVES else f" (the {CURVES} lowest of {len(curves)} classes)"
    axes.set_title(f"{heading}\nprecision-recall at IoU 0.5{note}")
    figure.savefig(path, dpi=100)
