"""The run's MLflow model: one folder, two flavors.

- `pytorch` (MLflow's): `mlflow.pytorch.load_model(uri)` gives the torch module, which takes inputs already
  through the eval transforms, as before. Saved as the task chooses (`Task.serialization_format`): pt2
  (torch.export: a classifier) or pickle (a torchvision detector, which torch.export cannot trace);
- `python_function` (ours: this module is its loader): takes raw uint8 images (arrays of any size, or
  base64 PNG/JPEG strings in a DataFrame column), applies the run's eval transforms and answers as the run's
  task does: the class name, index and probabilities of each image, or its boxes with class names and scores
  (nf_trainer/tasks/serving.py). `mlflow models serve -m runs:/<id>/model` serves it.

The folder carries the nf_trainer package (its `code/`, which MLflow puts on sys.path before loading), so
loading it needs torch, torchvision and Pillow, not an install of nf_trainer of the same version.

Logging it takes about a second: the job's process serializes the model (`serialize`, torch is loaded there),
and the tracker's child, which never imports torch, writes the folder and logs it; the child checks the declared
requirements against the installed packages while the job is still importing (`prepare_environment`).
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

SERVING_DIR = "serving"  # the python_function flavor's data: serving.json
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # nf_trainer/
DATA_DIR = "data"  # MLflow's pytorch flavor keeps its model here (its `model_data` folder)
FILES = {"pt2": "model.pt2", "pickle": "model.pth"}  # the file names mlflow.pytorch.load_model looks for
CLASSIFICATION = {"_target_": "nf_trainer.tasks.classification.Classification"}  # the task of a model logged before tasks


@dataclass(frozen=True)
class SerializedModel:
    """The model as it crosses to the tracker: the bytes MLflow's pytorch flavor keeps and plain values, no torch object."""
    archive: bytes
    format: str  # pt2 | pickle
    channels: int  # of the images it takes
    torch_version: str  # of the process that serialized it (MLflow's pytorch flavor records it)


def serialization_format(task: dict | None) -> str:
    from hydra.utils import get_class  # lazy: the task's class, in the job's process (torch loaded there)

    return get_class((task or CLASSIFICATION)["_target_"]).serialization_format


def serialize(model, example, task: dict | None = None) -> SerializedModel:
    """`model` in the task's format, in the job's process, where torch and most of torch.export are loaded
    already: in the tracker's child, importing them for MLflow's own export took ~5 s of the run's end. pt2
    traces `example` (a batch of at least 2: the batch size stays free); pickle keeps the module as it is."""
    import torch

    fmt, buffer = serialization_format(task), io.BytesIO()
    if fmt == "pt2":
        with warnings.catch_warnings():  # torch.export's pt2 writer warns about CPU weights, which these are
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            torch.export.save(program, buffer)
    else:
        torch.save(model, buffer)
    # example[0]: one image (C, H, W) of a batch tensor or of a list of images
    return SerializedModel(buffer.getvalue(), fmt, int(example[0].shape[0]), str(torch.__version__))


def requirements() -> list[str]:
    """What serving the model needs (MLflow adds itself), read from the installed packages, not inferred."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "torchvision", "pillow")]


def prepare_environment() -> None:
    """Saves a throwaway model with the real requirements: MLflow checks them against every installed package
    (~2 s, once per process). Done by the tracker's child while the job imports torch, it makes the real save
    at the run's end take milliseconds."""
    from mlflow import pyfunc

    with tempfile.TemporaryDirectory(prefix="nf_model_env_") as tmp:
        pyfunc.save_model(str(Path(tmp) / "model"), loader_module=__name__, pip_requirements=requirements())


def log_model(serialized: SerializedModel, classes: list[str], eval_transforms: list[dict], run_id: str,
              registered_model_name: str | None, pip_requirements: list[str], task: dict | None = None):
    """Log the two-flavor model under the run as `model`; returns MLflow's ModelInfo. `task`: the task's config
    node, which the served model is rebuilt from."""
    from mlflow.models import Model

    return Model.log(artifact_path=None, name="model", flavor=sys.modules[__name__], flavor_name="pytorch", run_id=run_id,
                     registered_model_name=registered_model_name,
                     metadata={"classes": list(classes), "task": dict(task or CLASSIFICATION)},
                     serialized=serialized, eval_transforms=eval_transforms, pip_requirements=pip_requirements)


def save_model(path, mlflow_model, serialized: SerializedModel, eval_transforms: list[dict], pip_requirements: list[str]):
    """What `Model.log` calls: our python_function flavor (its environment files and the package's code, by
    MLflow's pyfunc.save_model), then MLflow's pytorch flavor over the serialized model. That flavor's entry is
    written here (model_data, pytorch_version, code: what mlflow.pytorch.load_model reads) because
    mlflow.pytorch.save_model would import torch in this process to serialize the model again."""
    from mlflow import pyfunc

    pyfunc.save_model(path, loader_module=__name__, code_paths=[str(PACKAGE_DIR)], mlflow_model=mlflow_model,
                      pip_requirements=pip_requirements)
    root = Path(path)
    (root / DATA_DIR).mkdir()
    (root / DATA_DIR / FILES[serialized.format]).write_bytes(serialized.archive)
    if serialized.format == "pickle":  # which pickle module torch.save used, as mlflow.pytorch.load_model reads it
        (root / DATA_DIR / "pickle_module_info.txt").write_text("pickle")
    (root / SERVING_DIR).mkdir()
    (root / SERVING_DIR / "serving.json").write_text(json.dumps({
        "channels": serialized.channels, "classes": mlflow_model.metadata["classes"],
        "task": mlflow_model.metadata["task"], "eval_transforms": eval_transforms}, indent=1))
    code = mlflow_model.flavors[pyfunc.FLAVOR_NAME]["code"]
    mlflow_model.flavors[pyfunc.FLAVOR_NAME]["data"] = SERVING_DIR
    mlflow_model.add_flavor("pytorch", model_data=DATA_DIR, pytorch_version=serialized.torch_version, code=code)
    mlflow_model.model_size_bytes = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    mlflow_model.save(str(root / "MLmodel"))


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
