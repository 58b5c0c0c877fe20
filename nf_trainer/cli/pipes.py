"""Output piped into a reader that closes early (`| head`, `| less`, `| grep -m1`) ends quietly.

Python raises BrokenPipeError at the first write after the reader is gone: a traceback for `--help | head`,
and a '--- Logging error ---' block for every later log line of a job. Here the console streams are wrapped
so that a closed pipe sends the rest of the output to /dev/null instead: the command ends as it would have
(a job trains on and its log file, main.log, keeps every line), quietly.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager


class QuietWhenClosed:
    """A text stream that writes on to /dev/null once its reader has closed the pipe."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # what is still buffered, and every later write, goes there
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def quiet_closed_pipes():
    """Around a command: stdout and stderr end quietly on a closed pipe (and are put back afterwards)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = QuietWhenClosed(sys.stdout), QuietWhenClosed(sys.stderr)
    try:
        yield
    finally:
        sys.stdout.flush()  # the interpreter's own last flush would raise where this one is quiet
        sys.stdout, sys.stderr = saved
