"""Training end to end: `python main.py` itself (once per session, shared), and the training job run in
this process through the real Hydra, on real models and the digits set, logged to a real sqlite store."""
import pytest
import torch

from nf_trainer.core.errors import NfTrainerError
from tests.conftest import client, fails_in_one_line, metric_history, only_run, run_here, runs


@pytest.mark.slow  # python main.py itself, 20 epochs
def test_default_run_reaches_target_accuracy(default_run):
    out, run, _ = default_run
    assert run.info.status == "FINISHED"
    best_acc = max(m.value for m in metric_history(out, run.info.run_id, "val/digits/accuracy"))
    assert best_acc >= 0.97


@pytest.mark.slow  # python main.py itself, 20 epochs
def test_default_run_logs_params_metrics_tags_artifacts(default_run):
    out, run, _ = default_run
    params, tags = run.data.params, run.data.tags
    assert params["model._target_"] == "nf_trainer.model.simple_cnn.SimpleCNN"
    assert params["optimizer._target_"] == "torch.optim.AdamW" and params["optimizer.lr"] == "0.003"
    assert params["trainer.max_epochs"] == "20" and params["data.num_classes"] == "10"
    assert params["data.train_size"] == "1437" and params["data.digits.size"] == "360"
    assert run.info.run_name == "simple_cnn-adamw-lr0.003"
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("True", "False")
    assert tags["device"] == "cpu" and tags["precision"] == "32"  # what trainer.device/precision=auto chose
    assert tags["overrides"] == f"mlflow.log_model=true paths.output_root={out}" and tags["output_dir"].startswith(str(out))
    assert tags["mode"] == "train" and len(tags["nf.config_hash"]) == 16
    for key in ("train/loss", "train/accuracy", "val/digits/loss", "val/digits/accuracy", "val/digits/precision",
                "val/digits/recall", "val/digits/f1", "lr"):
        history = metric_history(out, run.info.run_id, key)
        assert [m.step for m in history] == list(range(1, 21)), key
    assert metric_history(out, run.info.run_id, "train/step_loss"), "per-step loss is logged every n steps"
    artifacts = {a.path for a in client(out).list_artifacts(run.info.run_id)}
    assert {"hydra", "checkpoints"} <= artifacts
    hydra_files = {a.path for a in client(out).list_artifacts(run.info.run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/config_resolved.yaml"} <= hydra_files
    ckpts = {a.path for a in client(out).list_artifacts(run.info.run_id, "checkpoints")}
    assert ckpts == {"checkpoints/best-loss.pt"}  # one monitor: the objective's metric (the task's, val loss)


@pytest.mark.slow  # python main.py itself, 20 epochs
def test_default_run_writes_checkpoints(default_run):
    out, run, _ = default_run
    out_dir = run.data.tags["output_dir"]
    last = torch.load(f"{out_dir}/last.pt", weights_only=True)
    best = torch.load(f"{out_dir}/best-loss.pt", weights_only=True)
    assert last["epoch"] == 20 and last["run_id"] == run.info.run_id and last["classes"] == [str(i) for i in range(10)]
    losses = [m.value for m in metric_history(out, run.info.run_id, "val/digits/loss")]
    assert best["metrics"]["val/digits/loss"] == pytest.approx(min(losses))
    assert best["best"]["loss"]["best"] == pytest.approx(min(losses))
    # the objective, the best checkpoint and the logged model agree: the same metric, the same epoch
    (objective,) = client(out).get_metric_history(run.info.run_id, "objective")
    assert best["epoch"] == objective.step and best["metrics"]["val/digits/loss"] == pytest.approx(objective.value)


@pytest.mark.slow  # python main.py itself, 20 epochs
def test_the_main_job_prints_where_its_run_went(default_run):
    out, run, result = default_run
    log = result.stdout + result.stderr
    assert f"MLflow run {run.info.run_id} (simple_cnn-adamw-lr0.003) in sqlite:///{out}/mlflow.db" in log
    assert "epoch 20/20" in log and "best model: best-" in log
    assert f"run FINISHED: simple_cnn-adamw-lr0.003\n  best val/digits/loss: {run.data.metrics['objective']:#.4g} at epoch" in log
    assert "logged the model: runs:/" in log
    assert "No complete tensor found" not in log  # torch.export's warning about CPU weights, which these are


def test_optimizer_override_is_logged(out):
    run_here("optimizer=adam", "optimizer.lr=1e-3", "optimizer.weight_decay=2.0349616224981566e-05",
             "trainer.max_epochs=2", "trainer.limit_train_batches=3", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.001"
    assert run.data.params["optimizer.weight_decay"] == "2.0349616224981566e-05"  # the param keeps every digit
    assert run.data.params["optimizer._target_"] == "torch.optim.Adam"
    # the name shows floats as lr is shown (an Optuna trial's values have 17 digits)
    assert run.info.run_name == "simple_cnn-adam-lr0.001-weight_decay2.03496e-05-max_epochs2-limit_train_batches3"


def test_early_stopping_stops_when_nothing_improves(out):
    run_here("optimizer.lr=0", "trainer.max_epochs=10", "trainer.early_stopping.patience=2", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED"
    # epoch 1 sets the best loss; epochs 2 and 3 do not improve on it -> stop after 3 epochs
    assert [m.step for m in metric_history(out, run.info.run_id, "val/digits/loss")] == [1, 2, 3]
    out_dir = run.data.tags["output_dir"]
    for name in ("last.pt", "best-loss.pt"):
        ckpt = torch.load(f"{out_dir}/{name}", weights_only=True)
        assert set(ckpt["model"]) == set(torch.load(f"{out_dir}/last.pt", weights_only=True)["model"])
    assert torch.load(f"{out_dir}/last.pt", weights_only=True)["early_stop"]["bad_epochs"] == 2


def test_resume_continues_the_same_run_and_matches_a_straight_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    short = ("seed=3", "trainer.limit_train_batches=8")
    run_here("trainer.max_epochs=4", *short, out=straight)
    run_here("trainer.max_epochs=2", *short, out=split)
    (first,) = runs(split)
    run_here("trainer.max_epochs=4", *short, f"resume={first.data.tags['output_dir']}/last.pt", out=split)

    (resumed,) = runs(split)  # still one run
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == "FINISHED"
    assert [m.step for m in metric_history(split, resumed.info.run_id, "val/digits/accuracy")] == [1, 2, 3, 4]
    assert resumed.data.tags["resume.changed.trainer.max_epochs"] == "2 -> 4"

    (reference,) = runs(straight)
    a = torch.load(f"{reference.data.tags['output_dir']}/last.pt", weights_only=True)["model"]
    b = torch.load(f"{resumed.data.tags['output_dir']}/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # same seed -> same final metrics
    final = lambda out, run: metric_history(out, run.info.run_id, "val/digits/loss")[-1].value
    assert final(straight, reference) == final(split, resumed)


def test_debug_overfit_loss_falls(out):
    run_here("debug=overfit", out=out)
    run = only_run(out)
    losses = [m.value for m in metric_history(out, run.info.run_id, "train/loss")]
    assert len(losses) == 30 and losses[-1] < 0.3 * losses[0]


def test_efficientnet_b0_trains(out):
    run_here("model=efficientnet_b0", "debug=fast", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "efficientnet-b0"
    assert run.data.params["model.image_size"] == "None"  # filled from the data at build time
    assert int(run.data.params["model.num_params"]) > 3_000_000


@pytest.mark.parametrize("override,needle", [
    ("optimizer=adamm", "Could not find 'optimizer/adamm'"),
    ("trainer.max_epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1, got 0"),
    ("optimizer._target_=torch.optim.Adamm", "unknown optimizer 'Adamm' in torch.optim; did you mean 'Adam'"),
])
def test_bad_input_fails_in_one_line_and_leaves_no_running_run(out, override, needle):
    assert needle in fails_in_one_line(override, out=out)
    assert all(r.info.status != "RUNNING" for r in runs(out))


def test_an_unknown_objective_metric_fails_before_the_run(out):
    with pytest.raises(NfTrainerError, match="unknown metric 'f2': choose one of .*val/digits/f1"):
        run_here("debug=fast", "objective.metric=f2", out=out)
    assert client(out).get_experiment_by_name("nf_trainer") is None  # no run, not even its experiment
