"""`python main.py rerun=<run id> [overrides]`: train again with exactly the config a logged run used.

Every run logs `hydra/overrides.yaml` (its command line) and `hydra/config_resolved.yaml` (the config it
ran with). Before Hydra starts, `expand_rerun` puts the logged overrides in place of `rerun=<id>`, composes
them, and compares the result with the logged config: a value that differs (conf/ changed since) is
pinned with `++key=value` (a key added to conf/ since keeps its default, and is named). The rerun is an ordinary new
run, with the param `rerun=<id>`; on CPU with the same code it reproduces the run's metrics bitwise.

- Overrides given next to rerun= win: `rerun=<id> trainer.max_epochs=50` is "the same, but longer".
- Where things go is not pinned (paths.*, mlflow.tracking_uri, mlflow.artifact_location): a rerun logs
  next to the store it was found in; give `paths.output_root=` or `mlflow.tracking_uri=` to find the run.
- A resumed run is rerun straight through (no `resume=`), which gives the same result.
- Secrets were never logged: pass them again.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from omegaconf import OmegaConf

from nf_trainer.cli.compose import project_config
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.sweep.store import SWEEP_KEY_TAG
from nf_trainer.tracking.local_store import open_client
from nf_trainer.tracking.run_lookup import find_run
from nf_trainer.tracking.secrets import MASK
from nf_trainer.tracking.server import require_store

NOT_PINNED = ("paths", "mlflow.tracking_uri", "mlflow.artifact_location", "rerun", "resume")


def expand_rerun(argv: list[str] = sys.argv) -> None:
    """Rewrite `argv` in place when it holds `rerun=<run id>`; nothing is imported otherwise."""
    run_id = next((a.split("=", 1)[1] for a in reversed(argv[1:]) if a.startswith("rerun=")), None)
    if run_id in (None, "", "null"):
        return
    try:
        argv[1:] = rerun_arguments(run_id, argv[1:])
    except NfTrainerError as exc:
        sys.exit(str(exc))  # one line on stderr, exit status 1, as for errors inside Hydra


def rerun_arguments(run_id: str, args: list[str]) -> list[str]:
    given = [a for a in args if is_override(a) and override_key(a) != "rerun"]
    flags = [a for a in args if not is_override(a)]  # -m, --cfg job, ...: kept as they are
    cfg = project_config(job_overrides(given))  # the store to find the run in
    run, logged_overrides, logged_config = fetch(run_id, str(cfg.mlflow.tracking_uri))
    run_id = run.info.run_id  # in full, where the user gave its start

    replaced = {override_key(o) for o in given}
    overrides, masked = [], []
    for override in logged_overrides:
        key = override_key(override)
        if key in replaced or key in ("rerun", "resume"):
            continue
        (masked if MASK in override.partition("=")[2] else overrides).append(override)
    overrides += given + [f"rerun={run_id}"]
    composed = OmegaConf.to_container(project_config(job_overrides(overrides)), resolve=True)
    pins = pin_differences(leaves(logged_config), leaves(composed), keep=replaced | set(NOT_PINNED))
    print(f"rerun of {run_id} ({run.info.run_name}): python main.py {' '.join(flags + overrides + pins)}", file=sys.stderr)
    if masked:
        print(f"  not logged (secrets), pass them again if the run needs them: {', '.join(map(override_key, masked))}",
              file=sys.stderr)
    return flags + overrides + pins


def fetch(run_id: str, tracking_uri: str):
    """The run, its logged overrides and its logged resolved config."""
    from mlflow.exceptions import MlflowException

    where = "give the store it was logged to with paths.output_root=... or mlflow.tracking_uri=..."
    require_store(tracking_uri, f"rerun={run_id}: there is no MLflow store at {tracking_uri}; {where}")
    client = open_client(tracking_uri)
    run = find_run(client, run_id)  # the 8 characters `python -m nf_trainer.runs` shows are enough
    if run is None:
        raise NfTrainerError(f"rerun={run_id}: no such run in {tracking_uri}; {where}")
    run_id = run.info.run_id
    if SWEEP_KEY_TAG in run.data.tags:
        raise NfTrainerError(f"rerun={run_id} is a sweep's parent run: rerun one of its jobs "
                             f"(python -m nf_trainer.runs list {run_id} shows them)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files: no progress bars
    with tempfile.TemporaryDirectory(prefix="nf_rerun_") as tmp:
        try:
            overrides = client.download_artifacts(run_id, "hydra/overrides.yaml", tmp)
            config = client.download_artifacts(run_id, "hydra/config_resolved.yaml", tmp)
        except (MlflowException, OSError):
            raise NfTrainerError(f"rerun={run_id}: the run has no hydra/overrides.yaml and hydra/config_resolved.yaml "
                                 "artifacts (was it logged by nf_trainer, and did it get past its start?)") from None
        return run, [str(o) for o in OmegaConf.load(overrides)], OmegaConf.to_container(OmegaConf.load(config))


def pin_differences(logged: dict, composed: dict, keep: set[str]) -> list[str]:
    """`++key=value` for each logged value that today's conf/ composes differently (or not at all)."""
    def free(key: str) -> bool:
        return not any(key == k or key.startswith(f"{k}.") for k in keep)

    pins = [f"++{key}={hydra_value(value)}" for key, value in logged.items()
            if free(key) and value != MASK and (key not in composed or not same(value, composed[key]))]
    new = [key for key in composed if key not in logged and free(key) and not any(k.startswith(f"{key}.") for k in logged)]
    if new:  # a key added to conf/ since: its default is used (a schema key cannot be removed)
        print(f"  keys the run did not have (their defaults are used): {', '.join(new)}", file=sys.stderr)
    return pins


def same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # 1 and 1.0 and True differ


def leaves(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1, 'c': [1, 2]}} -> {'a.b': 1, 'a.c': [1, 2]}: dicts are walked, lists are values."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= leaves(value, f"{path}.")
        else:
            out[path] = value
    return out


def hydra_value(value) -> str:
    """A Python value in Hydra's override grammar, typed as it was (strings always quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # every digit kept: 0.1, 1e-05, inf, nan
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def job_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not override_key(o).startswith(("hydra.", "hydra/"))]
