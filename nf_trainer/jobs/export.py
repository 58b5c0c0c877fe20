"""TorchScript and ONNX files of a trained model, for serving without nf_trainer.

After training with `export=[torchscript,onnx]`, or from any checkpoint with
`python main.py mode=export ckpt=PATH` (both formats unless `export=` says otherwise). Files go to
`<output dir>/export/` and to the run's `export/` artifacts: `model.torchscript.pt` (`torch.jit.load`) and
`model.onnx` (the task says its inputs and outputs: `Task.onnx`). ONNX needs the `onnx` and `onnxscript` packages
(`pip install -e ".[onnx]"`); without them it is skipped with a warning.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from nf_trainer.core.config import EXPORT_FORMATS
from nf_trainer.jobs.from_checkpoint import checkpoint_model, checkpoint_task, open_checkpoint, start_checkpoint_run
from nf_trainer.jobs.run_record import output_dir, record_config, record_log
from nf_trainer.model.build import for_export
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.outcome import tracked_outcome

log = logging.getLogger("nf_trainer")

def export_model(task, model: torch.nn.Module, example, formats: list[str], folder: Path) -> Path:
    """Write each format into `folder`; `example` is a CPU batch of at least 2 inputs (the task's TorchScript
    traces or scripts the model, `Task.torchscript`)."""
    model = for_export(model)
    folder.mkdir(parents=True, exist_ok=True)
    if "torchscript" in formats:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, yet still widely served
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(task.torchscript(model, example), folder / "model.torchscript.pt")
        log.info("exported %s", folder / "model.torchscript.pt")
    if "onnx" in formats:
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            log.warning("ONNX export skipped: install %s (pip install -e \".[onnx]\")", " and ".join(missing))
        else:
            for chatty in ("onnxscript", "onnx_ir"):  # their INFO lines would flood the job log
                logging.getLogger(chatty).setLevel(logging.WARNING)
            task.onnx(model, example, folder / "model.onnx")
            log.info("exported %s", folder / "model.onnx")
    return folder


def export(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str]) -> None:
    """`mode=export`: the checkpoint's model, exported to `export` (default: torchscript and onnx), in the job's
    output dir and as the run's `export/` artifacts. Returns no objective."""
    source = open_checkpoint(cfg)
    cfg, out_dir = source.cfg, output_dir()
    task = checkpoint_task(source)
    model = checkpoint_model(source, task, torch.device("cpu"))
    example = task.example_input(source.facts, source.path)

    start_checkpoint_run(source, tracker, out_dir, extra_tags)
    with tracked_outcome(tracker, out_dir):
        record_config(cfg, tracker, out_dir)
        folder = export_model(task, model, example, list(cfg.export) or list(EXPORT_FORMATS), out_dir / "export")
        log.info("exported %s to %s", source.path, folder)
        tracker.log_artifact(folder, "export")
        record_log(tracker, out_dir)
