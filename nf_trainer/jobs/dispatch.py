"""The mode dispatch: `mode=train|eval|predict|export` -> its job. Every job follows the same path for its
MLflow run: it starts the run on the tracker it is handed, ends it FINISHED, FAILED (with the error and its
traceback) or KILLED through `tracking.outcome.tracked_outcome`, and returns its objective (None for predict
and export, which have none). `extra_tags` come from the sweep a job belongs to: its config hash and parent.

The caller (nf_trainer/sweep/job.py) validates the config and opens the tracker before this module loads,
so a bad value fails before torch is imported, and MLflow's imports overlap torch's.
"""
from __future__ import annotations

from omegaconf import DictConfig

from nf_trainer.jobs.evaluate import evaluate
from nf_trainer.jobs.export import export
from nf_trainer.jobs.predict import predict
from nf_trainer.jobs.train import train
from nf_trainer.tracking.interface import Tracker

JOBS = {"train": train, "eval": evaluate, "predict": predict, "export": export}


def run_job(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str], report=None) -> float | None:
    """`report`: a trial's per-epoch objective report (nf_trainer/jobs/train.py:train); training only."""
    if report is not None and cfg.mode == "train":
        return train(cfg, tracker, extra_tags, report)
    return JOBS[cfg.mode](cfg, tracker, extra_tags)
