"""`hparams_search=optuna`: an Optuna study run by ask-and-tell through any Hydra launcher.

Each round asks the study for up to `n_jobs` trials, hands their overrides to the launcher, and tells the study
what each job returned: COMPLETE with its objective, PRUNED when its pruner stopped it (the job reported after
every epoch, nf_trainer/sweep/study.py:TrialReport), FAIL when it failed or returned NaN. It stops when the study
holds `n_trials` trials that count (nf_trainer/sweep/study.py), whoever ran them: re-running the command
continues the study, and several processes pointed at one storage share it.

With a sampler seed, trial N's values are drawn with seed + N: a re-run or a second process never draws the
values of a trial already in the study again (a seeded sampler made anew would start from its first draw).
"""
from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.sweep import study as studies
from nf_trainer.sweep.info import objective_mode, read_sweep, sweep_key, task_overrides
from nf_trainer.sweep.search_space import Space, parse_space
from nf_trainer.sweep.store import children
from nf_trainer.tracking.local_store import open_client

log = logging.getLogger("nf_trainer")


@dataclass
class Plan:
    """A study as the config describes it; built (and so checked) before the sweep's MLflow run exists."""
    config: DictConfig
    space: Space
    storage: str
    name: str
    mode: str  # the objective's: min | max
    n_trials: int

    @classmethod
    def of(cls, config: DictConfig, arguments: list[str] | None = None) -> Plan:
        sweeper = config.hydra.sweeper
        entries = [f"{k}={v}" for k, v in (sweeper.params or {}).items()]
        space = parse_space(entries + list(task_overrides(config) if arguments is None else arguments))
        if not space.distributions:
            raise NfTrainerError("the search space is empty: give hydra.sweeper.params (conf/hparams_search/optuna.yaml) "
                                 "or a sweep on the command line, e.g. 'optimizer.lr=tag(log, interval(1e-4, 1e-1))'")
        storage = str(sweeper.storage or f"sqlite:///{Path(str(config.paths.output_root)).resolve()}/optuna.db")
        # the code is left out of the name: workers on other machines (another checkout, a local diff) and a rerun
        # after a fix join the same study; each trial's MLflow run records its own commit
        name = str(sweeper.study_name or f"nf_trainer-{sweep_key(config, git={})}")
        n_trials = int(sweeper.n_trials)
        if n_trials < 1 or int(sweeper.n_jobs) < 1:
            raise NfTrainerError(f"hydra.sweeper.n_trials={n_trials} and n_jobs={sweeper.n_jobs} must be >= 1")
        plan = cls(config, space, storage, name, objective_mode(config), n_trials)
        if plan.is_grid():
            size = math.prod(len(v) for v in space.grid().values())
            plan.n_trials = min(n_trials, size)
        plan.sampler_for(0), plan.pruner()  # a typo in their arguments fails here, in one line
        return plan

    def is_grid(self) -> bool:
        return str(self.config.hydra.sweeper.sampler.get("_target_", "")).endswith("GridSampler")

    def sampler_for(self, number: int):
        """The sampler that draws trial `number`'s values (seed + number when seeded)."""
        cfg = self.config.hydra.sweeper.sampler
        extra = {"search_space": self.space.grid()} if self.is_grid() else {}
        if cfg.get("seed") is not None:
            extra["seed"] = int(cfg.seed) + number
        return built("sampler", cfg, **extra)

    def pruner(self):
        cfg = self.config.hydra.sweeper.pruner
        return built("pruner", cfg) if cfg is not None else None

    def load(self, heartbeat: bool = False):
        return studies.load(self.storage, self.name, self.config, self.mode, self.sampler_for(0), self.pruner(), heartbeat)


def built(what: str, cfg: DictConfig, **kwargs):
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        raise NfTrainerError(f"hydra.sweeper.{what}: {' '.join(str(exc).split())[:300]}") from None


def prepare(config: DictConfig) -> tuple[Plan, set[int]]:
    """In the launching process, before the MLflow run: the plan checked, the study created or continued, its
    interrupted trials marked FAIL; the trial numbers other processes are running now."""
    plan = Plan.of(config)
    with read_write(config.hydra.sweeper), open_dict(config.hydra.sweeper):
        config.hydra.sweeper.study_name = plan.name  # the sweeper's, too: the code (and so the key) may change meanwhile
    study = plan.load(heartbeat=True)  # with heartbeats on, stale trials of other machines are found too
    studies.fail_interrupted(study)
    done = len(studies.counted(study.get_trials(deepcopy=False)))
    log.info("Optuna study '%s' in %s: %d of %d trials done or running%s", plan.name, studies.safe_url(plan.storage),
             done, plan.n_trials, "" if done < plan.n_trials else ": nothing to run (raise hydra.sweeper.n_trials for more)")
    return plan, studies.running_numbers(study)


def run_study(config: DictConfig, launcher, arguments: list[str]) -> None:
    """The sweep itself (what the Hydra sweeper's `sweep` does)."""
    import optuna  # lazy: see nf_trainer/sweep/study.py

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "Trial N finished" lines repeat ours
    plan = Plan.of(config, arguments)
    study = plan.load(heartbeat=True)
    studies.fail_interrupted(study)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweeper, job_idx = config.hydra.sweeper, 0
    while True:
        trials = ask(study, plan, int(sweeper.n_jobs))
        if not trials:
            break
        studies.write_trials(sweep_dir, plan.storage, plan.name, sweeper.pruner, {job_idx + i: t for i, t in enumerate(trials)})
        overrides = [tuple(plan.space.overrides(t.params)) for t in trials]
        with studies.heartbeat(study._storage, [t._trial_id for t in trials], sweeper.heartbeat_interval):
            try:
                returns = launcher.launch(overrides, initial_job_idx=job_idx)
            except BaseException:  # Ctrl-C, SIGTERM, a launcher error: these trials were interrupted, not failed
                for trial in trials:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                raise
        job_idx += len(returns)
        states = {trial.number: tell(study, trial, ret, plan.mode) for trial, ret in zip(trials, returns)}
        tag_children(sweep_dir, states)
    write_results(study, sweep_dir)


def ask(study, plan: Plan, n_jobs: int) -> list:
    """Up to n_jobs new trials with their values drawn; none once the study holds n_trials that count."""
    import optuna  # lazy: see nf_trainer/sweep/study.py

    trials = []
    for _ in range(n_jobs):
        existing = study.get_trials(deepcopy=False)
        if len(studies.counted(existing)) >= plan.n_trials:
            break
        study.sampler = plan.sampler_for(len(existing))
        with warnings.catch_warnings():  # Optuna expects heartbeats from study.optimize only; ours beat in heartbeat()
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask()
        ahead = [t for t in studies.counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
        if len(ahead) >= plan.n_trials:  # another process asked in the meantime and took the last one
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # without nf.failed: it does not count
            break
        study.sampler = plan.sampler_for(trial.number)  # another process may have asked for `len(existing)` too
        trial.set_user_attr(studies.OWNER, studies.owner())
        for name, distribution in plan.space.distributions.items():
            suggest(trial, name, distribution)
        trials.append(trial)
    return trials


def suggest(trial, name: str, distribution) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution  # lazy: see nf_trainer/sweep/study.py

    if isinstance(distribution, CategoricalDistribution):
        trial.suggest_categorical(name, distribution.choices)
    elif isinstance(distribution, IntDistribution):
        trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    else:
        trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def tell(study, trial, ret, mode: str) -> str:
    """Tell the study how the trial's job ended; the trial's state."""
    import optuna  # lazy: see nf_trainer/sweep/study.py

    State = optuna.trial.TrialState
    try:
        value, reason = ret.return_value, None  # re-raises the job's exception, if it failed
    except Exception as exc:
        value, reason = None, " ".join(str(exc).split())[:200] or type(exc).__name__
    (now,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
    if studies.PRUNED_AT in now.user_attrs:
        state = State.PRUNED
        study.tell(trial, state=state)
    elif value is None or not math.isfinite(float(value)):  # the job failed (nf_trainer/sweep/job.py: the worst value)
        trial.set_user_attr(studies.FAILED, reason or f"the objective is {value}")
        state = State.FAIL
        study.tell(trial, state=state)
    else:
        state = State.COMPLETE
        try:
            study.tell(trial, float(value))
        except RuntimeError as exc:  # the grid sampler stops the study once every point is done: the last trial
            if "Study.stop" not in str(exc):
                raise
    log.info("trial %d %s%s: %s", trial.number, state.name, f" ({float(value):.4g})" if state == State.COMPLETE else "",
             " ".join(f"{k}={v}" for k, v in trial.params.items()))
    return state.name


def tag_children(sweep_dir: Path, states: dict[int, str]) -> None:
    """Each trial's MLflow run (a child of the sweep's parent) gets the trial's state."""
    sweep = read_sweep(sweep_dir)
    if sweep is None:
        return  # the MLflow callback is off
    client = open_client(sweep.tracking_uri)
    for child in children(client, sweep.experiment_id, sweep.parent_run_id):
        number = child.data.tags.get(studies.TRIAL_TAG)
        if number is not None and number.isdigit() and int(number) in states:
            client.set_tag(child.info.run_id, studies.STATE_TAG, states[int(number)])


def study_artifacts(plan: Plan, tracker) -> dict[str, str]:
    """At the sweep's end, on its parent run: the study's plots (PNG, under optuna/) and its trial counts (a tag)."""
    try:
        study = plan.load()
        for path in studies.study_plots(study, Path(str(plan.config.hydra.sweep.dir)) / "optuna"):
            tracker.log_artifact(path, "optuna")
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    except Exception as exc:  # the plots are a view of the study: never lose the sweep's record over them
        log.warning("no plots of study '%s': %s", plan.name, " ".join(str(exc).split())[:300])
        return {}
    return {"optuna.trials": ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items()))}


def write_results(study, sweep_dir: Path) -> None:
    """optimization_results.yaml in the sweep dir (the file hydra-optuna-sweeper wrote): the best trial so far."""
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        log.warning("study '%s' has no completed trial", study.study_name)
        return
    OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
                                     "best_params": best.params, "best_value": best.value}),
                   sweep_dir / "optimization_results.yaml")
    log.info("study '%s': best trial %d, value %.4g: %s", study.study_name, best.number, best.value,
             " ".join(f"{k}={v}" for k, v in best.params.items()))

