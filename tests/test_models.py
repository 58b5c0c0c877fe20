"""Every model preset trains; fine-tuning, class weights and pretrained weights behave as configured."""
import pytest
import torch

from nf_trainer.errors import NfTrainerError
from nf_trainer.instantiate import create_instance
from tests.conftest import ROOT, metric_history, run_main, runs
from tests.test_config import compose_cfg

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # steady timings on a shared 2-core machine
# Short and light: 2 small batches, SGD without momentum (no optimizer state), only last.pt written.
SHORT = ["debug=fast", "loader.batch_size=4", "optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=false",
         "trainer.save_best=[]", "mlflow.log_model=false", "trainer.progress_bar=false"]
# 32x32: convnext_tiny's downsampling needs at least that (the digits are 8x8).
RESIZE_32 = ["transforms.train=[{_target_: torchvision.transforms.v2.Resize, size: [32, 32]}]",
             "transforms.eval=${transforms.train}"]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def check_runs(out, expected: dict[str, str]):
    """expected: model choice -> its model.name (or _target_) param; each run FINISHED with one epoch of metrics."""
    jobs = [r for r in runs(out) if "mlflow.parentRunId" in r.data.tags]  # the sweep's parent has no params
    found = {r.data.params.get("model.name", r.data.params["model._target_"]): r for r in jobs}
    assert set(found) == set(expected.values())
    for run in found.values():
        assert run.info.status == "FINISHED"
        assert run.data.params["data.num_classes"] == "10" and run.data.params["trainer.max_epochs"] == "1"
        for key in ("train/loss", "val/digits/loss", "val/digits/accuracy", "val/digits/auroc"):
            assert [m.step for m in metric_history(out, run.info.run_id, key)] == [1], key
    return found


def test_every_model_preset_trains_one_short_epoch(out):
    assert {"simple_cnn", "torchvision", "resnet18", "resnet50", "mobilenet_v3_small", "convnext_tiny",
            *(f"efficientnet_b{i}" for i in range(8))} <= set(PRESETS)
    run_main("-m", f"model={','.join(PRESETS)}", *SHORT, *RESIZE_32, out=out, env=ONE_THREAD)  # one process, one job each
    names = {p: compose_cfg(f"model={p}").model.get("name", compose_cfg(f"model={p}").model._target_) for p in PRESETS}
    found = check_runs(out, names)
    sizes = {name: int(run.data.params["model.num_params"]) for name, run in found.items()}
    assert sizes["efficientnet-b0"] < sizes["efficientnet-b3"] < sizes["efficientnet-b7"]
    assert sizes["resnet18"] < sizes["resnet50"] and sizes["mobilenet_v3_small"] < sizes["resnet18"]


def build(*overrides, num_classes=10, in_channels=1, image_size=8):
    cfg = compose_cfg(*overrides)
    facts = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    model = create_instance(cfg.model, **{k: v for k, v in facts.items() if k in cfg.model and cfg.model[k] is None})
    return cfg, model


def one_step(model, optimizer):
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_torchvision_model_by_name_fits_the_data():
    from nf_trainer.model.finetune import head_name

    _, model = build("model=torchvision", "model.name=regnet_x_400mf", num_classes=7)
    assert head_name(model) == "fc" and model.fc.out_features == 7
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("model_name,head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"),
                                             ("efficientnet_b0", "_fc")])
def test_freeze_backbone_trains_only_the_head_at_its_own_lr(model_name, head):
    from nf_trainer.model.finetune import build_optimizer, head_name

    cfg, model = build(f"model={model_name}", "model.freeze_backbone=true", "optimizer.lr=0.001", "optimizer.head_lr=0.1",
                       image_size=32)
    assert head_name(model) == head
    optimizer = build_optimizer(cfg.optimizer, model)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    one_step(model, optimizer)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith(head + "."), name


def test_head_lr_without_freezing_gives_two_param_groups():
    from nf_trainer.model.finetune import build_optimizer

    cfg, model = build("model=resnet18", "optimizer=sgd", "optimizer.lr=0.001", "optimizer.head_lr=0.1")
    optimizer = build_optimizer(cfg.optimizer, model)
    assert isinstance(optimizer, torch.optim.SGD) and [g["lr"] for g in optimizer.param_groups] == [0.001, 0.1]
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(list(model.parameters())) - 2, 2]  # fc weight+bias
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)  # the rest of optimizer.* applies to both
    plain = build_optimizer(compose_cfg("model=resnet18").optimizer, model)
    assert len(plain.param_groups) == 1


def test_class_weights_and_label_smoothing():
    cfg = compose_cfg("loss.class_weights=[1.0,2.0,3.0]", "loss.label_smoothing=0.1")
    loss = create_instance(cfg.loss, num_classes=3)
    assert torch.equal(loss.weight, torch.tensor([1.0, 2.0, 3.0])) and loss.label_smoothing == 0.1
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1)
    assert torch.allclose(loss(logits, targets), expected)
    with pytest.raises(NfTrainerError, match="loss.class_weights has 3 values but the data has 10 classes"):
        create_instance(cfg.loss, num_classes=10)


def test_pretrained_offline_fails_in_one_line(out, tmp_path):
    # An unreachable local proxy and an empty weight cache: a download is tried and fails at once, offline or not.
    env = {**ONE_THREAD, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    result = run_main("model=resnet18", "model.pretrained=true", "debug=fast", out=out, env=env, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "cannot download" in line]
    assert "cannot download the pretrained weights of resnet18 (ResNet18_Weights.IMAGENET1K_V1)" in line
    assert f"put that file at {tmp_path}/torch/hub/checkpoints/resnet18-f37072fd.pth or set model.pretrained=false" in line
    if (out / "mlflow.db").exists():
        assert all(r.info.status != "RUNNING" for r in runs(out))


def test_efficientnet_pretrained_advprop_offline_fails_in_one_line(monkeypatch, tmp_path):
    for key, value in {"TORCH_HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                       "no_proxy": "", "NO_PROXY": ""}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(NfTrainerError) as err:
        build("model=efficientnet_b2", "model.pretrained=true", "model.advprop=true")
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot download the pretrained weights of efficientnet-b2 (advprop)")
    assert "adv-efficientnet-b2" in message and "set model.pretrained=false" in message


@pytest.mark.parametrize("overrides,needle", [
    (["model=torchvision", "model.name=resnet181"], "unknown torchvision model 'resnet181'; did you mean resnet18"),
    (["model=resnet18", "model.pretrained=true", "model.weights=IMAGENET9K"],
     "model.weights='IMAGENET9K' is not a weight set of resnet18; choose one of DEFAULT, IMAGENET1K_V1"),
])
def test_bad_model_names_are_one_line_errors(overrides, needle):
    with pytest.raises(NfTrainerError) as err:
        build(*overrides)
    assert needle in str(err.value)
