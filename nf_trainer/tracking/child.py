"""A job's tracker in a child process: MLflow's imports, its store and every write run beside the job.

Opening MLflow's SQL store costs a job about 2 s of imports (SQLAlchemy, alembic, MLflow's own) and each
write ~10 ms of CPU. In a child process, started before the job imports torch, that work overlaps the
job's own start and never takes the training loop's time (or its GIL). Calls that return something or
must have landed (`ChildProcessTracker.WAITING`) wait for the child; the others are queued, in order. A
queued write that failed is raised by the next call that waits, so no failure goes unseen.

The child ignores SIGINT and SIGTERM: the job decides how its run ends (KILLED on Ctrl-C) and says so.
It leaves when the job closes it, or when the job's process is gone (SIGKILL: the run stays RUNNING).
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.tracking.interface import TRACKER_METHODS
from nf_trainer.tracking.mlflow_tracker import MlflowTracker
from nf_trainer.tracking.outcome import end_run
from nf_trainer.tracking.pyfunc import prepare_environment, serialize
from nf_trainer.tracking.server import new_local_store

log = logging.getLogger("nf_trainer")


class ChildProcessTracker:
    """A `Tracker` whose calls run on an `MlflowTracker` in a child process. Every method of the interface
    is forwarded as it is (`__getattr__`): a method added to `Tracker` needs no code here."""

    WAITING = frozenset({"start", "log_objective", "log_model", "run_name_of", "end"})  # they return, or must land

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 system_metrics: bool = False, prepare_model: bool = False):
        self.tracking_uri, self.run_id = tracking_uri, None
        package_root = str(Path(__file__).resolve().parents[2])  # importable in the child without an install
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen([sys.executable, "-m", "nf_trainer.tracking.child"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._outbox = Connection(os.dup(self._process.stdin.fileno()), readable=False)
        self._inbox = Connection(os.dup(self._process.stdout.fileno()), writable=False)
        self._process.stdin.close()
        self._process.stdout.close()
        self._calls = 0  # numbers the waiting calls: a reply left unread by a Ctrl-C is skipped, not misread
        # prepare_model: the run will log a model; the child gets MLflow ready for it while the job imports torch
        self._call("__init__", (tracking_uri, experiment_name, artifact_location, system_metrics),
                   {"prepare_model": prepare_model})

    def start(self, *args, **kwargs) -> str | None:
        self.run_id = self._call("start", args, kwargs)
        return self.run_id

    def log_model(self, model, example, *args, **kwargs) -> str | None:
        """The one call with code of its own: the model is serialized here, where torch is loaded, and crosses as
        bytes (tracking/pyfunc.py), so the child never imports torch."""
        return self._call("log_model", (serialize(model, example, kwargs.get("task")), None, *args), kwargs)

    def __getattr__(self, name: str):
        if name not in TRACKER_METHODS:
            raise AttributeError(f"{type(self).__name__} has no attribute '{name}' (not a Tracker method)")

        def forward(*args, **kwargs):
            return self._call(name, args, kwargs)
        return forward

    def close(self, timeout: float = 120.0) -> None:
        """Let the child finish what is queued and leave (a remote server may need a while)."""
        if self._process is None:
            return
        if self._calls == 1:  # nothing was asked beyond the imports: no write to wait for (a job that failed early)
            self._process.kill()
        try:
            send(self._outbox, None)
        except OSError:
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the MLflow tracker process did not finish its writes in %.0f s: stopped", timeout)
            self._process.kill()
            self._process.wait()
        self._outbox.close()
        self._inbox.close()
        self._process = None

    def _call(self, method: str, args: tuple, kwargs: dict):
        """Send `method(*args, **kwargs)`; wait for its result if it is one of WAITING."""
        if self._process is None:
            raise NfTrainerError(f"MLflow tracker call '{method}' after the tracker was closed")
        wait = method in self.WAITING
        number = self._calls = self._calls + 1
        try:
            send(self._outbox, (number if wait else 0, method, args, kwargs))
            while wait:
                replied, ok, value = receive(self._inbox)
                if replied == number:
                    if not ok:
                        raise value
                    return value
        except (OSError, EOFError):
            raise NfTrainerError(f"the MLflow tracker process ended (exit code {self._process.poll()}) during "
                                 f"'{method}': see the errors above") from None
        return None


def send(connection: Connection, message) -> None:
    # Plain pickle, not Connection.send's: torch registers shared-memory reductions for tensors (a model for
    # log_model) with multiprocessing's pickler, which this pipe between unrelated processes cannot carry.
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection: Connection):
    return pickle.loads(connection.recv_bytes())


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else an NfTrainerError with its text (some MLflow errors do not)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return NfTrainerError(f"MLflow: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}")


def warm_up(settings: tuple, prepare_model: bool) -> MlflowTracker | None:
    """While the job is still importing torch: the imports the run's first calls need, the store opened when it
    exists (a new one is made at the first call: a job that fails before its run starts leaves none behind),
    and, for a run that will log its model, MLflow's check of the model's requirements."""
    import mlflow.data  # noqa: F401  (dataset inputs)
    from mlflow import MlflowClient  # noqa: F401

    tracking_uri = settings[0]
    if tracking_uri.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (SQLAlchemy, alembic: most of the time)
    tracker = None
    if new_local_store(tracking_uri) is None:
        try:
            tracker = MlflowTracker(*settings)
            tracker.client  # noqa: B018  (opens the store: ~1 s the run's start no longer waits for)
        except Exception:  # the run's first call opens it again, and says why it cannot
            tracker = None
    if prepare_model:
        try:
            prepare_environment()
        except Exception:  # only a head start: the model's own save at the run's end repeats it, and raises
            pass
    return tracker


def end_unseen_run(tracker: MlflowTracker) -> None:
    """A run the job closes us without ending: it started it, then was stopped (Ctrl-C) before `start` returned,
    so the job never knew its id. KILLED, not left RUNNING."""
    if end_run(tracker, "KILLED"):
        log.warning("MLflow run %s was stopped while it started: marked KILLED", tracker.run_id)


def serve(inbox: Connection, outbox: Connection) -> None:
    """The child: run each call on an MlflowTracker, in order; reply to the ones that wait."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    tracker, settings, failed = None, None, None  # failed: the first queued call that raised, for the next waiting call
    ended = False
    while True:
        if not inbox.poll(1.0):
            if os.getppid() != parent:  # the job is gone without closing us
                break
            continue
        try:
            message = receive(inbox)
        except EOFError:
            break
        if message is None:  # the job closes us
            if tracker is not None and tracker.run_id is not None and not ended:
                end_unseen_run(tracker)
            break
        number, method, args, kwargs = message
        try:
            if method == "__init__":
                settings = args
                tracker = warm_up(settings, **kwargs)
                continue
            if tracker is None:
                tracker = MlflowTracker(*settings)
            if number and failed is not None and method != "end":
                raise failed
            value = getattr(tracker, method)(*args, **kwargs)
            if number and failed is not None:
                raise failed
            ended = ended or method == "end"
            if number:
                send(outbox, (number, True, value))
            if method == "start":  # the job trains from now on: on a busy machine, the child's work yields to it
                os.nice(10)
        except Exception as exc:
            if number:
                failed = None if exc is failed else failed
                send(outbox, (number, False, _portable(exc)))
            else:
                log.warning("MLflow %s failed: %s", method, " ".join(str(exc).split())[:500])
                failed = failed or exc


if __name__ == "__main__":
    # messages come on stdin and replies go out on the real stdout; print() and logs go to stderr
    replies = os.dup(1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][nf_trainer.tracker][%(levelname)s] - %(message)s")
    serve(Connection(os.dup(0), writable=False), Connection(replies, readable=False))
    os._exit(0)  # every write has landed (end() waited for them): skip the interpreter's slow teardown
