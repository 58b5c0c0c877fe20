"""Every detection model option builds offline from conf/ with num_classes from the data and trains on
torchvision's contract; the tiny detector predicts in input pixels; pretrained weights are opt-in, from the hub
(one line offline) or a local file."""
import pytest
import torch

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.shapes import ShapesSpec, detection_target, render
from nf_trainer.model.build import build_model
from tests.conftest import ROOT, compose_cfg

FACTS = {"num_classes": 4, "in_channels": 3, "image_size": 64}  # three shapes and the background
OPTIONS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")
                 if "detection" in compose_cfg(f"model={p.stem}").model.get("_tasks_", []))
FEW_ROIS = ["+model.options.rpn_pre_nms_top_n_train=100", "+model.options.rpn_post_nms_top_n_train=50",
            "+model.options.box_batch_size_per_image=16"]
SMALL = {  # keep the big models' steps tiny: they resize inputs to min_size inside; Faster R-CNN's 512 RoIs an image
    # (RoIAlign's backward) cost seconds a step on a CPU
    "fasterrcnn_mobilenet_v3_large_320_fpn": ["model.min_size=64", "model.max_size=64", *FEW_ROIS],
    "torchvision_detection": ["model.min_size=64", "model.max_size=64", *FEW_ROIS],
    "retinanet_resnet18_fpn": ["model.min_size=64", "model.max_size=64"],
    "fcos_resnet18_fpn": ["model.min_size=64", "model.max_size=64"],
}
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty weight cache and an unreachable proxy: any download is tried and fails at once."""
    for key, value in {"TORCH_HOME": str(tmp_path / "torch"), **OFFLINE}.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "torch"


def shapes_batch(n: int = 2):
    """(images float in 0..1, targets with labels 1..K) of real shapes samples, as the task hands them over."""
    samples = [detection_target(render(ShapesSpec(background_only=0.0), "val", i)) for i in range(n)]
    return ([image.float() / 255 for image, _ in samples],
            [{"boxes": target["boxes"], "labels": target["labels"] + 1} for _, target in samples])


def train_step(model, images, targets) -> dict:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def test_every_detection_option_builds_offline_and_takes_a_train_step(offline):
    assert {"tiny_detector", "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large",
            "retinanet_resnet18_fpn", "fcos_resnet18_fpn", "torchvision_detection"} <= set(OPTIONS)
    images, targets = shapes_batch()
    for option in OPTIONS:
        cfg = compose_cfg(f"model={option}", *SMALL.get(option, []))
        assert cfg.model.num_classes is None, option  # the data's, with the background
        torch.manual_seed(0)
        model = build_model(cfg.model, FACTS)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        losses = train_step(model, images, targets)
        assert losses and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values()), option
        assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters()), option
        model.eval()
        with torch.no_grad():
            (prediction, _) = model(images)
        assert set(prediction) == {"boxes", "scores", "labels"}, option
        assert set(prediction["labels"].tolist()) <= {1, 2, 3}, option  # num_classes=4: background and three classes
    assert not offline.exists()  # nothing was downloaded, or tried to be cached


def test_tiny_detector_returns_a_loss_dict_and_boxes_in_the_input_pixels():
    model = build_model(compose_cfg("model=tiny_detector", "+model.options.box_score_thresh=0.0").model, FACTS)
    images, targets = shapes_batch()
    losses = train_step(model, images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    model.eval()
    big = torch.nn.functional.interpolate(images[0][None], size=(128, 192))[0]  # resized to 64 x 96 inside
    with torch.no_grad():
        small, large = model([images[0], big])
    assert len(small["boxes"]) and len(large["boxes"])
    assert small["boxes"].max() <= 64 and small["boxes"].min() >= 0
    assert large["boxes"][:, 2].max() <= 192 and large["boxes"][:, 3].max() <= 128
    assert large["boxes"][:, 2].max() > 100  # mapped back to the input's pixels, not the model's 64 x 96
    assert model.transform.min_size == (64,) and model.transform.max_size == 64


def test_pretrained_offline_fails_in_one_line(offline):
    cfg = compose_cfg("model=fasterrcnn_mobilenet_v3_large_320_fpn", "model.pretrained=true")
    with pytest.raises(NfTrainerError) as err:
        build_model(cfg.model, FACTS)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot download the pretrained weights of fasterrcnn_mobilenet_v3_large_320_fpn "
                              "(FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1) from https://download.pytorch.org/")
    assert f"put that file at {offline}/hub/checkpoints/fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth" in message
    assert message.endswith("or set model.pretrained=false")
    with pytest.raises(NfTrainerError, match=r"^cannot download the pretrained weights of resnet18 \(ResNet18_Weights"):
        build_model(compose_cfg("model=retinanet_resnet18_fpn", "model.pretrained=true").model, FACTS)


def test_pretrained_path_starts_from_a_local_file_for_other_classes(tmp_path, offline):
    """Weights saved for 6 classes start a 4-class model: all but the class head's tensors are copied."""
    small = ["model=retinanet_resnet18_fpn", "model.min_size=64", "model.max_size=64"]
    source = build_model(compose_cfg(*small).model, {**FACTS, "num_classes": 6})
    torch.save({"model": source.state_dict()}, tmp_path / "last.pt")  # an nf_trainer checkpoint
    model = build_model(compose_cfg(*small, f"model.pretrained_path={tmp_path / 'last.pt'}").model, FACTS)
    own, theirs = model.state_dict(), source.state_dict()
    fresh = [k for k in own if own[k].shape != theirs[k].shape]
    assert fresh == ["head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"]
    assert all(torch.equal(own[k], theirs[k]) for k in own if k not in fresh)
    assert model.head.classification_head.num_classes == 4
    train_step(model, *shapes_batch())
    with pytest.raises(NfTrainerError, match="is not a file"):
        build_model(compose_cfg(*small, f"model.pretrained_path={tmp_path / 'none.pt'}").model, FACTS)


@pytest.mark.parametrize("overrides,needle", [
    (["model=torchvision_detection", "model.name=fasterrcnn_resnet5"],
     "unknown torchvision detection model 'fasterrcnn_resnet5'; did you mean fasterrcnn_resnet50_fpn"),
    (["model=torchvision_detection", "model.name=maskrcnn_resnet50_fpn"],
     "maskrcnn_resnet50_fpn trains on instance masks or keypoints, which detection targets do not carry"),
    (["model=torchvision_detection", "model.name=ssd300_vgg16", "model.pretrained=true", "model.weights=COCO_V9"],
     "model.weights='COCO_V9' is not a weight set of ssd300_vgg16; choose one of DEFAULT, COCO_V1"),
    (["model=retinanet_resnet18_fpn", "model.backbone=vgg16"], "model.backbone must be one of resnet18, resnet34"),
])
def test_bad_detection_options_are_one_line_errors(overrides, needle):
    with pytest.raises(NfTrainerError) as err:
        build_model(compose_cfg(*overrides).model, FACTS)
    assert needle in str(err.value) and "\n" not in str(err.value)
