"""`python main.py rerun=<run id>`: exactly the config a logged run used, and the same metrics (CPU, same seed).

main.py rewrites its command line with `expand_rerun` before Hydra starts; here that rewrite runs in this
process and the job after it too, and one `python main.py rerun=... --cfg job` checks the real command line."""
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import client, composed, metric_history, rerun_argv, run_here, run_main, runs


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    out = tmp_path_factory.mktemp("rerun") / "outputs"
    out.mkdir()
    run_here("optimizer=sgd", "optimizer.lr=0.05", "loss.label_smoothing=0.1", "seed=7", "trainer.max_epochs=2",
             "trainer.limit_train_batches=6", "trainer.log_every_n_steps=2", out=out)
    (run,) = runs(out)
    return out, run


def test_rerun_reproduces_the_run_exactly(original, capsys):
    out, run = original
    run_here(*rerun_argv(f"rerun={run.info.run_id}", out=out), out=out)
    (rerun,) = [r for r in runs(out) if r.info.run_id != run.info.run_id]
    stderr = capsys.readouterr().err
    assert f"rerun of {run.info.run_id} ({run.info.run_name}): python main.py optimizer=sgd optimizer.lr=0.05" in stderr
    assert rerun.data.params["rerun"] == run.info.run_id
    without_rerun = lambda params: {k: v for k, v in params.items() if k != "rerun"}
    assert without_rerun(rerun.data.params) == without_rerun(run.data.params)
    assert rerun.info.run_name == run.info.run_name and rerun.info.status == "FINISHED"
    assert set(rerun.data.metrics) == set(run.data.metrics) and "train/step_loss" in run.data.metrics
    for key in run.data.metrics:  # every logged value, bit for bit
        assert [(m.step, m.value) for m in metric_history(out, rerun.info.run_id, key)] == \
               [(m.step, m.value) for m in metric_history(out, run.info.run_id, key)], key


def logged_config_file(out, run):
    """The run's logged resolved config, and where the local store keeps that artifact."""
    path = client(out).download_artifacts(run.info.run_id, "hydra/config_resolved.yaml", str(out.parent))
    stored = Path(urlparse(run.info.artifact_uri).path) / "hydra/config_resolved.yaml"
    assert stored.is_file()
    return yaml.safe_load(open(path)), stored


def test_rerun_pins_values_that_conf_no_longer_composes(original):
    """Had conf/ changed since the run, its logged values still win: here the run 'had' other values."""
    out, run = original
    logged, stored = logged_config_file(out, run)
    drifted = yaml.safe_load(stored.read_text())
    drifted["optimizer"]["momentum"] = 0.5                  # a value conf/ composes differently
    drifted["transforms"]["train"][0]["degrees"] = 3        # inside a list of nodes
    drifted["model"]["extra_note"] = "it's \"quoted\""      # a key conf/ does not have
    original_text = stored.read_text()
    stored.write_text(yaml.safe_dump(drifted))
    try:  # the real command line: main.py rewrites it, then Hydra prints the config it would run
        result = run_main(f"rerun={run.info.run_id}", "--cfg", "job", "--resolve", out=out)
    finally:
        stored.write_text(original_text)
    cfg = yaml.safe_load(result.stdout)
    assert "++optimizer.momentum=0.5" in result.stderr and "++model.extra_note=" in result.stderr
    assert cfg["optimizer"]["momentum"] == 0.5 and cfg["transforms"]["train"][0]["degrees"] == 3
    assert cfg["model"]["extra_note"] == "it's \"quoted\""
    cfg.pop("rerun"), drifted.pop("rerun")
    assert cfg == drifted


def test_rerun_overrides_given_next_to_it_win(original):
    out, run = original
    cfg = composed(rerun_argv(f"rerun={run.info.run_id}", "trainer.max_epochs=5", "optimizer=adam", out=out))
    logged, _ = logged_config_file(out, run)
    assert cfg["trainer"]["max_epochs"] == 5 and cfg["optimizer"]["_target_"] == "torch.optim.Adam"
    assert cfg["seed"] == 7 and cfg["loss"]["label_smoothing"] == 0.1 and cfg["rerun"] == run.info.run_id
    assert cfg["trainer"]["limit_train_batches"] == logged["trainer"]["limit_train_batches"] == 6


def test_rerun_takes_the_start_of_an_id_as_the_runs_table_shows_it(original, capsys):
    out, run = original
    cfg = composed(rerun_argv(f"rerun={run.info.run_id[:8]}", out=out))
    assert cfg["rerun"] == run.info.run_id and cfg["optimizer"]["lr"] == 0.05  # the run's config, its id in full
    assert f"rerun of {run.info.run_id} (" in capsys.readouterr().err


def test_rerun_of_an_unknown_run_fails_in_one_line(original):
    out, _ = original
    with pytest.raises(SystemExit) as exit:  # main.py prints the message on stderr and exits 1
        rerun_argv("rerun=0123456789abcdef0123456789abcdef", out=out)
    assert exit.value.code.startswith("rerun=0123456789abcdef0123456789abcdef: no such run in sqlite:///")
    assert "\n" not in exit.value.code


def test_rerun_needs_a_store_that_exists(bare_out):
    with pytest.raises(SystemExit) as exit:
        rerun_argv("rerun=0123456789abcdef0123456789abcdef", out=bare_out)
    assert "there is no MLflow store at sqlite:///" in exit.value.code
    assert not (bare_out / "mlflow.db").exists()  # and none was created
