"""The one tracker interface. Three trackers implement it:

- `MlflowTracker` (tracking/mlflow_tracker.py): MLflow in this process, through `MlflowClient` and an
  explicit run id (no global active run);
- `ChildProcessTracker` (tracking/child.py): the same calls, forwarded to an `MlflowTracker` in a child
  process, so MLflow's imports and writes never take the training loop's time;
- `NullTracker` (tracking/null.py): for the ranks > 0 of a torchrun job, which log nothing.

`tests/test_tracking.py` checks every implementation against this protocol, method by method.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

OBJECTIVE = "objective"  # the metric every run logs at its end: the best value of `objective.metric`
MAX_KEY = 250  # MLflow rejects longer keys
MAX_VALUE = 6000  # and truncates longer param values


class Best(NamedTuple):
    """A run's objective: the best value of its metric and the epoch (the metric's step) that reached it."""
    value: float
    epoch: int | None


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None
    tracking_uri: str | None

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str],
              resume_run_id: str | None = None) -> str | None:
        """Create the run (or reopen `resume_run_id`); a `mlflow.parentRunId` tag nests it under a sweep."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One epoch's metrics (and the per-step points buffered since the last write)."""

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-step points: buffered, never a write per step."""

    def log_objective(self, key: str, mode: str) -> Best:
        """The best value of metric `key` over the run (`mode` min or max) and its epoch, logged as metric `objective`
        at that step; NaN (and no epoch) if none."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or a folder (text files with secrets scrubbed); a path that does not exist is skipped."""

    def log_text(self, text: str, artifact_file: str) -> None:
        ...

    def log_image(self, image, key: str, step: int) -> None:
        """A uint8 picture (H, W, 3) under `key` at `step`: the run page shows a key's pictures step by step."""

    def log_inputs(self, described: list[dict]) -> None:
        """Dataset inputs, as `tracking.dataset_inputs.describe_inputs` gives them."""

    def log_model(self, model, example, classes: list[str], registered_model_name: str | None = None,
                  eval_transforms: list[dict] | None = None, registered_model_alias: str | None = None,
                  task: dict | None = None) -> str | None:
        """`model` (a CPU torch module in eval mode) as the run's MLflow model, served on raw images through
        `eval_transforms` (config nodes) and answering as `task` (its config node) does; registered (with that alias)
        when a name is given; returns its URI."""

    def set_tags(self, tags: dict[str, str]) -> None:
        ...

    def run_name_of(self, run_id: str | None) -> str | None:
        """The name of another run in the same store, or None when there is none."""

    def end(self, status: str) -> None:
        """Flush what is buffered and set the final status: FINISHED, FAILED or KILLED."""

    def close(self) -> None:
        """Release the tracker (for the child-process tracker: let the child finish its writes and leave)."""


TRACKER_METHODS = tuple(name for name in vars(Tracker) if not name.startswith("_") and callable(vars(Tracker)[name]))
