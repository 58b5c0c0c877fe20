"""Pretrained weights are downloaded into torch's hub cache; offline, that fails in one line saying where the file goes."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from nf_trainer.core.errors import NfTrainerError


@contextmanager
def downloading(what: str, url: str):
    """Turn a failed weight download (no network, proxy, DNS) into one line naming the file to place by hand."""
    try:
        yield
    except OSError as exc:  # urllib's URLError and connection errors are OSErrors
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        raise NfTrainerError(
            f"cannot download the pretrained weights of {what} from {url} ({reason}); "
            f"offline, put that file at {target} or set model.pretrained=false"
        ) from exc
