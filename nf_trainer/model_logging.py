"""The best model as an MLflow model: `mlflow.pytorch.load_model("runs:/<run_id>/model")` gets it back.

Logged once, at the end of training, in MLflow's default `pt2` format (torch.export): it loads as a
`torch.fx.GraphModule` that needs only torch, not nf_trainer or efficientnet-pytorch. The example
input has 2 images (a batch of 1 would freeze the batch size), the signature is inferred from it, and
the class names are in the model's metadata (`mlflow.models.get_model_info(uri).metadata["classes"]`).
"""
from __future__ import annotations

import logging

import torch

from nf_trainer.export import prepare_for_export

log = logging.getLogger("nf_trainer")


def log_model(model: torch.nn.Module, example: torch.Tensor, classes: list[str], tracker,
              registered_model_name: str | None = None):
    import mlflow
    from mlflow.models import infer_signature

    model = prepare_for_export(model.cpu())
    with torch.inference_mode():
        output = model(example)
    # log_model reads the global tracking URI and experiment (the run is given by id): point both at this run's.
    mlflow.set_tracking_uri(tracker.tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.experiment_id)
    info = mlflow.pytorch.log_model(
        model, name="model", run_id=tracker.run_id, serialization_format="pt2",
        input_example=example.numpy(), signature=infer_signature(example.numpy(), output.numpy()),
        metadata={"classes": list(classes)},
        # Listing the one requirement skips MLflow's inference of them, which takes seconds.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        registered_model_name=registered_model_name,
    )
    log.info("logged the model: mlflow.pytorch.load_model('runs:/%s/model') (%s)%s", tracker.run_id, info.model_uri,
             f", registered as '{registered_model_name}' version {info.registered_model_version}" if registered_model_name else "")
    return info
