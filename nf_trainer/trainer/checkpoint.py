"""Checkpoints: written atomically, read back with `weights_only=True` (no arbitrary pickles)."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from nf_trainer.core.errors import NfTrainerError

REQUIRED_KEYS = ("model", "optimizer", "epoch", "global_step", "rng")


def save_checkpoint(payload: dict | memoryview, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file. `payload`:
    the checkpoint dict, or its bytes as `serialized` made them."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(payload, memoryview):
                f.write(payload)
            else:
                torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # disk full, file size limit, ...: torch wraps the OSError
        Path(tmp).unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else exc.__context__ if isinstance(exc.__context__, OSError) else exc
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else _first_line(cause)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise NfTrainerError(f"could not write checkpoint '{path}' ({reason}): is the disk full? {kept}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)


class CheckpointWriter:
    """Writes checkpoints on a background thread, so the next epoch trains while the last one is written and
    fsynced (a small model's checkpoint costs a few percent of its epoch; a large one's, seconds). The payload is
    serialized in the caller's thread first: that snapshots it (the next optimizer step changes the weights in
    place), and a pickler on the other thread would hold the GIL against the training loop. One write at a
    time: `save` first waits for the one before. `close()` (at the end of `fit`, also when it raises) returns
    when the last file is on disk, and raises a write's error (disk full) as save_checkpoint would.
    `background=False` writes in the caller's thread: DataLoader workers are forked, and a fork while another
    thread holds a lock (the allocator's, the pickler's) can hang the worker."""

    def __init__(self, background: bool = True):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="nf-checkpoint") if background else None
        self.pending: Future | None = None

    def save(self, payload: dict, path: Path, copies: tuple[Path, ...] = ()) -> None:
        """Write `payload` to `path`, then make each of `copies` a copy of it (copy_checkpoint)."""
        if self.pool is None:
            return _write(payload, Path(path), copies)
        self.wait()
        self.pending = self.pool.submit(_write, serialized(payload), Path(path), copies)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


def _write(payload: dict | memoryview, path: Path, copies: tuple[Path, ...]) -> None:
    save_checkpoint(payload, path)
    for copy in copies:
        copy_checkpoint(path, copy)


def serialized(payload: dict) -> memoryview:
    """The bytes torch.save writes for `payload` (tensors copied to the host as they are now)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getbuffer()


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
    """Load an nf_trainer checkpoint; one-line errors for unsafe, corrupt or foreign files."""
    path = resolve_checkpoint(path)
    try:
        ckpt = _load(path)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():  # the file asks to import and call something: never run it
            blocked = next((line for line in str(exc).splitlines() if "GLOBAL" in line), _first_line(exc))
            raise NfTrainerError(f"refusing to load '{path}': it is not a plain checkpoint and would run code "
                                 f"({blocked.strip()})") from exc
        raise NfTrainerError(_corrupt_message(path, exc)) from exc
    except Exception as exc:  # truncated zip, garbage bytes, empty file, unreadable
        raise NfTrainerError(_corrupt_message(path, exc)) from exc
    missing = [key for key in REQUIRED_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise NfTrainerError(f"'{path}' is not an nf_trainer checkpoint (no {', '.join(missing)}): resume= takes "
                             f"a last.pt or best-*.pt that nf_trainer wrote")
    return ckpt


def last_good_checkpoint(folder: Path, exclude: Path | None = None) -> tuple[Path, dict] | None:
    """The intact checkpoint in `folder` that got furthest (epoch, then step), or None."""
    best = None
    for candidate in sorted(Path(folder).glob("*.pt")):
        if exclude is not None and candidate == exclude:
            continue
        try:
            ckpt = _load(candidate)
        except Exception:
            continue
        if isinstance(ckpt, dict) and all(key in ckpt for key in REQUIRED_KEYS):
            if best is None or (ckpt["epoch"], ckpt["global_step"]) > (best[1]["epoch"], best[1]["global_step"]):
                best = (candidate, ckpt)
    return best


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _corrupt_message(path: Path, exc: BaseException) -> str:
    good = last_good_checkpoint(path.parent, exclude=path)
    if good is None:
        hint = "no intact checkpoint beside it"
    else:
        hint = f"the last good one is '{good[0]}' (epoch {good[1]['epoch']}): resume={good[0]}"
    reason = _first_line(exc) if isinstance(exc, (RuntimeError, OSError)) else "unreadable data"
    return f"checkpoint '{path}' is corrupt or truncated ({reason or type(exc).__name__}); {hint}"


def _first_line(exc: BaseException) -> str:
    """The first sentence of an error message (torch's are paragraphs)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else ""
