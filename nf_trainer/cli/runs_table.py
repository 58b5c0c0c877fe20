"""The terminal view of the MLflow store: a sweep's runs as a table, best objective first.

    python -m nf_trainer.runs list                      # the latest sweep's runs (or the latest runs)
    python -m nf_trainer.runs list <sweep run id>       # that sweep's runs
    python -m nf_trainer.runs list --sweeps             # the sweeps, newest first
    python -m nf_trainer.runs compare [<sweep id> | <run id> <run id> ...]   # side by side, with metrics

Only the params that differ between the runs are shown. Overrides pick the store as for main.py:
`python -m nf_trainer.runs list paths.output_root=/data/outputs` or `mlflow.tracking_uri=http://...`.
"""
from __future__ import annotations

import argparse
import math
import sys

from nf_trainer.cli.compose import project_config
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.jobs.summary import short_number
from nf_trainer.sweep.info import objective_mode
from nf_trainer.sweep.store import SWEEP_KEY_TAG, children, differing_keys, latest_sweep, sweeps
from nf_trainer.sweep.summary import table
from nf_trainer.tracking import run_lookup
from nf_trainer.tracking.interface import OBJECTIVE
from nf_trainer.tracking.local_store import open_client
from nf_trainer.tracking.server import require_store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nf_trainer.runs", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["list", "compare"])
    parser.add_argument("args", nargs="*", help="run ids (a sweep's run id: its runs) and config overrides (key=value)")
    parser.add_argument("--sweeps", action="store_true", help="list: the sweeps themselves")
    parser.add_argument("--metrics", default="val/,train/loss,objective",
                        help="compare: comma-separated prefixes of the metrics to show (default: %(default)s)")
    options = parser.parse_intermixed_args(argv)
    try:
        print(render(options))
    except NfTrainerError as exc:
        sys.exit(str(exc))


def render(options) -> str:
    overrides = [a for a in options.args if "=" in a]
    ids = [a for a in options.args if "=" not in a]
    cfg = project_config(overrides)
    experiment, client = open_experiment(cfg)
    if options.sweeps:
        return sweeps_table(client, experiment)

    title, runs, mode = select_runs(client, experiment, ids, objective_mode(cfg))
    if not runs:
        return f"{title}: no runs"
    runs.sort(key=lambda r: sort_key(r.data.metrics.get(OBJECTIVE), mode))
    differing = differing_keys(runs)
    if options.command == "list":
        rows = [{"rank": i, "run": r.info.run_id[:8], "status": r.info.status, OBJECTIVE: fmt(r.data.metrics.get(OBJECTIVE)),
                 **{k: short_number(r.data.params.get(k, "")) for k in differing}, "name": r.info.run_name}
                for i, r in enumerate(runs, 1)]
        return f"{title}  ({OBJECTIVE}: {mode}, best first)\n{table(rows)}"
    prefixes = tuple(p for p in options.metrics.split(",") if p)
    metric_keys = sorted({k for r in runs for k in r.data.metrics if k.startswith(prefixes)})
    rows = [{"": "status", **{r.info.run_id[:8]: r.info.status for r in runs}}]
    rows += [{"": k, **{r.info.run_id[:8]: short_number(r.data.params.get(k, "")) for r in runs}} for k in differing]
    rows += [{"": k, **{r.info.run_id[:8]: fmt(r.data.metrics.get(k)) for r in runs}} for k in metric_keys]
    return f"{title}  (best {OBJECTIVE} on the left; params that differ, then the last value of each metric)\n{table(rows)}"


def open_experiment(cfg):
    """The project's experiment and a client of its store; an error if there is none (nothing is created)."""
    uri, name = str(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment_name)
    require_store(uri, missing_store_message(uri))
    client = open_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise NfTrainerError(f"no experiment '{name}' in {uri} (set mlflow.experiment_name=...)")
    return experiment, client


def select_runs(client, experiment, ids: list[str], default_mode: str):
    """(title, runs, objective mode): a sweep's children, the given runs, or the latest sweep or runs."""
    exp = experiment.experiment_id
    if len(ids) > 1:
        return "runs", [find_run(client, exp, i) for i in ids], default_mode
    if ids:
        parent = find_run(client, exp, ids[0])
    else:
        parent = latest_sweep(client, exp)
        if parent is None:  # no sweep yet: the latest single runs
            return (f"experiment {experiment.name}: latest runs",
                    list(client.search_runs([exp], order_by=["attributes.start_time DESC"], max_results=20)), default_mode)
    info = parent.data.tags
    if SWEEP_KEY_TAG not in info:  # a single run
        return f"run {parent.info.run_id} '{parent.info.run_name}'", [parent], default_mode
    title = (f"sweep {parent.info.run_id} '{parent.info.run_name}' {parent.info.status}, "
             f"objective {info.get('objective.metric', '?')}")
    return title, children(client, exp, parent.info.run_id), info.get("objective.mode", default_mode)


def find_run(client, experiment_id: str, run_id: str):
    """A run of this experiment by its id, or by the first characters of it (the tables show 8)."""
    run = run_lookup.find_run(client, run_id, [experiment_id])
    if run is None:
        raise NfTrainerError(f"no run in this experiment with an id starting '{run_id}': give more of the id")
    return run


def sweeps_table(client, experiment) -> str:
    rows = [{"run": s.info.run_id, "status": s.info.status, "best": fmt(s.data.metrics.get(OBJECTIVE)),
             "objective": s.data.tags.get("objective.metric", ""), "runs": s.data.tags.get("sweep.children", ""),
             "name": s.info.run_name} for s in sweeps(client, experiment.experiment_id)]
    return f"sweeps in experiment {experiment.name}, newest first\n{table(rows)}" if rows else "no sweeps yet"


def sort_key(value, mode: str):
    if value is None or math.isnan(value):
        return (1, 0.0)  # runs without an objective (failed, running) last
    return (0, value if mode == "min" else -value)


def fmt(value) -> str:
    return "" if value is None else f"{value:.6g}"


def missing_store_message(uri: str) -> str:
    return (f"no MLflow store at {uri} yet: train first (python main.py), or point at the store "
            "with paths.output_root=... or mlflow.tracking_uri=...")


if __name__ == "__main__":
    main()
