"""The block a sweep ends with: its status, the best runs as a short table (name, objective, the params that
differ between the runs) and the command that opens the MLflow UI on the sweep's parent run."""
from __future__ import annotations

from nf_trainer.jobs.summary import short_number, significant
from nf_trainer.sweep.store import differing_keys
from nf_trainer.tracking.interface import OBJECTIVE
from nf_trainer.tracking.ui_link import ui_command

TOP = 5  # runs shown; `python -m nf_trainer.runs list` shows them all


def sweep_summary(status: str, name: str, counts: str, parent_run_id: str, scored: list, mode: str, metric: str,
                  overrides: list[str]) -> str:
    """`scored`: the children with an objective (MLflow runs)."""
    lines = [f"sweep {status}: {name} ({counts})"]
    if scored:
        ranked = sorted(scored, key=lambda r: r.data.metrics[OBJECTIVE], reverse=mode == "max")
        differing = differing_keys(scored)
        rows = [{"name": r.info.run_name, f"{OBJECTIVE} ({metric}, {mode})": significant(r.data.metrics[OBJECTIVE]),
                 **{k: short_number(r.data.params.get(k, "")) for k in differing}} for r in ranked[:TOP]]
        lines += [f"  top {len(rows)} of {len(scored)}, best first:"] + [f"    {line}" for line in table(rows).splitlines()]
    lines.append(f"  open it: {ui_command(parent_run_id, overrides)}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Rows of equal keys as a plain text table, columns aligned."""
    import pandas as pd  # lazy: a dependency of mlflow, slow to import

    with pd.option_context("display.max_colwidth", 60, "display.width", 250, "display.max_columns", None):
        return pd.DataFrame(rows).to_string(index=False)
