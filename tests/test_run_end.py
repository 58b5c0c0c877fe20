"""How a run meets MLflow's habits: MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME pick the store when set, the
run ends with a summary block whose values are the store's, the UI command it prints opens that run, and
`debug=fast` logs no model. One debug=fast job (in this process) with hydra.verbose=true serves them all."""
from __future__ import annotations

import logging
import re
import shlex
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nf_trainer.cli.ui import parse_args, serve
from nf_trainer.core.log_levels import debug_only_ours
from nf_trainer.tracking.interface import OBJECTIVE
from tests.conftest import compose_cfg, environment, run_here


@pytest.fixture(scope="module")
def env_run(tmp_path_factory, empty_store):
    """debug=fast with the store and the experiment given by MLflow's variables: (them, the run, its main.log, the
    output root, which the store is not under)."""
    root = tmp_path_factory.mktemp("env_store")
    shutil.copyfile(empty_store, root / "elsewhere.db")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/elsewhere.db", "MLFLOW_EXPERIMENT_NAME": "from-env"}
    run_here("debug=fast", "trainer.progress_bar=false", "hydra.verbose=true", out=root / "outputs", env=env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("from-env").experiment_id])
    log = (Path(run.data.tags["output_dir"]) / "main.log").read_text()
    return env, run, log, root / "outputs"


def test_mlflow_environment_variables_pick_the_store_and_the_experiment(env_run):
    env, run, _, out = env_run
    assert run.info.status == "FINISHED" and run.data.params["mlflow.tracking_uri"] == env["MLFLOW_TRACKING_URI"]
    assert not (out / "mlflow.db").exists() and run.data.tags["output_dir"].startswith(str(out))
    with environment(**env):  # the command line wins over both
        cfg = compose_cfg("mlflow.tracking_uri=sqlite:////tmp/given.db", "mlflow.experiment_name=given")
        assert (cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name) == ("sqlite:////tmp/given.db", "given")
    with environment(MLFLOW_TRACKING_URI=None, MLFLOW_EXPERIMENT_NAME=None):  # unset: the defaults
        assert compose_cfg("paths.output_root=/data/o").mlflow.tracking_uri == "sqlite:////data/o/mlflow.db"


def test_the_summary_block_holds_what_mlflow_reads_back(env_run):
    env, run, log, out = env_run
    block = log[log.index("run FINISHED: "):]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (objective,) = client.get_metric_history(run.info.run_id, OBJECTIVE)
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/digits/loss")}
    assert objective.value == min(losses.values()) and losses[objective.step] == objective.value
    assert f"run FINISHED: {run.info.run_name}" in block and run.info.status == "FINISHED"
    assert f"best val/digits/loss: {objective.value:#.4g} at epoch {objective.step}\n" in block
    checkpoint = re.search(r"best checkpoint: (\S+)", block).group(1)
    assert checkpoint == f"{run.data.tags['output_dir']}/best-loss.pt"  # the objective's metric: they agree
    assert f"MLflow run: {run.info.run_id} in {env['MLFLOW_TRACKING_URI']}" in block
    command = re.search(r"open it: (.+)", block).group(1)
    # the overrides that chose the store come along (here the output root, which the environment's store overrides)
    assert command == f"python -m nf_trainer.ui --run {run.info.run_id} paths.output_root={out}"


def test_the_ui_command_of_the_summary_opens_that_run_in_that_store(env_run, capsys):
    env, run, log, _ = env_run
    args = shlex.split(re.search(r"open it: python -m nf_trainer.ui (.+)", log).group(1))
    with environment(**env):
        server = serve(parse_args([*args, "--port", "0"]))  # the `mlflow server` command it would become
    page = f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert page in capsys.readouterr().out and env["MLFLOW_TRACKING_URI"] in server


def test_the_ui_opens_a_run_from_the_start_of_its_id(env_run, capsys):
    env, run, *_ = env_run
    with environment(**env):
        serve(parse_args(["--run", run.info.run_id[:8], "--port", "0"]))
    shown = capsys.readouterr().out
    assert f"run {run.info.run_id} (" in shown and f"/runs/{run.info.run_id}" in shown


def test_debug_fast_logs_no_model(env_run):
    env, run, *_ = env_run
    assert run.data.params["mlflow.log_model"] == "False" and run.data.params["export"] == "[]"
    assert not MlflowClient(env["MLFLOW_TRACKING_URI"]).search_logged_models([run.info.experiment_id])


def test_hydra_verbose_true_shows_our_debug_lines_not_the_libraries(env_run):
    _, _, log, _ = env_run
    assert "[nf_trainer][DEBUG]" in log
    assert not re.search(r"\]\[(?!nf_trainer)[\w.]+\]\[DEBUG\]", log), "a library's DEBUG line"


def test_named_loggers_in_hydra_verbose_are_left_as_hydra_sets_them():
    root, font = logging.getLogger(), logging.getLogger("matplotlib.font_manager")
    levels = root.level, font.level
    try:
        root.setLevel(logging.DEBUG)  # what hydra.verbose=true does
        debug_only_ours(True)
        assert root.level == logging.INFO and logging.getLogger("nf_trainer").getEffectiveLevel() == logging.DEBUG
        root.setLevel(logging.INFO)
        font.setLevel(logging.DEBUG)  # hydra.verbose=[nf_trainer,matplotlib.font_manager]
        debug_only_ours(["nf_trainer", "matplotlib.font_manager"])
        assert font.level == logging.DEBUG and root.level == logging.INFO
    finally:
        root.setLevel(levels[0])
        font.setLevel(levels[1])
        logging.getLogger("nf_trainer").setLevel(logging.NOTSET)
