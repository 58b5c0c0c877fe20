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


def read_state_dict(path: str) -> dict:
    """The weights in a file: a state dict (.pth/.pt, as torch.hub saves them) or an nf_trainer checkpoint (its model)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise NfTrainerError(f"model.pretrained_path='{path}' is not a file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling error: the file is not weights
        raise NfTrainerError(f"model.pretrained_path='{path}' is not a torch weights file ({' '.join(str(exc).split())[:200]})"
                             ) from exc
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NfTrainerError(f"model.pretrained_path='{path}' holds no state dict (a name -> tensor mapping)")
    return state


def load_matching(model: torch.nn.Module, state: dict, what: str) -> list[str]:
    """Copy every tensor of `state` whose name and shape `model` has; the names of the model's tensors that keep
    their fresh values (a class head sized for other classes). None matching at all is an error: wrong weights."""
    own = model.state_dict()
    fitting = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    if not fitting:
        raise NfTrainerError(f"{what}: no tensor fits this model (weights of another architecture?)")
    model.load_state_dict(fitting, strict=False)
    # a BatchNorm's step count is no weight (and FrozenBatchNorm2d weights have none)
    return sorted(key for key in set(own) - set(fitting) if not key.endswith("num_batches_tracked"))
