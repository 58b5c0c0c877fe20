"""The per-class AP bar chart that detection and multi-label reports share: one bar per rated class (the lowest
and the highest when there are many), its value written on it, an undefined class left out, not drawn as 0."""
from __future__ import annotations

from pathlib import Path

BARS = 40  # classes in the chart: all up to this many, else the lowest and the highest


def ap_chart(rows: list[dict], name: str, series: list[tuple[str, str, float]], heading: str, path: Path,
             note: str = "") -> None:
    """`series`: (row key, legend label, alpha), drawn in order; the last one sorts the bars and is labelled."""
    from matplotlib.figure import Figure  # lazy: reports come at a job's end; no pyplot: no GUI backend

    key = series[-1][0]
    rated = sorted((r for r in rows if r[key] is not None), key=lambda r: r[key])
    many = "" if len(rated) <= BARS else f"\nlowest and highest {BARS // 2} of {len(rated)}"
    if len(rated) > BARS:
        rated = rated[: BARS // 2] + rated[-BARS // 2:]
    figure = Figure(figsize=(8, 1.5 + 0.3 * max(len(rated), 1)), layout="constrained")
    axes = figure.subplots()
    names = [r[name] for r in rated]
    for column, label, alpha in series:
        bars = axes.barh(names, [r[column] or 0 for r in rated], color="tab:blue", alpha=alpha, label=label)
    axes.bar_label(bars, fmt="%.3f", padding=3, fontsize="small")
    axes.set_xlim(0, 1.1)
    axes.legend(loc="lower right")
    axes.set_title(heading + many + note)
    figure.savefig(path, dpi=100)
