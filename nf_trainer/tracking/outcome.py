"""How a job ends in MLflow: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED with the reason.

A run is never left RUNNING by anything Python can see: the error becomes the run's `error` tag and
its traceback the artifact `error/traceback.txt`. (A SIGKILL cannot be seen: that run stays RUNNING
until it is resumed.)
"""
from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from pathlib import Path

from nf_trainer.tracking.interface import Tracker
from nf_trainer.trainer.signals import Interrupted

log = logging.getLogger("nf_trainer")

MAX_TAG = 5000


@contextmanager
def tracked_outcome(tracker: Tracker, out_dir: Path):
    """Run the job's body; end the MLflow run with the status its outcome deserves."""
    try:
        yield
    # The reason is logged before the run ends: a Ctrl-C while MLflow ends it must not hide it.
    except Interrupted as stop:  # the loop saved last.pt after the signal: exit as the signal would
        if (Path(out_dir) / "last.pt").exists():
            log.warning("stopped by %s; continue with resume=%s", stop, out_dir)
        else:
            log.warning("stopped by %s before a step of this run finished: nothing new was saved", stop)
        end_run(tracker, "KILLED")
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        kept = (Path(out_dir) / "last.pt").exists()
        log.warning("stopped by Ctrl-C, the run KILLED; %s", f"continue from the last checkpoint with resume={out_dir}"
                    if kept else "no checkpoint of it was saved")
        end_run(tracker, "KILLED")
        raise
    except BaseException as exc:
        record_failure(tracker, exc)
        end_run(tracker, "FAILED")
        raise
    tracker.end("FINISHED")


def record_failure(tracker: Tracker, exc: BaseException) -> None:
    """The error as tags (`error`, `error.type`), the traceback as `error/traceback.txt`; never masks `exc`."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    try:
        tracker.set_tags({"error": message[:MAX_TAG], "error.type": type(exc).__name__})
        tracker.log_text("".join(traceback.format_exception(exc)), "error/traceback.txt")
    except Exception as log_error:  # the tracking store itself may be what failed
        log.warning("could not record the error in MLflow: %s", log_error)


def end_run(tracker: Tracker, status: str) -> bool:
    """End the run with `status`; a store that fails here only warns (the real error stays the visible one)."""
    try:
        tracker.end(status)
        return True
    except Exception as end_error:
        log.warning("could not set the MLflow run to %s: %s", status, end_error)
        return False
