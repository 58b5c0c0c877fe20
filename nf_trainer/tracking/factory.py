"""The tracker a job logs through: on rank 0 an MLflow tracker, in a child process or in this one
(`mlflow.tracker`); on the other ranks of a torchrun job the no-op one."""
from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from nf_trainer.tracking.child import ChildProcessTracker
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.mlflow_tracker import MlflowTracker
from nf_trainer.tracking.null import NullTracker


def open_tracker(mlflow_cfg: DictConfig) -> Tracker:
    """Called first thing in a job, before torch.distributed is up (the rank comes from the environment of a
    torchrun or multi-task SLURM job), so a child's MLflow imports and store open overlap the job's own start."""
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) != "0":
        return NullTracker()
    where = mlflow_cfg.tracker
    if where == "auto":  # a child's start costs ~4 s of CPU (MLflow, SQLAlchemy): moot where they are loaded
        where = "inline" if "mlflow" in sys.modules else "process"
    settings = (mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, mlflow_cfg.artifact_location,
                mlflow_cfg.system_metrics)
    if where == "inline":
        return MlflowTracker(*settings)
    return ChildProcessTracker(*settings, prepare_model=bool(mlflow_cfg.log_model))
