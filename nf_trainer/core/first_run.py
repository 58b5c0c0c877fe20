"""First-run chores, said in one line of ours instead of the libraries' own lines about them."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("nf_trainer")


@contextmanager
def font_cache_chore() -> Iterator[None]:
    """Around the job's imports: the first import of matplotlib's font manager on a machine (torchmetrics imports
    it) builds matplotlib's font cache, which takes seconds and would be told by matplotlib's logger."""
    import matplotlib  # the job imports it anyway (torchmetrics): only what a job runs comes here

    cache = Path(matplotlib.get_cachedir())
    if "matplotlib.font_manager" in sys.modules or any(cache.glob("fontlist-v*.json")):
        yield
        return
    log.info("first run on this machine: matplotlib builds its font cache in %s (a few seconds, once)", cache)
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        font_log.setLevel(level)
