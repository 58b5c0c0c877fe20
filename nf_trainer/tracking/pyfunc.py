"""The run's MLflow model: one folder, two flavors.

- `pytorch` (MLflow's, saved as pt2): `mlflow.pytorch.load_model(uri)` gives the torch module, which takes
  float batches already through the eval transforms, as before;
- `python_function` (ours: this module is its loader): takes raw uint8 images (arrays of any size, or
  base64 PNG/JPEG strings in a DataFrame column), applies the run's eval transforms and answers as the run's
  task does: the class name, index and probabilities of each image, or its boxes with class names and scores
  (nf_trainer/tasks/serving.py). `mlflow models serve -m runs:/<id>/model` serves it.

The folder carries the nf_trainer package (its `code/`, which MLflow puts on sys.path before loading), so
loading it needs torch, torchvision and Pillow, not an install of nf_trainer of the same version.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

SERVING_DIR = "serving"  # the python_function flavor's data: serving.json
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # nf_trainer/
CLASSIFICATION = {"_target_": "nf_trainer.tasks.classification.Classification"}  # the task of a model logged before tasks


def log_model(model, example, classes: list[str], eval_transforms: list[dict], run_id: str,
              registered_model_name: str | None, pip_requirements: list[str], task: dict | None = None):
    """Log the two-flavor model under the run as `model`; returns MLflow's ModelInfo. `task`: the task's config
    node, which the served model is rebuilt from."""
    from hydra.utils import get_class
    from mlflow.models import Model

    task = task or CLASSIFICATION
    return Model.log(artifact_path=None, name="model", flavor=sys.modules[__name__], flavor_name="pytorch", run_id=run_id,
                     registered_model_name=registered_model_name, metadata={"classes": list(classes), "task": task},
                     pytorch_model=model, example=example, eval_transforms=eval_transforms,
                     pip_requirements=pip_requirements,
                     serialization_format=get_class(task["_target_"]).serialization_format)


def save_model(path, mlflow_model, pytorch_model, example, eval_transforms: list[dict], pip_requirements: list[str],
               serialization_format: str = "pt2"):
    """What `Model.log` calls: MLflow's pytorch flavor, then our python_function flavor in place of its own.
    pt2 (torch.export) traces the model on `example`; pickle (a model that torch.export cannot trace, such as a
    torchvision detector) keeps the module as it is, with no example."""
    import mlflow.pytorch
    import torch
    from mlflow import pyfunc
    from mlflow.models import infer_signature

    traced = {}
    if serialization_format == "pt2":
        with torch.inference_mode():
            output = pytorch_model(example)
        # pt2 (torch.export) needs both; a batch of 2 keeps the batch size free
        traced = {"input_example": example.numpy(), "signature": infer_signature(example.numpy(), output.numpy())}
    with warnings.catch_warnings(), quiet("mlflow.pytorch"):  # pickle is the task's choice: MLflow warns against it
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")  # pt2: CPU weights, as these are
        mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, serialization_format=serialization_format,
                                  pip_requirements=pip_requirements, code_paths=[str(PACKAGE_DIR)], **traced)
    root = Path(path)
    (root / SERVING_DIR).mkdir()
    (root / SERVING_DIR / "serving.json").write_text(json.dumps({
        "channels": int(example[0].shape[0]), "classes": mlflow_model.metadata["classes"],
        "task": mlflow_model.metadata["task"], "eval_transforms": eval_transforms}, indent=1))
    pyfunc.add_to_model(mlflow_model, loader_module=__name__, data=SERVING_DIR, code="code",
                        conda_env="conda.yaml", python_env="python_env.yaml")
    # The saved signature and input example describe the torch module's float batches, not the images the
    # python_function flavor takes: MLflow would hold served requests to them.
    for name in ("input_example.json", "serving_input_example.json"):
        (root / name).unlink(missing_ok=True)
    mlflow_model.signature, mlflow_model.saved_input_example_info = None, None
    mlflow_model.save(str(root / "MLmodel"))


@contextlib.contextmanager
def quiet(logger: str):
    """`logger`'s warnings off for a while."""
    found = logging.getLogger(logger)
    level = found.level
    found.setLevel(logging.ERROR)
    try:
        yield
    finally:
        found.setLevel(level)


def _load_pyfunc(data_path: str, model_config=None):
    """MLflow's python_function loader: the task's answer to raw images over the pytorch flavor's module."""
    import mlflow.pytorch

    from nf_trainer.core.instantiate import create_instance  # lazy: Hydra, at load time only
    from nf_trainer.tasks.serving import ServedModel  # lazy: torch and torchvision, at load time only
    from nf_trainer.transforms import build_pipeline  # lazy: the same

    spec = json.loads((Path(data_path) / "serving.json").read_text())
    model = mlflow.pytorch.load_model(str(Path(data_path).parent))
    task = create_instance(spec.get("task") or CLASSIFICATION, classes=spec["classes"])
    return ServedModel(model, build_pipeline(spec["eval_transforms"]), spec["channels"], task)  # saved in eval mode
