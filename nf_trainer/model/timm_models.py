"""Any model timm knows (`model=timm model.name=convnext_atto`), fitted to the data: timm itself gives it a
classifier for `num_classes` and a stem for `in_chans`, pretrained weights included (their classifier is
dropped, their RGB stem folded to the data's channels)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import timm
from torch import nn

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import closest_names
from nf_trainer.model import finetune


def timm_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
               pretrained_path: str | None = None, freeze_backbone: bool = False, options: dict | None = None) -> nn.Module:
    """`pretrained`: timm's default weights for `name` (`name.tag` picks another set), from the Hugging Face Hub;
    `pretrained_path`: a local weights file instead (implies pretrained). `options`: more `timm.create_model`
    keywords (`drop_rate`, `drop_path_rate`, `img_size` for ViTs, ...)."""
    if not timm.is_model(name):
        close = closest_names(name, timm.list_models())
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NfTrainerError(f"unknown timm model '{name}'{hint} (list them: "
                             f"python -c \"import timm; print(timm.list_models('*{name.split('.')[0][:6]}*'))\")")
    overlay = None
    if pretrained_path is not None:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise NfTrainerError(f"model.pretrained_path='{pretrained_path}' is not a file")
        overlay, pretrained = {"file": str(path)}, True
    with downloading_from_hub(name, pretrained and overlay is None):
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                  pretrained_cfg_overlay=overlay, **dict(options or {}))
    if freeze_backbone:
        finetune.freeze_backbone(model)
    return model


@contextmanager
def downloading_from_hub(name: str, downloads: bool):
    """A failed download of timm weights (no network, a proxy: the hub's errors are OSErrors) becomes one line
    that names the file to fetch elsewhere and `model.pretrained_path`."""
    try:
        yield
    except RuntimeError as exc:
        if downloads and "No pretrained weights exist" in str(exc):
            raise NfTrainerError(f"timm has no pretrained weights for '{name}': set model.pretrained=false, "
                                 "or name a tagged set (timm.list_pretrained())") from None
        raise
    except OSError as exc:
        if not downloads:
            raise
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None)
        where = f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors" if hub_id else getattr(cfg, "url", None)
        reason = " ".join(str(exc).split()).split(". ")[0][:160]  # its first sentence
        raise NfTrainerError(f"cannot download the pretrained weights of timm model '{name}' ({reason}); offline, fetch "
                             f"{where} elsewhere and set model.pretrained_path=/path/to/that/file (or model.pretrained=false)"
                             ) from None
