"""Ctrl-C and SIGTERM (a scheduler pre-empting the job) stop a run cleanly instead of killing it mid-write.

The first signal only raises a flag: the loop finishes its current step, writes `last.pt` and raises
`Interrupted`; the run is then marked KILLED and the process exits 130 (SIGINT) or 143 (SIGTERM), the
shell's codes for those signals. A second Ctrl-C raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("nf_trainer")

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by the loop once the state after the interrupted step is saved."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag the loop checks once per step."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __enter__(self) -> StopRequest:
        # Handlers can only be installed from the main thread (a launcher may run jobs elsewhere).
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait
        self.signum = signum
        log.warning("%s received: finishing the current step, then saving last.pt (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)
