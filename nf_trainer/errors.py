"""User-facing errors.

They subclass Hydra's CompactHydraException so `python main.py ...` prints just the message
(one line that says what to change) and exits non-zero, instead of a traceback.
"""
from hydra.errors import CompactHydraException


class NfTrainerError(CompactHydraException):
    """A problem with the user's input: config, data, checkpoint or tracking server."""
