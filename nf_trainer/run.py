"""One job: config -> objects -> engine loop -> MLflow. Called by main.py after Hydra composed the config."""
from __future__ import annotations

import logging
import random
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nf_trainer.config import validate
from nf_trainer.errors import NfTrainerError
from nf_trainer.instantiate import create_instance

log = logging.getLogger("nf_trainer")

RUN_NAME_SKIP = ("model=", "optimizer=", "optimizer.lr=", "mlflow", "paths", "hydra", "resume", "trainer.progress_bar", "rerun")


def run(cfg: DictConfig, extra_tags: dict[str, str] | None = None) -> float | None:
    """Train and log one run; returns the objective (best `objective.metric` over the epochs)."""
    validate(cfg)
    if cfg.mode != "train":  # eval, predict, export: a trained checkpoint (nf_trainer/inference.py)
        from nf_trainer.inference import run_mode
        return run_mode(cfg)
    tracker = open_tracker(cfg.mlflow)  # first: MLflow's imports and store open overlap ours, in a child process
    try:
        return train(cfg, tracker, extra_tags)
    finally:
        tracker.close()


def open_tracker(mlflow_cfg: DictConfig):
    """The run's tracker (nf_trainer/tracking_process.py) on rank 0; a no-op one on the other ranks of a
    torchrun or multi-task SLURM job. Called before torch.distributed is up: the rank comes from the environment."""
    import os

    from nf_trainer.tracking import NullTracker
    from nf_trainer.tracking_process import TrackerProcess

    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) != "0":
        return NullTracker()
    return TrackerProcess(mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name, mlflow_cfg.artifact_location,
                          mlflow_cfg.system_metrics)


def train(cfg: DictConfig, tracker, extra_tags: dict[str, str] | None = None) -> float | None:
    import torch

    from nf_trainer.dataset.inputs import record_data
    from nf_trainer.evaluate import after_fit
    from nf_trainer.failure import tracked_outcome
    from nf_trainer.model.finetune import build_optimizer
    from nf_trainer.tracking import NullTracker, flatten, git_info, redact
    from nf_trainer.trainer import distributed, engine, speed
    from nf_trainer.transforms import build_batch_transform
    from nf_trainer.trainer.checkpoint import load_checkpoint, resolve_checkpoint
    from nf_trainer.trainer.guard import NonFiniteGuard, check_labels
    from nf_trainer.trainer.signals import StopRequest
    from nf_trainer.trainer.watch import resolve_key, resolve_mode

    hydra_cfg = HydraConfig.get()
    ddp, ddp_device = distributed.setup(cfg.trainer.device)
    out_dir = Path(distributed.broadcast(hydra_cfg.runtime.output_dir))  # rank 0's: one set of checkpoints
    if not ddp.is_main:
        log.setLevel(logging.WARNING)  # one voice: rank 0 logs epochs and progress
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = ddp_device or resolve_device(cfg.trainer.device)
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None

    data, loaders, generator = build_data(cfg, device, ddp)
    check_labels(data)
    model = create_instance(cfg.model, **model_inputs(cfg.model, data))
    if ckpt is not None:
        load_weights(model, ckpt, resolve_checkpoint(cfg.resume))
    if ddp.enabled and cfg.trainer.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    step_settings = speed.build(cfg.trainer, model, device)  # in place: channels_last, compile; EMA copy
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg.optimizer, distributed.unwrap(model),  # optimizer.head_lr: the head's own group
                                **speed.optimizer_kwargs(cfg.optimizer, device, cfg.trainer.fused_optimizer))
    scheduler = None
    if cfg.scheduler is not None and cfg.scheduler.get("_target_"):
        scheduler = create_instance(cfg.scheduler, torch.optim.lr_scheduler, optimizer=optimizer)
    loss_fn = create_instance(cfg.loss, torch.nn, **model_inputs(cfg.loss, data)).to(device)
    train_metrics = build_metrics(cfg.metrics, data.num_classes, device, train=True)

    eval_sets = list(data.eval)
    watched = eval_sets + (["avg"] if len(eval_sets) > 1 else [])  # val/avg/<metric>: the mean over eval sets
    known = {f"val/{name}/{m}" for name in watched for m in ["loss", *cfg.metrics]}
    known |= {f"train/{m}" for m in ["loss", *train_metrics]}
    objective_key = resolve_key(cfg.objective.metric, eval_sets, known)
    job = engine.Job(
        model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
        train_loader=loaders["train"], train_generator=generator,
        eval_loaders={name: loaders[name] for name in eval_sets},
        train_metrics=speed.BatchedUpdates(train_metrics),
        eval_metrics={name: build_metrics(cfg.metrics, data.num_classes, device) for name in eval_sets},
        device=device, speed=step_settings, seed=cfg.seed, max_epochs=cfg.trainer.max_epochs,
        limit_train_batches=cfg.trainer.limit_train_batches, limit_eval_batches=cfg.trainer.limit_eval_batches,
        log_every_n_steps=cfg.trainer.log_every_n_steps, progress_bar=cfg.trainer.progress_bar and ddp.is_main,
        out_dir=out_dir, train_sampler=loaders["train"].sampler if ddp.enabled else None, is_main=ddp.is_main,
        best=best_watchers(cfg.trainer.save_best, eval_sets, known),
        early_stop=early_stop_watcher(cfg.trainer.early_stopping, eval_sets, known),
        patience=cfg.trainer.early_stopping.patience,
        extra_state={"classes": data.classes, "config": OmegaConf.to_yaml(redact(OmegaConf.to_container(cfg, resolve=True))),
                     "data": {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size}},
        checkpoint_every_n_steps=cfg.trainer.checkpoint_every_n_steps,
        guard=NonFiniteGuard(cfg.trainer.nonfinite, out_dir / "last.pt"),
        batch_transform=build_batch_transform(cfg.transforms, data.num_classes),
    )
    if ckpt is not None:  # before the MLflow run reopens: a checkpoint that does not fit leaves it untouched
        try:
            engine.restore(job, ckpt)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise NfTrainerError(f"checkpoint '{cfg.resume}' does not fit this optimizer or scheduler "
                                 f"(was it trained with other ones?): {' '.join(str(exc).split())[:300]}") from exc

    if not ddp.is_main and not isinstance(tracker, NullTracker):  # only rank 0 talks to MLflow
        tracker.close()
        tracker = NullTracker()
    overrides = list(hydra_cfg.overrides.task)
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params |= {"data.num_classes": str(data.num_classes), "data.train_size": str(len(data.train)),
               "data.in_channels": str(data.in_channels), "model.num_params": str(sum(p.numel() for p in model.parameters()))}
    params |= {f"data.{name}.size": str(len(ds)) for name, ds in data.eval.items()}
    tags = {"overrides": " ".join(overrides) or "(none)", "output_dir": str(out_dir), **git_info(),
            "device": describe_device(device), "precision": step_settings.precision,  # what trainer.*=auto chose
            **{str(k): str(v) for k, v in cfg.mlflow.tags.items()}, **(extra_tags or {})}
    run_name = cfg.mlflow.run_name or default_run_name(cfg, hydra_cfg.runtime.choices, overrides)
    params["trainer.world_size"] = str(ddp.world_size)
    run_id = distributed.broadcast(tracker.start(run_name, params, tags, resume_run_id=ckpt["run_id"] if ckpt else None))
    job.extra_state["run_id"] = run_id
    # From here the run is RUNNING: it ends FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED whatever happens.
    with tracked_outcome(tracker, out_dir), StopRequest() as job.stop:
        if ckpt is not None:
            log.info("resumed %s at epoch %d, step %d (MLflow run %s)", cfg.resume, job.epoch, job.global_step, run_id)
        log.info("MLflow run %s (%s) in %s; outputs in %s", run_id, run_name, cfg.mlflow.tracking_uri, out_dir)
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(out_dir / ".hydra", "hydra")
        tracker.log_artifact(out_dir / "config_resolved.yaml", "hydra")
        if ddp.is_main:
            record_data(tracker, data, out_dir)  # dataset inputs, data/bad_files count and list
        engine.fit(job, tracker)
        objective = tracker.log_objective(objective_key, resolve_mode(objective_key, cfg.objective.mode))
        after_fit(job, cfg, data.classes, tracker)  # the best model: reports, MLflow model, exports
        log_checkpoints(tracker, out_dir, cfg.mlflow.log_checkpoints)
        tracker.log_artifact(out_dir / f"{hydra_cfg.job.name}.log")
    return objective


def describe_device(device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H200)'."""
    import torch

    if device.type != "cuda":
        return str(device)
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NfTrainerError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
    return device


def build_data(cfg: DictConfig, device, ddp=None):
    """The dataset builder's splits, and a DataLoader per split (train first, then each eval set).

    Under torchrun each rank reads its own shard (DistributedSampler); `loader.batch_size` is per rank.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from nf_trainer.dataset.files import collate_valid
    from nf_trainer.dataset.splits import class_balanced_sampler
    from nf_trainer.sweep import dataloader_start_method
    from nf_trainer.transforms import build_transforms, build_transforms_for_device
    from nf_trainer.transforms.on_device import OnDevice

    lc = cfg.loader
    on_device = device.type == "cuda" if lc.normalize_on_device is None else lc.normalize_on_device
    train_tf, eval_tf, device_tf = (build_transforms_for_device(cfg.transforms) if on_device
                                    else (*build_transforms(cfg.transforms), None))
    data = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    if len(data.train) == 0:
        raise NfTrainerError("the dataset has no train images: check dataset.root, dataset.train_csv, dataset.val_fraction")
    common = dict(
        num_workers=lc.num_workers,
        multiprocessing_context=dataloader_start_method() if lc.num_workers > 0 else None,  # fork under joblib
        pin_memory=device.type == "cuda" if lc.pin_memory is None else lc.pin_memory,
        persistent_workers=lc.persistent_workers and lc.num_workers > 0,
        prefetch_factor=lc.prefetch_factor if lc.num_workers > 0 else None,
        collate_fn=collate_valid,  # drops a sample whose file failed to decode
    )
    generator = torch.Generator()

    def shard(dataset, shuffle: bool):
        if ddp is None or not ddp.enabled:
            return None
        return DistributedSampler(dataset, ddp.world_size, ddp.rank, shuffle=shuffle, seed=cfg.seed, drop_last=lc.drop_last)

    if lc.class_balanced and ddp is not None and ddp.enabled:
        raise NfTrainerError("loader.class_balanced is not supported under torchrun yet: drop it or run in one process")
    sampler = class_balanced_sampler(data.train, data.num_classes, generator) if lc.class_balanced else shard(data.train, lc.shuffle)
    loaders = {"train": DataLoader(data.train, batch_size=lc.batch_size, shuffle=lc.shuffle and sampler is None,
                                   sampler=sampler, drop_last=lc.drop_last, generator=generator, **common)}
    for name, dataset in data.eval.items():
        loaders[name] = DataLoader(dataset, batch_size=lc.eval_batch_size or lc.batch_size, shuffle=False,
                                   sampler=shard(dataset, False), **common)
    if device_tf is not None:
        loaders = {name: OnDevice(loader, device, device_tf) for name, loader in loaders.items()}
    return data, loaders, generator


def model_inputs(model_cfg: DictConfig, data) -> dict:
    """Facts the data knows (num_classes, in_channels, image_size), for the model keys left null."""
    facts = {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size}
    given = model_cfg.get("num_classes")
    if given is not None and given != data.num_classes:
        raise NfTrainerError(f"model.num_classes={given} but the data has {data.num_classes} classes: "
                             f"set model.num_classes=null to take it from the data")
    return {key: value for key, value in facts.items() if key in model_cfg and model_cfg[key] is None}


def load_weights(model, ckpt: dict, path: Path) -> None:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise NfTrainerError(f"checkpoint '{path}' does not fit this model (was it trained with another model=?): {detail}") from exc


def build_metrics(metrics_cfg: DictConfig, num_classes: int, device, train: bool = False):
    """The `metrics` entries as one MetricCollection; for the train set (`train`), without the entries marked
    `eval_only: true` (our key, not torchmetrics': AUROC's and calibration's per-batch cost shows next to a
    small model's step, and on the train set they say little)."""
    import copy

    from omegaconf import open_dict
    from torchmetrics import MetricCollection

    def build(node):  # top_k is capped at the class count: top-5 accuracy still builds for 3 classes
        node = copy.copy(node)  # keeps its key: errors still say 'metrics.<name>'
        with open_dict(node):
            node.pop("eval_only", None)
        return create_instance(node, num_classes=num_classes, **({"top_k": min(node.top_k, num_classes)} if node.get("top_k") else {}))

    chosen = {name: node for name, node in metrics_cfg.items() if not (train and node.get("eval_only", False))}
    return MetricCollection({name: build(node) for name, node in chosen.items()}).to(device)


def best_watchers(save_best, eval_sets: list[str], known: set[str]) -> dict:
    from nf_trainer.trainer.watch import MetricWatcher, resolve_key, resolve_mode

    watchers = {}
    for entry in save_best:
        name, _, mode = str(entry).partition(":")
        key = resolve_key(name, eval_sets, known)
        watchers[name.replace("/", "_")] = MetricWatcher(key, resolve_mode(key, mode or "auto"))
    return watchers


def early_stop_watcher(es_cfg: DictConfig, eval_sets: list[str], known: set[str]):
    from nf_trainer.trainer.watch import MetricWatcher, resolve_key, resolve_mode

    if not es_cfg.enabled:
        return None
    key = resolve_key(es_cfg.monitor, eval_sets, known)
    return MetricWatcher(key, resolve_mode(key, es_cfg.mode), es_cfg.min_delta)


def default_run_name(cfg: DictConfig, choices, overrides: list[str]) -> str:
    """Named after what varies: simple_cnn-adam-lr0.001, plus any other overridden values."""
    parts = [choices.get("model", "model"), choices.get("optimizer", "opt")]
    lr = cfg.optimizer.get("lr")
    if lr is not None:
        parts.append(f"lr{lr:g}")
    for override in overrides:
        if not override.lstrip("+~").startswith(RUN_NAME_SKIP):
            key, _, value = override.lstrip("+~").partition("=")
            parts.append(value if key in choices else f"{key.rsplit('.', 1)[-1]}{value}")
    return "-".join(parts)


def log_checkpoints(tracker, out_dir: Path, which: str) -> None:
    if which == "none":
        return
    for path in sorted(out_dir.glob("best-*.pt" if which == "best" else "*.pt")):
        tracker.log_artifact(path, "checkpoints")
