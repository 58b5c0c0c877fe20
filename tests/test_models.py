"""Every model preset builds from conf/, fits the data and trains; fine-tuning, class weights and pretrained
weights behave as configured."""
import pytest
import torch

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.model.build import build_model
from nf_trainer.model.finetune import build_optimizer, head_name
from tests.conftest import ROOT, compose_cfg, fails_in_one_line, runs

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
DIGITS = {"num_classes": 10, "in_channels": 1, "image_size": 32}  # the digits, resized to 32 px (ConvNeXt's minimum)


def digits_batch(n: int = 2):
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return torch.nn.functional.interpolate(images, size=32), torch.tensor(data.target[:n])


def test_every_model_preset_fits_the_data_and_takes_a_training_step():
    """Each preset built as a training job builds it (sizes from the data), on real digits: one SGD step."""
    assert {"simple_cnn", "torchvision", "timm", "resnet18", "resnet50", "mobilenet_v3_small", "convnext_tiny",
            *(f"efficientnet_b{i}" for i in range(8))} <= set(PRESETS)
    images, labels = digits_batch()
    sizes = {}
    for preset in PRESETS:
        cfg = compose_cfg(f"model={preset}", "optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=false")
        if "classification" not in (cfg.model.get("_tasks_") or ["classification"]):
            continue  # a detector or segmenter: tests/test_detection_models.py, tests/test_segmentation.py
        torch.manual_seed(0)
        model = build_model(cfg.model, DIGITS).train()
        optimizer = build_optimizer(cfg.optimizer, model)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        logits = model(images)
        assert logits.shape == (2, 10), preset
        loss = torch.nn.functional.cross_entropy(logits, labels)
        assert torch.isfinite(loss), preset
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters()), preset
        sizes[cfg.model.get("name", preset)] = sum(p.numel() for p in model.parameters())
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
    _, model = build("model=torchvision", "model.name=regnet_x_400mf", num_classes=7)
    assert head_name(model) == "fc" and model.fc.out_features == 7
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("model_name,head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"),
                                             ("efficientnet_b0", "_fc"), ("timm", "fc")])
def test_freeze_backbone_trains_only_the_head_at_its_own_lr(model_name, head):
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
    cfg, model = build("model=resnet18", "optimizer=sgd", "optimizer.lr=0.001", "optimizer.head_lr=0.1")
    optimizer = build_optimizer(cfg.optimizer, model)
    assert isinstance(optimizer, torch.optim.SGD) and [g["lr"] for g in optimizer.param_groups] == [0.001, 0.1]
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(list(model.parameters())) - 2, 2]  # fc weight+bias
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)  # the rest of optimizer.* applies to both
    plain = build_optimizer(compose_cfg("model=resnet18").optimizer, model)
    assert len(plain.param_groups) == 1


def test_timm_model_by_name_fits_the_data():
    _, model = build("model=timm", "model.name=convnext_atto", num_classes=7)
    assert head_name(model) == "head.fc" and model.head.fc.out_features == 7  # timm's pretrained_cfg names it
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_timm_pretrained_path_loads_a_local_file_for_other_classes_and_channels(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", num_classes=1000)  # "ImageNet" weights: 1000 classes, RGB
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    _, model = build("model=timm", "model.name=resnet10t", f"model.pretrained_path={tmp_path / 'model.safetensors'}")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)  # the backbone is the file's
    assert model.fc.out_features == 10  # a new head for the data's classes
    stem = model.conv1[0].weight
    assert stem.shape[1] == 1 and torch.allclose(stem, source.conv1[0].weight.sum(dim=1, keepdim=True))  # RGB folded


def test_layer_decay_gives_each_timm_layer_group_a_lower_lr_than_the_one_above():
    cfg, model = build("model=timm", "model.name=resnet10t", "optimizer.lr=0.01", "optimizer.layer_decay=0.5")
    optimizer = build_optimizer(cfg.optimizer, model)
    lrs = sorted({group["lr"] for group in optimizer.param_groups}, reverse=True)
    assert lrs == pytest.approx([0.01 * 0.5 ** k for k in range(len(lrs))]) and len(lrs) > 3
    head = {id(p) for p in model.fc.parameters()}
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups if head & {id(p) for p in g["params"]})
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups if all(p.ndim == 1 for p in g["params"]))
    one_step(model, optimizer)
    with pytest.raises(NfTrainerError, match="optimizer.layer_decay needs a timm model"):
        build_optimizer(cfg.optimizer, build("model=simple_cnn")[1])
    with pytest.raises(NfTrainerError, match="optimizer.head_lr and optimizer.layer_decay both set"):
        build_optimizer(compose_cfg("optimizer.layer_decay=0.5", "optimizer.head_lr=0.1").optimizer, model)


@pytest.mark.parametrize("name", ["lamb", "lion", "adan"])
def test_timm_optimizers_are_optimizer_options(name):
    cfg, model = build(f"optimizer={name}")
    optimizer = build_optimizer(cfg.optimizer, model)
    assert type(optimizer).__module__.startswith("timm.optim") and optimizer.defaults["lr"] == cfg.optimizer.lr
    before = [p.detach().clone() for p in model.parameters()]
    one_step(model, optimizer)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


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
    env = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    line = fails_in_one_line("model=resnet18", "model.pretrained=true", "debug=fast", out=out, env=env)
    assert "cannot download the pretrained weights of resnet18 (ResNet18_Weights.IMAGENET1K_V1)" in line
    assert f"put that file at {tmp_path}/torch/hub/checkpoints/resnet18-f37072fd.pth or set model.pretrained=false" in line
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
    (["model=timm", "model.name=convnext_atom"], "unknown timm model 'convnext_atom'; did you mean convnext_atto"),
    (["model=resnet18", "model.pretrained=true", "model.weights=IMAGENET9K"],
     "model.weights='IMAGENET9K' is not a weight set of resnet18; choose one of DEFAULT, IMAGENET1K_V1"),
])
def test_bad_model_names_are_one_line_errors(overrides, needle):
    with pytest.raises(NfTrainerError) as err:
        build(*overrides)
    assert needle in str(err.value)
