"""The output folders must be writable: checked before Hydra creates the job's folder, so the failure is
one line, not a traceback.

Hydra turns an Exception raised in a callback into a warning and carries on (to a traceback), so a
failed check leaves with SystemExit(message): the message on stderr, exit code 1.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class WritableOutputs(Callback):
    """`paths.output_root` (checkpoints, the MLflow store) and the job's folder must be writable."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(config.paths.output_root, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(config.paths.output_root, config.hydra.sweep.dir)


def check_writable(*folders) -> None:
    """Write a temp file in each folder, or in its nearest existing parent (which Hydra would create it in)."""
    for folder in folders:
        path = Path(str(folder)).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            where = f"'{path}'" if existing == path else f"'{path}' (its parent '{existing}' is not writable)"
            raise SystemExit(f"cannot write to {where}: {exc.strerror or exc}; make it writable or choose another "
                             f"folder with paths.output_root=DIR") from exc
