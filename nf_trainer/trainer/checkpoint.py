"""Checkpoints: written atomically, read back with `weights_only=True` (no arbitrary pickles)."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from nf_trainer.errors import NfTrainerError


def save_checkpoint(payload: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Make `dst` a copy of the checkpoint `src`, atomically: a hard link where the filesystem has them (no
    bytes written; `src` is only ever replaced by rename, so `dst` keeps its content), else a real copy."""
    tmp = Path(dst).with_name(f".{Path(dst).name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run's output dir (its last.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise NfTrainerError(f"no checkpoint at '{path}': give resume= a .pt file or a run's output dir")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = resolve_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise NfTrainerError(f"refusing to load '{path}': not a plain nf_trainer checkpoint ({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        others = sorted(p.name for p in path.parent.glob("*.pt") if p != path)
        hint = f"; other checkpoints there: {', '.join(others)}" if others else ""
        raise NfTrainerError(f"checkpoint '{path}' is corrupt or truncated ({str(exc).splitlines()[0]}){hint}") from exc
