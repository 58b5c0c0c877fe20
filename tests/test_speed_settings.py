"""Speed settings (trainer.precision, channels_last, compile, fused_optimizer, accumulate_grad_batches,
gradient_clip_val, ema_decay): each one switches, and the run still trains, evaluates and logs."""
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nf_trainer.core.instantiate import create_instance
from nf_trainer.model.build import build_model, data_facts
from nf_trainer.trainer.metrics import BatchedUpdates
from nf_trainer.trainer.speed import autocast_dtype, optimizer_kwargs
from nf_trainer.transforms import build_transforms
from tests.conftest import metric_history, only_run, run_here, runs

SHORT = ("trainer.max_epochs=1", "trainer.limit_eval_batches=2", "trainer.early_stopping.enabled=false")


def finished_run(out):
    run = only_run(out)
    assert run.info.status == "FINISHED"
    return run


def last_checkpoint(run):
    return torch.load(f"{run.data.tags['output_dir']}/last.pt", weights_only=True)


def test_bf16_accumulation_and_clipping_step_once_per_accumulated_batches(out):
    # 5 batches, 3 per optimizer step: steps after batches 3 and 5 (an epoch's last batch always steps)
    run_here(*SHORT, "trainer.limit_train_batches=5", "trainer.precision=bf16", "trainer.accumulate_grad_batches=3",
             "trainer.gradient_clip_val=0.5", "optimizer=adam", out=out)
    run = finished_run(out)
    ckpt = last_checkpoint(run)
    assert ckpt["global_step"] == 5
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {2.0}  # Adam's own update count
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True  # trainer.fused_optimizer (default) on CPU
    params = run.data.params
    keys = ("trainer.precision", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val")
    assert [params[k] for k in keys] == ["bf16", "3", "0.5"]
    for key in ("train/loss", "train/accuracy", "val/digits/loss", "val/digits/f1"):
        (point,) = metric_history(out, run.info.run_id, key)
        assert point.step == 1 and 0 <= point.value < 5


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "outputs"
    out.mkdir()
    run_here("trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.early_stopping.enabled=false",
             "trainer.ema_decay=0.5", "trainer.channels_last=false", "trainer.fused_optimizer=false", out=out)
    return out, finished_run(out)


def test_ema_weights_are_checkpointed_and_evaluated(ema_run):
    out, run = ema_run
    ckpt = last_checkpoint(run)
    ema = ckpt["speed"]["ema"]
    assert ema.keys() == ckpt["model"].keys()
    assert not all(torch.equal(ema[k], ckpt["model"][k]) for k in ema)

    # the logged validation loss is the EMA weights' loss on the whole validation set, not the model's
    cfg = OmegaConf.load(f"{run.data.tags['output_dir']}/config_resolved.yaml")
    data = create_instance(cfg.dataset, train_transform=None, eval_transform=build_transforms(cfg.transforms)[1])
    (val,) = data.eval.values()
    images, labels = (torch.stack(column) for column in zip(*(val[i] for i in range(len(val)))))

    def val_loss(state):
        model = build_model(cfg.model, data_facts(data))
        model.load_state_dict(state)
        with torch.inference_mode():
            return torch.nn.functional.cross_entropy(model.eval()(images), labels).item()

    logged = metric_history(out, run.info.run_id, "val/digits/loss")[-1].value
    assert val_loss(ema) == pytest.approx(logged, rel=1e-4)
    assert val_loss(ckpt["model"]) != pytest.approx(logged, rel=1e-4)


@pytest.mark.slow  # torch.compile takes about half a minute on 2 cores
def test_fp16_and_compile_still_train_and_log(out):
    run_here(*SHORT, "trainer.limit_train_batches=3", "trainer.precision=16", "trainer.compile=true", "optimizer=sgd",
             out=out)
    run = finished_run(out)
    (loss,) = metric_history(out, run.info.run_id, "val/digits/loss")
    assert 0 < loss.value < 5
    ckpt = last_checkpoint(run)
    assert ckpt["speed"]["scaler"]["scale"] > 0  # fp16 loss scaling is on, and saved for resume
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # compiled in place: plain state_dict keys


# Checks of the pieces the runs above rely on (bad speed values: tests/test_config.py).

def test_fused_optimizer_only_where_torch_has_one():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    node = OmegaConf.create
    assert optimizer_kwargs(node({"_target_": "torch.optim.AdamW"}), cpu, True) == {"fused": True}
    assert optimizer_kwargs(node({"_target_": "SGD"}), cuda, True) == {"fused": True}
    assert optimizer_kwargs(node({"_target_": "torch.optim.Adagrad"}), cuda, True) == {}  # fused Adagrad: CPU only
    assert optimizer_kwargs(node({"_target_": "torch.optim.RMSprop"}), cpu, True) == {}
    assert optimizer_kwargs(node({"_target_": "torch.optim.AdamW", "fused": False}), cpu, True) == {}
    assert optimizer_kwargs(node({"_target_": "torch.optim.AdamW"}), cpu, False) == {}


def test_auto_precision_is_fp32_on_cpu():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_batched_metric_updates_give_the_same_values():
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    direct = MetricCollection({"acc": MulticlassAccuracy(5, average="micro"), "f1": MulticlassF1Score(5, average="macro")})
    batched = BatchedUpdates(direct.clone(), max_elements=4 * 8 * 5)  # a flush every 4 batches
    generator = torch.Generator().manual_seed(0)
    for size in [8] * 9 + [3]:  # a short last batch, and batches still waiting at compute()
        logits, labels = torch.randn(size, 5, generator=generator), torch.randint(5, (size,), generator=generator)
        direct.update(logits, labels)
        batched.update(logits, labels)
    assert {k: v.item() for k, v in batched.compute().items()} == {k: v.item() for k, v in direct.compute().items()}
    batched.reset()
    assert batched.waiting == [] and batched.metrics["acc"].tp.sum() == 0


def test_deterministic_mode_keeps_the_epoch_time(out):
    """trainer.deterministic=true used to make the default metrics count with a comparison mesh (binned AUROC:
    30 s for a digits evaluation instead of 0.03 s). The precise figure: benchmarks/parity.py --case deterministic."""
    epoch = re.compile(r"epoch 1/1 .*\((\d+\.\d)s\)")
    common = ("trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.early_stopping.enabled=false",
              "trainer.progress_bar=false")  # the whole val set: 6 batches, every default metric
    run_here(*common, out=out)
    run_here(*common, "trainer.deterministic=true", out=out)
    plain, deterministic = (float(epoch.search((Path(r.data.tags["output_dir"]) / "main.log").read_text()).group(1))
                            for r in runs(out))
    assert deterministic < 3 * max(plain, 0.2), (plain, deterministic)
