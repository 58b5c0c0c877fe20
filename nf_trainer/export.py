"""TorchScript and ONNX files of a trained model, for serving without nf_trainer.

After training with `export=[torchscript,onnx]`, or from any checkpoint with
`python main.py mode=export ckpt=PATH` (both formats unless `export=` says otherwise). Files go to
`<output dir>/export/`: `model.torchscript.pt` (`torch.jit.load`) and `model.onnx` (input `images`,
output `logits`, dynamic batch size). ONNX needs the `onnx` and `onnxscript` packages
(`pip install -e ".[onnx]"`); without them it is skipped with a warning.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from nf_trainer.errors import NfTrainerError

log = logging.getLogger("nf_trainer")

ONNX_SINGLE_FILE_LIMIT = 1_500_000_000  # bytes of weights; above that ONNX keeps them in a side file (2 GB protobuf cap)


def prepare_for_export(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, and efficientnet-pytorch's plain Swish: its memory-efficient one cannot be traced or exported."""
    if hasattr(model, "set_swish"):
        model.set_swish(memory_efficient=False)
    return model.eval()


def export_model(model: torch.nn.Module, example: torch.Tensor, formats: list[str], folder: Path) -> Path:
    """Write each format into `folder`; `example` is a CPU batch of at least 2 inputs."""
    model = prepare_for_export(model.cpu())
    folder.mkdir(parents=True, exist_ok=True)
    if "torchscript" in formats:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, yet still widely served
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.trace(model, example), folder / "model.torchscript.pt")
        log.info("exported %s", folder / "model.torchscript.pt")
    if "onnx" in formats:
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            log.warning("ONNX export skipped: install %s (pip install -e \".[onnx]\")", " and ".join(missing))
        else:
            for chatty in ("onnxscript", "onnx_ir"):  # their INFO lines would flood the job log
                logging.getLogger(chatty).setLevel(logging.WARNING)
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            torch.onnx.export(model, (example,), folder / "model.onnx", input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=size > ONNX_SINGLE_FILE_LIMIT,
                              verbose=False)
            log.info("exported %s", folder / "model.onnx")
    return folder


def export_checkpoint(cfg: DictConfig) -> None:
    """`mode=export`: the checkpoint's model, exported to `export` (default: torchscript and onnx)."""
    from hydra.core.hydra_config import HydraConfig

    from nf_trainer.inference import build_model, data_facts, load_for_inference

    ckpt, path, cfg = load_for_inference(cfg)
    facts = data_facts(ckpt)
    if not facts.image_size:
        raise NfTrainerError(f"checkpoint '{path}' records no image size to build an example input from")
    model = build_model(cfg, facts, ckpt, path, torch.device("cpu"))
    example = torch.rand(2, facts.in_channels, facts.image_size, facts.image_size)
    folder = Path(HydraConfig.get().runtime.output_dir) / "export"
    export_model(model, example, list(cfg.export) or ["torchscript", "onnx"], folder)
    log.info("exported %s to %s", path, folder)
