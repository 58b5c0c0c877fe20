"""`hparams_search=optuna` on Optuna >= 4 (nf_trainer/sweep/search.py, study.py, search_space.py): the space syntax,
which trials count, and real studies in real sqlite storages run by `python main.py` processes: one that resumes
after a SIGKILL, two that share a study, and one whose lagging trial is pruned while a NaN trial fails."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.sweep import study as studies
from nf_trainer.sweep.search_space import parse_space
from tests import postgres
from tests.conftest import MAIN, MLFLOW_ENV, ROOT, client, metric_history, run_main, runs, with_defaults

State = optuna.trial.TrialState
# tiny trials: 3 short epochs of digits
TINY = ("trainer.max_epochs=3", "trainer.limit_train_batches=8", "trainer.limit_eval_batches=2",
        "trainer.early_stopping.enabled=false", "scheduler.warmup_epochs=0", "trainer.progress_bar=false",
        "export=[]", "mlflow.log_checkpoints=none")


def storage(out: Path) -> str:
    return f"sqlite:///{out}/optuna.db"


def only_study(out: Path, url: str | None = None):
    url = url or storage(out)
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


# --- in process ------------------------------------------------------------------------------------------------

def test_the_space_is_hydras_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = parse_space(["optimizer.lr=tag(log, interval(1e-4, 1e-1))", "optimizer.momentum=interval(0.8, 0.99)",
                         "loader.batch_size=range(16, 80, 16)", "optimizer=choice(adam, sgd)", "model.width=8,16",
                         "trainer.max_epochs=3", "trainer.max_epochs=4", "seed=range(0, 1, 0.25)"])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert d["optimizer.momentum"] == FloatDistribution(0.8, 0.99)
    assert d["loader.batch_size"] == IntDistribution(16, 64, step=16)  # Hydra's range leaves out its stop
    assert d["seed"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert d["optimizer"] == CategoricalDistribution(["adam", "sgd"])
    assert d["model.width"] == CategoricalDistribution([8, 16])
    assert space.fixed == {"trainer.max_epochs": "trainer.max_epochs=4"}  # the later entry (the command line) wins
    assert space.overrides({"optimizer": "adam"}) == ["optimizer=adam", "trainer.max_epochs=4"]
    assert parse_space(["a=choice(x, y)", "b=range(1, 4)"]).grid() == {"a": ["x", "y"], "b": [1, 2, 3]}


@pytest.mark.parametrize("name", ["tpe", "cmaes", "random", "grid"])
def test_every_shipped_sampler_draws_seeded_values_inside_the_space(name):
    """conf/hydra/sweeper/sampler/<name>.yaml built as the sweeper builds it (cmaes needs its package): 8 asked
    and told trials, all inside the space, the same values for the same seed; the grid visits each point once."""
    from omegaconf import OmegaConf

    from nf_trainer.sweep.search import built

    cfg = OmegaConf.load(ROOT / "conf" / "hydra" / "sweeper" / "sampler" / f"{name}.yaml")
    grid = name == "grid"
    space = parse_space(["optimizer=choice(adam, sgd)", "optimizer.lr=choice(0.01, 0.1)"] if grid else
                        ["optimizer.lr=tag(log, interval(1e-4, 1e-1))", "optimizer.weight_decay=interval(0.0, 0.1)"])

    def draws() -> list[dict]:
        sampler = built("sampler", cfg, **({"search_space": space.grid()} if grid else {}))
        study = optuna.create_study(sampler=sampler)
        for _ in range(4 if grid else 8):
            trial = study.ask(space.distributions)
            try:
                study.tell(trial, sum(v if isinstance(v, float) else 0.0 for v in trial.params.values()))
            except RuntimeError as exc:  # the grid stops its study after the last point, as the sweeper expects
                assert grid and "Study.stop" in str(exc)
        return [t.params for t in study.trials]

    first = draws()
    assert first == draws()
    for params in first:
        assert all(space.distributions[k]._contains(space.distributions[k].to_internal_repr(v)) for k, v in params.items())
    if grid:
        assert sorted(tuple(sorted(p.items())) for p in first) == sorted(
            (("optimizer", o), ("optimizer.lr", lr)) for o in ("adam", "sgd") for lr in (0.01, 0.1))


@pytest.mark.parametrize("entry, message", [
    ("optimizer.lr=tag(log, interval(1e-4 1e-1))", "the search space does not parse"),
    ("optimizer.lr=interval(0.1, 0.001)", "is not a valid range: `low <= high` must hold"),
    ("optimizer.lr=tag(log, interval(0, 1))", "is not a valid range"),
    ("optimizer.lr=glob(*)", "is not one Optuna can sample: write interval(low, high)"),
])
def test_a_bad_space_entry_fails_in_one_line(entry, message):
    with pytest.raises(NfTrainerError) as caught:
        parse_space([entry])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_interval_is_not_a_grid():
    with pytest.raises(NfTrainerError, match="the grid sampler needs choice"):
        parse_space(["optimizer.lr=interval(0.1, 0.2)"]).grid()


def test_a_sqlite_study_in_a_new_folder_is_created_there(tmp_path):
    url = f"sqlite:///{tmp_path}/new/output_root/optuna.db"  # a paths.output_root that does not exist yet
    optuna.create_study(storage=studies.open_storage(url), study_name="s")
    assert (tmp_path / "new" / "output_root" / "optuna.db").is_file()


def test_interrupted_trials_are_failed_and_do_not_count(tmp_path):
    """A trial whose process on this machine is gone is marked FAIL and leaves room for another; a trial whose
    job failed counts; one running in a live process is left alone."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s")
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = studies.owner().rpartition(":")[0]
    gone, alive, failed, done = (study.ask() for _ in range(4))
    gone.set_user_attr(studies.OWNER, f"{host}:{dead.pid}")
    alive.set_user_attr(studies.OWNER, studies.owner())
    failed.set_user_attr(studies.FAILED, "the objective is nan")
    study.tell(failed, state=State.FAIL)
    study.tell(done, 1.0)
    study.enqueue_trial({"x": 1})  # WAITING: counts once it runs

    assert studies.fail_interrupted(study) == [gone.number]
    states = {t.number: t.state for t in study.trials}
    assert states[gone.number] == State.FAIL and states[alive.number] == State.RUNNING
    assert [t.number for t in studies.counted(study.trials)] == [alive.number, failed.number, done.number]


# --- real studies in processes ---------------------------------------------------------------------------------

def sweep_command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(MAIN), *with_defaults(["hparams_search=optuna", *TINY, *overrides], out)]


def environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV} | {"PYTHONUNBUFFERED": "1"}


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def trials_in(out: Path, *states, url: str | None = None) -> list:
    """The study's trials in those states; none until the sweep has made the study and its MLflow run (opening
    the storage while the sweep creates its tables would race it)."""
    if not list(out.glob("multirun/*/*/mlflow_sweep.json")):
        return []
    return [t for t in only_study(out, url).trials if t.state in states]


def param_sets(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.slow
def test_a_killed_study_resumes_to_its_total_without_repeating_a_trial(out):
    """SIGKILL a 6-trial study after 2 trials; the same command runs the rest: 6 finished or pruned trials, the
    interrupted one FAIL (kept, not counted), no parameter set twice (a seeded sampler made anew would repeat)."""
    gate = out.parent / "hold-2"  # trial 2 holds its first step until the kill (tests/bad_parts.py): no race with the trials
    gate.touch()
    cmd = sweep_command(out, "hydra.sweeper.n_trials=6", "optimizer=adam", "trainer.max_epochs=2",
                        "model._target_=tests.bad_parts.FaultyCNN", f"+model.hold_while={out.parent}/hold-${{hydra:job.num}}")
    log = out.parent / "first.log"
    with open(log, "w") as handle:
        first = subprocess.Popen(cmd, cwd=MAIN.parent, stdout=handle, stderr=subprocess.STDOUT, env=environment(),
                                 start_new_session=True)
        wait_for(lambda: Path(f"{gate}.reached").exists(), first, log)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    gate.unlink()
    before = only_study(out).trials
    assert len([t for t in before if t.state in (State.COMPLETE, State.PRUNED)]) == 2
    assert [t.number for t in before if t.state == State.RUNNING] == [2]

    second = subprocess.run(cmd, cwd=MAIN.parent, capture_output=True, text=True, env=environment(), timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    study = only_study(out)
    done = [t for t in study.trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(done) == 6 and not [t for t in study.trials if t.state == State.RUNNING]
    assert len(set(param_sets(study.trials))) == len(study.trials)  # no values drawn twice, the interrupted included
    interrupted = [t for t in study.trials if t.state == State.FAIL]
    assert all(studies.FAILED not in t.user_attrs for t in interrupted)  # interrupted, not failed: not counted
    assert {t.number for t in before if t.state in (State.COMPLETE, State.PRUNED)} <= {t.number for t in done}

    parents = [r for r in runs(out) if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs(out) if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one parent per study, continued
    by_trial = {}
    for child in children:
        by_trial.setdefault(int(child.data.tags["optuna.trial"]), []).append(child)
    for trial in done:
        (run,) = [r for r in by_trial[trial.number] if r.info.status == "FINISHED"]
        assert run.data.tags["optuna.state"] == trial.state.name
    (killed,) = [r for r in children if r.info.status != "FINISHED"]  # trial 2's run, which the kill caught
    assert killed.info.status == "KILLED" and killed.data.tags["nf.interrupted"] == "true"  # not a failure of the study


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_storage(request, out):
    """The study's storage URL: sqlite in the output root, or a team's PostgreSQL server on loopback."""
    if request.param == "sqlite":
        yield storage(out)
        return
    with postgres.database("optuna") as url:
        if url is None:
            pytest.skip("PostgreSQL is not installed here (.ci/run installs Debian's postgresql)")
        yield url.replace("postgresql://", "postgresql+psycopg://")


@pytest.mark.slow
def test_two_processes_share_one_study(out, shared_storage):
    """Two sweeps of the same command on one study (sqlite, PostgreSQL): 4 trials between them, each number once,
    values never drawn twice, both processes at work, one MLflow parent."""
    cmd = sweep_command(out, "hydra.sweeper.n_trials=4", "optimizer=adam", "hydra/sweeper/pruner=none", "trainer.max_epochs=2",
                        f"hydra.sweeper.storage={shared_storage}")
    logs = [out.parent / "a.log", out.parent / "b.log"]
    with open(logs[0], "w") as a_log, open(logs[1], "w") as b_log:
        a = subprocess.Popen(cmd, cwd=MAIN.parent, stdout=a_log, stderr=subprocess.STDOUT, env=environment())
        # the second worker joins once the first made the study and the sweep's run (as a colleague would)
        wait_for(lambda: len(trials_in(out, State.RUNNING, State.COMPLETE, url=shared_storage)) >= 1, a, logs[0])
        b = subprocess.Popen(cmd, cwd=MAIN.parent, stdout=b_log, stderr=subprocess.STDOUT, env=environment())
        assert a.wait(timeout=600) == 0, logs[0].read_text()[-3000:]
        assert b.wait(timeout=600) == 0, logs[1].read_text()[-3000:]
    study = only_study(out, shared_storage)
    complete = [t for t in study.trials if t.state == State.COMPLETE]
    assert len(complete) == 4 and len({t.number for t in complete}) == 4
    assert len(set(param_sets(complete))) == 4
    assert len({t.user_attrs[studies.OWNER] for t in complete}) == 2  # both processes ran trials
    found = runs(out)
    assert len([r for r in found if "mlflow.parentRunId" not in r.data.tags]) == 1
    assert sorted(int(r.data.tags["optuna.trial"]) for r in found if "optuna.trial" in r.data.tags) == sorted(
        t.number for t in complete)


@pytest.mark.slow
def test_a_lagging_trial_is_pruned_and_a_nan_trial_does_not_stop_the_study(out):
    """Trials put in the study first (study.enqueue_trial): two good learning rates, a diverging one (NaN loss),
    then one too small to learn: its loss lags the median of the first two, and it is pruned after its first epoch."""
    name = "lag"
    study = optuna.create_study(storage=storage(out), study_name=name, direction="minimize")
    for lr in (3e-3, 2e-3, 1e30, 1e-8):
        study.enqueue_trial({"optimizer.lr": lr})
    result = run_main("hparams_search=optuna", *TINY, f"hydra.sweeper.storage={storage(out)}",
                      f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=4", "optimizer=adam",
                      "optimizer.weight_decay=0", "objective.metric=loss", "objective.mode=min",
                      "optimizer.lr=tag(log, interval(1e-9, 1e31))",  # the command line's space wins over the preset's
                      "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0", out=out)
    trials = optuna.load_study(study_name=name, storage=storage(out)).trials
    assert [t.state for t in trials] == [State.COMPLETE, State.COMPLETE, State.FAIL, State.PRUNED]
    nan, lagging = trials[2], trials[3]
    assert studies.FAILED in nan.user_attrs  # a failed trial: counted, and the study went on past it
    assert lagging.user_attrs[studies.PRUNED_AT] == 1 and list(lagging.intermediate_values) == [1]
    assert all(list(t.intermediate_values) == [1, 2, 3] for t in trials[:2])  # a report every epoch

    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs(out) if "optuna.trial" in r.data.tags}
    pruned = by_trial[lagging.number]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["optuna.state"] == "PRUNED"
    assert len(metric_history(out, pruned.info.run_id, "val/digits/loss")) == 1  # it stopped after epoch 1
    assert (Path(pruned.data.tags["output_dir"]) / "last.pt").is_file()  # and kept its checkpoints
    assert by_trial[nan.number].info.status == "FAILED" and by_trial[nan.number].data.tags["optuna.state"] == "FAIL"
    assert by_trial[0].data.tags["optuna.state"] == "COMPLETE"

    (parent,) = [r for r in runs(out) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["optuna.trials"] == "2 complete, 1 fail, 1 pruned"
    assert parent.data.tags["best.run_id"] in {by_trial[n].info.run_id for n in (0, 1)}  # not the pruned one
    assert sorted(a.path for a in client(out).list_artifacts(parent.info.run_id, "optuna")) == [
        "optuna/optimization_history.png", "optuna/param_importances.png"]
    assert "trial 3 pruned after epoch 1" in result.stdout + result.stderr


# --- the dashboard ---------------------------------------------------------------------------------------------

def test_the_dashboard_wants_a_study(tmp_path):
    from nf_trainer.cli.ui import main

    with pytest.raises(SystemExit) as exited:
        main(["optuna", f"paths.output_root={tmp_path}"])
    assert exited.value.code == (f"no Optuna study at sqlite:///{tmp_path}/optuna.db yet: run `python main.py "
                                 "hparams_search=optuna` (with the same paths.output_root), or give --storage")


@pytest.mark.slow
def test_the_dashboard_serves_the_study_on_loopback(tmp_path):
    import json
    import socket
    import urllib.request

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="seen")
    study.tell(study.ask(), 1.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "nf_trainer.ui", "optuna", "--port", str(port),
                               f"paths.output_root={tmp_path}"], cwd=MAIN.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=environment())
    try:
        assert server.stdout.readline().startswith(f"optuna-dashboard for sqlite:///{tmp_path}/optuna.db")
        assert server.stdout.readline().strip() == f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    names = [s["study_name"] for s in json.load(answer)["study_summaries"]]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline
                time.sleep(0.5)
        assert names == ["seen"]
    finally:
        server.terminate()
        server.wait(timeout=30)
