"""conf/experiment/: every recipe composes, is applied after the groups (and before debug), and the ones
that need no download run for a short debug run."""
import pytest

from tests.conftest import ROOT, compose_cfg, fails_in_one_line, metric_history, only_run, run_here

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
OFFLINE = ["digits_efficientnet"]  # the others download CIFAR-10 or pretrained weights, or need dataset.root


def test_the_documented_recipes_exist():
    assert {"digits_efficientnet", "cifar10_resnet18", "finetune_folder"} <= set(EXPERIMENTS)
    assert set(OFFLINE) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_overrides_the_groups(name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.mlflow.tags.experiment == name
    assert cfg.trainer.max_epochs > 1
    fast = compose_cfg(f"experiment={name}", "debug=fast")  # debug still applies last
    assert fast.trainer.max_epochs == 1 and fast.trainer.limit_train_batches == 2


def test_digits_efficientnet_recipe():
    cfg = compose_cfg("experiment=digits_efficientnet")
    assert cfg.model.name == "efficientnet-b0" and cfg.model.image_size == 32 and cfg.dataset._target_.endswith("digits")
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR") and cfg.loss.label_smoothing == 0.1


def test_cifar10_resnet18_recipe():
    cfg = compose_cfg("experiment=cifar10_resnet18")
    assert cfg.model.name == "resnet18" and cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.1


def test_finetune_folder_recipe():
    cfg = compose_cfg("experiment=finetune_folder")
    assert cfg.model.name == "resnet50" and cfg.model.pretrained and cfg.model.weights == "IMAGENET1K_V2"
    assert cfg.optimizer.head_lr == 1e-3 and cfg.optimizer.lr == 1e-4


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_experiments_run_a_short_debug_run(out, name):
    run_here(f"experiment={name}", "debug=fast", "loader.batch_size=8", "mlflow.log_model=false",
             "trainer.progress_bar=false", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.tags["experiment"] == name
    assert run.data.params["trainer.max_epochs"] == "1"
    assert [m.step for m in metric_history(out, run.info.run_id, "val/digits/accuracy")] == [1]


def test_plus_experiment_fails_with_a_hint_to_drop_the_plus(bare_out):
    """`+experiment=NAME` is the form Hydra's docs teach; here `experiment` is in the defaults list already."""
    assert fails_in_one_line("+experiment=digits_efficientnet", out=bare_out) == (
        "experiment is in the defaults list already (conf/config.yaml): "
        "write experiment=digits_efficientnet, not +experiment=digits_efficientnet")
