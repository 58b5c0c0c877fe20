"""An Optuna study kept in a storage that outlives the process (sqlite by default, PostgreSQL, a journal file),
shared by every process that sweeps it, and what its jobs need to report to it.

Which trials count toward `n_trials` (the study's total, over every process and every re-run): the complete,
the pruned, the running and the failed ones whose job failed (`nf.failed`); trials put in the study with
`study.enqueue_trial(params)` run first. A trial whose process died (its
owner is gone from this machine, or an RDB heartbeat went stale) is marked FAIL without `nf.failed`: it stays in
the study and does not count, so re-running the command runs another trial in its place.

Optuna is imported inside the functions: this module loads with every sweep's callback.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nf_trainer.core.errors import NfTrainerError

log = logging.getLogger("nf_trainer")

SWEEPER = "hydra_plugins.nf_trainer_optuna.optuna_sweeper.OptunaSweeper"  # hydra.sweeper._target_ of ours
STUDY_FILE = "optuna_study.json"  # in the sweep dir: the study and each job's trial, for the jobs
OWNER = "nf.owner"  # host:pid of the process that asked for the trial and waits for it
FAILED = "nf.failed"  # why the trial's job failed: such a FAIL counts toward n_trials (an interrupted one does not)
PRUNED_AT = "nf.pruned_at_epoch"  # set by the job when the pruner stopped it
TRIAL_TAG, STATE_TAG, STUDY_TAG = "optuna.trial", "optuna.state", "optuna.study"  # on each trial's MLflow run
JOURNAL = "journal:"  # hydra.sweeper.storage=journal:/shared/fs/study.log: Optuna's journal file storage


def is_ours(config: DictConfig) -> bool:
    return config.hydra.sweeper.get("_target_") == SWEEPER


def safe_url(url: str) -> str:
    """The storage URL with its password masked (for tags and messages)."""
    if url.startswith(JOURNAL) or "@" not in url:
        return url
    from sqlalchemy.engine import make_url  # lazy: only RDB URLs with credentials

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """The storage object for a URL, its tables created; an unreachable or malformed one fails in one line."""
    import optuna  # lazy: see the module docstring
    import sqlalchemy.exc

    fix = "fix hydra.sweeper.storage (sqlite:///PATH, postgresql+psycopg://USER:PASSWORD@HOST/DB or journal:PATH)"
    try:
        if url.startswith(JOURNAL):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix(JOURNAL)).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):  # a new paths.output_root: sqlite makes the file, not its folder
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else None
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9; we rely on it
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period)
    except (sqlalchemy.exc.SQLAlchemyError, OSError, ValueError, ImportError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        raise NfTrainerError(f"the Optuna storage {safe_url(url)} cannot be opened ({reason}): {fix}") from None


def study_key(url: str, name: str) -> str:
    """One MLflow parent run per study: the key of the study's parent run."""
    return hashlib.sha256(f"{safe_url(url)}\n{name}".encode()).hexdigest()[:16]


def direction(config: DictConfig, mode: str) -> str:
    return str(config.hydra.sweeper.direction or ("minimize" if mode == "min" else "maximize"))


def load(url: str, name: str, config: DictConfig, mode: str, sampler=None, pruner=None, heartbeat: bool = False):
    """The study (created on the first run, continued after that)."""
    import optuna  # lazy: see the module docstring

    sweeper = config.hydra.sweeper
    interval = sweeper.heartbeat_interval if heartbeat and not url.startswith(JOURNAL) else None
    storage = open_storage(url, interval, sweeper.grace_period if interval else None)
    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                   direction=direction(config, mode), load_if_exists=True)
    except ValueError as exc:  # the study exists with the other direction
        raise NfTrainerError(f"Optuna study '{name}' in {safe_url(url)}: {exc}; use another "
                             "hydra.sweeper.study_name, or the study's direction") from None


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(trial) -> bool:
    """The trial's process ran on this machine and is dead (SIGKILL, a crash, a power cut)."""
    host, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def fail_interrupted(study) -> list[int]:
    """Mark FAIL the trials whose process is gone; their numbers. They stay in the study and do not count."""
    import optuna  # lazy: see the module docstring

    if getattr(study._storage, "is_heartbeat_enabled", lambda: False)():  # RDB storage, heartbeats on
        optuna.storages.fail_stale_trials(study)  # trials of processes on other machines that stopped beating
    gone = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if owner_is_gone(t)]
    for trial in gone:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    if gone:
        log.info("trials %s of study '%s' were interrupted (their process is gone): marked FAIL; they do not count "
                 "toward n_trials", ", ".join(str(t.number) for t in gone), study.study_name)
    return [t.number for t in gone]


def counted(trials) -> list:
    """The trials that count toward n_trials (see the module docstring); a WAITING one (study.enqueue_trial) is
    the next one asked for, and counts once it runs."""
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "RUNNING") or FAILED in t.user_attrs]


def running_numbers(study) -> set[int]:
    import optuna  # lazy: see the module docstring

    return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}


@contextmanager
def heartbeat(storage, trial_ids: list[int], interval: int | None):
    """Beat for the trials this process waits for, so other machines can tell when it died (RDB storages)."""
    if not interval or not getattr(storage, "is_heartbeat_enabled", lambda: False)():
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- what the jobs get ---------------------------------------------------------------------------------------

@dataclass
class JobTrial:
    storage: str
    study_name: str
    trial_id: int
    number: int
    pruner: dict | None  # the pruner's config (`_target_` and arguments): the job asks it after every epoch


def write_trials(sweep_dir: Path, storage: str, study_name: str, pruner: DictConfig | None, trials: dict[int, object]):
    """`trials`: Hydra job number -> Optuna trial. Replaced whole (atomically) before each batch is launched."""
    pruner_cfg = OmegaConf.to_container(pruner, resolve=True) if pruner is not None else None
    jobs = {str(num): asdict(JobTrial(storage, study_name, trial._trial_id, trial.number, pruner_cfg))
            for num, trial in trials.items()}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / f".{STUDY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(jobs, indent=2))
    os.replace(tmp, sweep_dir / STUDY_FILE)


def current_trial() -> JobTrial | None:
    """The Optuna trial this Hydra job runs, or None (not in a study of ours)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    path = Path(hydra.sweep.dir) / STUDY_FILE
    if not path.is_file():
        return None
    found = json.loads(path.read_text()).get(str(hydra.job.num))
    return JobTrial(**found) if found else None


class TrialReport:
    """The job's side of pruning: after every epoch, the objective goes to the study and the pruner decides."""

    def __init__(self, job: JobTrial):
        import optuna  # lazy: only the jobs of a study load it
        from hydra.utils import instantiate

        pruner = instantiate(job.pruner) if job.pruner else None
        study = optuna.load_study(study_name=job.study_name, storage=open_storage(job.storage), pruner=pruner)
        self.trial = optuna.trial.Trial(study, job.trial_id)
        self.number = job.number

    def __call__(self, epoch: int, value: float) -> bool:
        """True: stop training here (the pruner says this trial will not catch up)."""
        self.trial.report(value, step=epoch)
        if not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_AT, epoch)
        log.info("trial %d pruned after epoch %d (objective %.4g): the study's pruner stops it; its run and "
                 "checkpoints are kept", self.number, epoch, value)
        return True


# --- looking at a study ----------------------------------------------------------------------------------------

def study_plots(study, out_dir: Path) -> list[Path]:
    """The optimization history and, with two finished trials or more, the parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna  # lazy: see the module docstring
    from optuna.visualization import matplotlib as plots  # (matplotlib: a dependency of ours, plotly is not)

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    charts = [("optimization_history.png", plots.plot_optimization_history)]
    if len(complete) >= 2 and complete[0].params:
        charts.append(("param_importances.png", plots.plot_param_importances))
    for name, plot in charts:
        try:
            with warnings.catch_warnings():  # matplotlib plots are "experimental"; equal importances warn
                warnings.simplefilter("ignore")
                axes = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. every finished trial has the same value
            log.warning("no %s for study '%s': %s", name, study.study_name, exc)
            continue
        axes.figure.tight_layout()
        axes.figure.savefig(out_dir / name, dpi=100)
        plt.close(axes.figure)
        made.append(out_dir / name)
    return made
