"""The tracker of the ranks > 0 of a torchrun job: only rank 0 talks to MLflow, the others log nothing."""
from __future__ import annotations

import math
from pathlib import Path

from nf_trainer.tracking.interface import Best


class NullTracker:
    run_id: str | None = None
    tracking_uri: str | None = None

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str],
              resume_run_id: str | None = None) -> str | None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_objective(self, key: str, mode: str) -> Best:
        return Best(math.nan, None)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_image(self, image, key: str, step: int) -> None:
        pass

    def log_inputs(self, described: list[dict]) -> None:
        pass

    def log_model(self, model, example, classes: list[str], registered_model_name: str | None = None,
                  eval_transforms: list[dict] | None = None, registered_model_alias: str | None = None,
                  task: dict | None = None) -> str | None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def run_name_of(self, run_id: str | None) -> str | None:
        return None

    def end(self, status: str) -> None:
        pass

    def close(self) -> None:
        pass
