"""`hydra.verbose`: DEBUG lines for what it names.

Hydra's `hydra.verbose=true` sets the root logger to DEBUG, so every library's DEBUG chatter reaches the
console and the job log (matplotlib.font_manager alone writes ~150 lines per run) and buries the job's own.
Here `true` means nf_trainer's DEBUG lines; a library's come when named, as Hydra documents it:
`hydra.verbose=[nf_trainer,matplotlib]` (Hydra sets the named loggers, which this leaves alone).
"""
from __future__ import annotations

import logging


def debug_only_ours(verbose) -> None:
    """Called when the job starts, after Hydra configured logging with `verbose` (hydra.verbose)."""
    if verbose is True:
        logging.getLogger().setLevel(logging.INFO)  # job_logging's level for the root logger
        logging.getLogger("nf_trainer").setLevel(logging.DEBUG)
