"""The block a training run ends with: its answer (the best objective and its epoch), the best checkpoint,
its MLflow run, and the command that opens the MLflow UI on the run's page."""
from __future__ import annotations

import math
from pathlib import Path

from nf_trainer.tracking.interface import Best
from nf_trainer.tracking.ui_link import ui_command


def significant(value: float) -> str:
    """4 significant digits: what a run's answer is read at."""
    return f"{value:#.4g}" if math.isfinite(value) else str(value)  # 2.300, not 2.3


def short_number(value: str) -> str:
    """A float as a config value is shown in names and tables (6 significant digits: an Optuna trial's
    2.0349616224981566e-05 reads 2.03496e-05); ints and anything else as given."""
    if "." not in value and "e" not in value.lower():
        return value  # ints and words stay as typed
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def run_summary(status: str, objective_key: str, best: Best, checkpoint: Path, run_id: str | None, run_name: str,
                tracking_uri: str, overrides: list[str]) -> str:
    epoch = f"at epoch {best.epoch}" if best.epoch is not None else "(no finite value)"
    lines = [f"run {status}: {run_name}",
             f"  best {objective_key}: {significant(best.value)} {epoch}",
             f"  best checkpoint: {checkpoint}"]
    if run_id:
        lines += [f"  MLflow run: {run_id} in {tracking_uri}", f"  open it: {ui_command(run_id, overrides)}"]
    return "\n".join(lines)
