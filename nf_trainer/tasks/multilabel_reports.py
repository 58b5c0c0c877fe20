"""Per-label views of one eval set for multi-label classification: the table (per_label.csv: AP, AUROC, the decision
threshold and the precision, recall and F1 at it, positives), its AP chart (per_label_ap.png) and the
precision-recall curves (pr_curves.png). A label never positive in the set has no AP (empty), not 0."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_precision_recall_curve

from nf_trainer.tasks.charts import ap_chart
from nf_trainer.tasks.multilabel_metrics import LabelAUROC, LabelAveragePrecision

CURVES = 12  # labels drawn in pr_curves.png: all up to this many, else the lowest AP (the mean curve always)


def write_reports(probabilities: torch.Tensor, truth: torch.Tensor, classes: list[str], cutoffs: torch.Tensor,
                  folder: Path, title: str) -> None:
    rows = per_label_rows(probabilities, truth, classes, cutoffs)
    with open(folder / "per_label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        columns = ["label", "ap", "auroc", "threshold", "precision", "recall", "f1", "positives", "images"]
        writer.writerow(columns)
        writer.writerows([fmt(row[c]) for c in columns] for row in rows)
    rated = [r["ap"] for r in rows if r["ap"] is not None]
    heading = f"{title}: mAP {np.mean(rated):.4f} over {len(rated)} labels ({len(truth)} images)" if rated else title
    unrated = [r["label"] for r in rows if r["ap"] is None]
    note = f"\nno positive in the set (AP undefined): {', '.join(unrated[:8])}" if unrated else ""
    ap_chart(rows, "label", [("ap", "AP", 1.0)], heading, folder / "per_label_ap.png", note)
    pr_curves(probabilities, truth, rows, heading, folder / "pr_curves.png")


def per_label_rows(probabilities, truth, classes, cutoffs) -> list[dict]:
    k = len(classes)
    ap = LabelAveragePrecision(num_labels=k, average=None)
    auroc = LabelAUROC(num_labels=k, average=None)
    ap.update(probabilities, truth.long())
    auroc.update(probabilities, truth.long())
    aps, aurocs = ap.compute().tolist(), auroc.compute().tolist()
    decided = probabilities >= cutoffs
    rows = []
    for i, name in enumerate(classes):
        tp = int((decided[:, i] & truth[:, i]).sum())
        fp = int((decided[:, i] & ~truth[:, i]).sum())
        fn = int((~decided[:, i] & truth[:, i]).sum())
        rows.append({"label": name, "ap": none_if_nan(aps[i]), "auroc": none_if_nan(aurocs[i]),
                     "threshold": float(cutoffs[i]), "precision": tp / (tp + fp) if tp + fp else None,
                     "recall": tp / (tp + fn) if tp + fn else None,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
                     "positives": int(truth[:, i].sum()), "images": len(truth)})
    return rows


def none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else value


def fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def pr_curves(probabilities, truth, rows: list[dict], heading: str, path: Path) -> None:
    from matplotlib.figure import Figure  # lazy: reports come at a job's end; no pyplot: no GUI backend

    precision, recall, _ = multilabel_precision_recall_curve(probabilities, truth.long(), num_labels=len(rows))
    rated = [i for i, r in enumerate(rows) if r["ap"] is not None]
    shown = sorted(rated, key=lambda i: rows[i]["ap"])[:CURVES]
    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.subplots()
    for i in shown:
        axes.step(recall[i].numpy(), precision[i].numpy(), where="post", linewidth=1,
                  label=f"{rows[i]['label']} (AP {rows[i]['ap']:.3f})")
        at = rows[i]
        if at["precision"] is not None and at["recall"] is not None:
            axes.plot([at["recall"]], [at["precision"]], "o", color=axes.lines[-1].get_color(), markersize=5)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize="small", loc="lower left")
    note = "" if len(rated) <= CURVES else f" (the {CURVES} lowest of {len(rated)} labels)"
    axes.set_title(f"{heading}\nprecision-recall per label, dots at the decision thresholds{note}")
    figure.savefig(path, dpi=100)
