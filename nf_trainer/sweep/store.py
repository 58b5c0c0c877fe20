"""The sweep's runs in the MLflow store: a sweep's parent run, found by its key, and its children."""
from __future__ import annotations

PARENT_TAG = "mlflow.parentRunId"  # what MLflow (and its UI) nests runs by
CONFIG_HASH_TAG = "nf.config_hash"  # a job's resolved config: equal hashes, equal runs (for the same code)
SWEEP_KEY_TAG = "nf.sweep_key"  # a sweep's parent: its config name, overrides, search space and code


def children(client, experiment_id: str, parent_run_id: str) -> list:
    """All runs nested under `parent_run_id`, oldest first (every page)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def finished_child(client, experiment_id: str, parent_run_id: str, digest: str):
    """The latest child of the parent that FINISHED with this config hash, or None."""
    found = client.search_runs(
        [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{CONFIG_HASH_TAG}` = '{digest}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def latest_sweep(client, experiment_id: str, key: str | None = None):
    """The newest sweep parent run (with that sweep key, when given), or None."""
    condition = f"tags.`{SWEEP_KEY_TAG}` = '{key}'" if key else f"tags.`{SWEEP_KEY_TAG}` != ''"
    found = client.search_runs([experiment_id], condition, order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def sweeps(client, experiment_id: str, max_results: int = 100) -> list:
    """The sweep parent runs, newest first."""
    return list(client.search_runs([experiment_id], f"tags.`{SWEEP_KEY_TAG}` != ''",
                                   order_by=["attributes.start_time DESC"], max_results=max_results))


def differing_keys(runs: list) -> list[str]:
    """The param keys whose values are not the same across `runs`, sorted."""
    keys = sorted({k for r in runs for k in r.data.params})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
