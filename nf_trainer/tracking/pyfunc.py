"""The run's MLflow model: one folder, two flavors.

- `pytorch` (MLflow's, saved as pt2): `mlflow.pytorch.load_model(uri)` gives the torch module, which takes
  float batches already through the eval transforms, as before;
- `python_function` (ours: this module is its loader): takes raw uint8 images (arrays of any size, or
  base64 PNG/JPEG strings in a DataFrame column), applies the run's eval transforms and returns the class
  name, index and probabilities of each (nf_trainer/model/serving.py). `mlflow models serve -m
  runs:/<id>/model` serves it.

The folder carries the nf_trainer package (its `code/`, which MLflow puts on sys.path before loading), so
loading it needs torch, torchvision and Pillow, not an install of nf_trainer of the same version.

Logging it takes about a second: the job's process exports the model (`export_pt2`, torch is loaded there), and
the tracker's child, which never imports torch, writes the folder and logs it; the child checks the declared
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
PT2_FILE = "data/model.pt2"  # where MLflow's pytorch flavor keeps a pt2 model (its `model_data` folder, `data`)


@dataclass(frozen=True)
class Pt2Model:
    """The model as it crosses to the tracker: a torch.export archive and plain values, no torch object."""
    archive: bytes
    channels: int  # of the images it takes
    torch_version: str  # of the process that exported it (MLflow's pytorch flavor records it)


def export_pt2(model, example) -> Pt2Model:
    """torch.export of `model` on `example` (a batch of at least 2: the batch size stays free), in the job's
    process, where torch and most of torch.export are loaded already: in the tracker's child, importing them
    for MLflow's own export took ~5 s of the run's end."""
    import torch

    with warnings.catch_warnings():  # torch.export's pt2 writer warns about CPU weights, which these are
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    return Pt2Model(buffer.getvalue(), int(example.shape[1]), str(torch.__version__))  # a str subclass YAML refuses


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


def log_model(pt2: Pt2Model, classes: list[str], eval_transforms: list[dict], run_id: str,
              registered_model_name: str | None, pip_requirements: list[str]):
    """Log the two-flavor model under the run as `model`; returns MLflow's ModelInfo."""
    from mlflow.models import Model

    return Model.log(artifact_path=None, name="model", flavor=sys.modules[__name__], flavor_name="pytorch", run_id=run_id,
                     registered_model_name=registered_model_name, metadata={"classes": list(classes)},
                     pt2=pt2, eval_transforms=eval_transforms, pip_requirements=pip_requirements)


def save_model(path, mlflow_model, pt2: Pt2Model, eval_transforms: list[dict], pip_requirements: list[str]):
    """What `Model.log` calls: our python_function flavor (its environment files and the package's code, by
    MLflow's pyfunc.save_model), then MLflow's pytorch flavor over the pt2 archive. That flavor's entry is
    written here (model_data, pytorch_version, code: what mlflow.pytorch.load_model reads) because
    mlflow.pytorch.save_model would import torch in this process to export the model again."""
    from mlflow import pyfunc

    pyfunc.save_model(path, loader_module=__name__, code_paths=[str(PACKAGE_DIR)], mlflow_model=mlflow_model,
                      pip_requirements=pip_requirements)
    root = Path(path)
    (root / PT2_FILE).parent.mkdir()
    (root / PT2_FILE).write_bytes(pt2.archive)
    (root / SERVING_DIR).mkdir()
    (root / SERVING_DIR / "serving.json").write_text(json.dumps({
        "channels": pt2.channels, "classes": mlflow_model.metadata["classes"],
        "eval_transforms": eval_transforms}, indent=1))
    code = mlflow_model.flavors[pyfunc.FLAVOR_NAME]["code"]
    mlflow_model.flavors[pyfunc.FLAVOR_NAME]["data"] = SERVING_DIR
    mlflow_model.add_flavor("pytorch", model_data=str(Path(PT2_FILE).parent), pytorch_version=pt2.torch_version, code=code)
    mlflow_model.model_size_bytes = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    mlflow_model.save(str(root / "MLmodel"))


def _load_pyfunc(data_path: str, model_config=None):
    """MLflow's python_function loader: the classifier of raw images over the pytorch flavor's module."""
    import mlflow.pytorch

    from nf_trainer.model.serving import ImageClassifier  # lazy: torch and torchvision, at load time only
    from nf_trainer.transforms import build_pipeline  # lazy: the same

    spec = json.loads((Path(data_path) / "serving.json").read_text())
    model = mlflow.pytorch.load_model(str(Path(data_path).parent))
    return ImageClassifier(model, build_pipeline(spec["eval_transforms"]), spec["channels"], spec["classes"])
