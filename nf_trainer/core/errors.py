"""User-facing errors.

They subclass Hydra's CompactHydraException so `python main.py ...` prints just the message
(one line that says what to change) and exits non-zero, instead of a traceback.
"""
import difflib
import os
import re
import sys
from contextlib import contextmanager

import yaml
from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

DETAIL = re.compile(r"^\s+(full_key|reference_type|object_type)\b")  # OmegaConf's lines under a message
# `+experiment=NAME` (the form Hydra's docs teach for a group not in the defaults list) on a group that is in it:
# Hydra's own hint ("use 'override experiment: NAME'") is for config files, not the command line
APPENDED_TWICE = re.compile(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'")
# a key the config does not have; Hydra's hint (`+key=value`) is wrong for a typo: it adds a key nothing reads
NO_SUCH_KEY = re.compile(r"Could not override '(\S+)'\.\s+To append to your config use (\+\S+?)\.?(?:\s|$)")


class NfTrainerError(CompactHydraException):
    """A problem with the user's input: config, data, checkpoint or tracking server."""


@contextmanager
def one_line_errors():
    """Print a bad-input error as one line and exit 1 (Hydra would spread a config error over several lines
    and add a hint about HYDRA_FULL_ERROR). Other errors keep their full traceback. With HYDRA_FULL_ERROR=1
    set by the user, everything is raised as Hydra does it."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    sys.excepthook = quiet_interrupt(sys.excepthook)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing: the message is ours to print
    try:
        yield
    except CompactHydraException as exc:
        sys.exit(one_line(exc))
    except yaml.MarkedYAMLError as exc:  # a config file (ours, --config-dir, hydra.searchpath) that does not parse
        sys.exit(yaml_error_line(exc))


def quiet_interrupt(default):
    """An excepthook that ends an uncaught Ctrl-C (a second one, or one while the job still imports and builds)
    in one line instead of a traceback through torch's imports. Python still exits as SIGINT does, and sets
    `sys.last_type` for the sweep's atexit hook, as for any uncaught exception."""
    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted (Ctrl-C)", file=sys.stderr)
        else:
            default(kind, value, tb)
    return hook


def yaml_error_line(exc: yaml.MarkedYAMLError) -> str:
    """'FILE:LINE:COLUMN: config file does not parse: <problem> (<context> at line L, column C)'."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
    context = ""
    if exc.context:
        at = exc.context_mark
        context = f" ({exc.context}" + (f" at line {at.line + 1}, column {at.column + 1})" if at is not None else ")")
    return f"{where}config file does not parse: {exc.problem or 'invalid YAML'}{context}; fix the YAML there"


def unknown_key(full_key: str, append: str, cause: OmegaConfBaseException) -> str:
    """'trainer.max_epoch is not a key of trainer: did you mean trainer.max_epochs?', from the node OmegaConf
    names; on a node that builds an object (`_target_`), `+key=value` passes it a new argument."""
    node_path, _, key = full_key.rpartition(".")
    parent = getattr(cause, "parent_node", None)
    keys = [str(k) for k in parent.keys()] if hasattr(parent, "keys") else []
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    where = f"a key of {node_path}" if node_path else "a config key"
    text = f"{full_key} is not {where}" + (f": did you mean {node_path + '.' if node_path else ''}{close[0]}?" if close else "")
    if "_target_" in keys:
        return f"{text} (to pass {parent['_target_']} an argument it does not list, write {append})"
    return f"{text} (--help lists the keys)"


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf error message in one line: OmegaConf's key details and Hydra's search path dropped,
    indented option lists joined ("Available options in 'optimizer': adam, adamw, ...")."""
    text = str(exc)
    if isinstance(exc.__cause__, OmegaConfBaseException):
        text += "\n" + str(exc.__cause__)
    text = text.split("Config search path:")[0]
    unknown = NO_SUCH_KEY.search(text)
    if unknown and isinstance(exc.__cause__, OmegaConfBaseException):
        return unknown_key(unknown.group(1), unknown.group(2), exc.__cause__)
    twice = APPENDED_TWICE.search(text)
    if twice:
        group, option = twice.groups()
        return f"{group} is in the defaults list already (conf/config.yaml): write {group}={option}, not +{group}={option}"
    parts: list[str] = []
    for line in text.splitlines():
        if not line.strip() or DETAIL.match(line):
            continue
        if line.startswith("\t") and parts:  # an option under "Available options in ...:"
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        else:
            parts.append(line.strip())
    return " ".join(part if part.endswith((".", ":", "?", "!")) else part + "." for part in parts).rstrip(".")
