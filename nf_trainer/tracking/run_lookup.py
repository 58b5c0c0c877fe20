"""Finding a run by its id or by the start of it: the tables (`python -m nf_trainer.runs`) show 8 characters,
and `rerun=`, `ui --run` and `runs list/compare` take what the user copies from them."""
from __future__ import annotations

from nf_trainer.core.errors import NfTrainerError


def find_run(client, run_id: str, experiment_ids: list[str] | None = None):
    """The run with this id, else the one whose id starts with it (in `experiment_ids`, default all); None when
    no run matches. A start that several runs share raises NfTrainerError."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        pass
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids or not run_id:
        return None
    found = [r for r in client.search_runs(experiment_ids, max_results=50000) if r.info.run_id.startswith(run_id)]
    if len(found) > 1:
        raise NfTrainerError(f"{len(found)} runs have an id starting '{run_id}': give more of the id")
    return found[0] if found else None
