"""conf/experiment/: every recipe composes, is applied after the groups (and before debug), and the ones
that need no download run for a short debug run."""
import pytest

from tests.conftest import ROOT, compose_cfg, environment, fails_in_one_line, metric_history, only_run, run_here
from tests.data_files import make_image_folder

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
OFFLINE = ["digits_efficientnet"]  # the others download CIFAR-10 or pretrained weights, or need dataset.root


def test_the_documented_recipes_exist():
    assert {"digits_efficientnet", "cifar10_resnet18", "finetune_folder", "digits_timm",
            "finetune_timm_folder"} <= set(EXPERIMENTS)
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


def test_finetune_timm_folder_recipe():
    cfg = compose_cfg("experiment=finetune_timm_folder")
    assert cfg.model._target_.endswith("timm_model") and cfg.model.pretrained and cfg.optimizer.layer_decay == 0.75
    assert cfg.scheduler.interval == "step" and cfg.scheduler.warmup_epochs == 1 and cfg.scheduler.min_lr == 1e-6


def test_finetune_timm_folder_runs_briefly_on_an_image_folder(out, tmp_path):
    """Warmup, cosine per step and layer decay on a real folder of images (random weights: no download here)."""
    make_image_folder(tmp_path / "images", per_class=6, bad=False)
    run_here("experiment=finetune_timm_folder", f"dataset.root={tmp_path / 'images'}", "model.pretrained=false",
             "transforms.image_size=32", "loader.num_workers=0", "loader.batch_size=8", "trainer.max_epochs=2",
             "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1", "trainer.log_every_n_steps=1",
             "trainer.progress_bar=false", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.tags["experiment"] == "finetune_timm_folder"
    lrs = [m.value for m in metric_history(out, run.info.run_id, "train/step_lr")]  # the first (lowest) layer group's
    assert len(lrs) == 4 and max(lrs) == lrs[1]  # 2 steps an epoch: warmed up after 2, then the cosine
    assert lrs[0] == pytest.approx(0.505 * lrs[1]) and lrs[-1] == pytest.approx(1e-6)  # half way up; min_lr at the end


def test_digits_timm_trains_and_its_logged_model_serves_raw_images(out):
    import mlflow
    from sklearn.datasets import load_digits

    run_here("experiment=digits_timm", "debug=fast", "loader.batch_size=16", "mlflow.log_model=true",
             "trainer.progress_bar=false", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "resnet10t"
    with environment(MLFLOW_TRACKING_URI=None):  # set_tracking_uri exports it, and the config would read it
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images = [(image * 255 / 16).astype("uint8") for image in load_digits().images[:4]]
    predictions = served.predict(images)
    assert len(predictions) == 4 and set(predictions.class_name) <= {str(d) for d in range(10)}


def test_plus_experiment_fails_with_a_hint_to_drop_the_plus(bare_out):
    """`+experiment=NAME` is the form Hydra's docs teach; here `experiment` is in the defaults list already."""
    assert fails_in_one_line("+experiment=digits_efficientnet", out=bare_out) == (
        "experiment is in the defaults list already (conf/config.yaml): "
        "write experiment=digits_efficientnet, not +experiment=digits_efficientnet")
