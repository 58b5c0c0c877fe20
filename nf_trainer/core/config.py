"""The config schema and resolvers, registered before Hydra composes `conf/`.

Typed dataclasses for the core keys turn typos, wrong types and bad values into one-line errors
before any heavy import (torch, mlflow). They are also the one place where the core keys' defaults
live (`conf/` sets only what an option changes). Group options (optimizer, model, ...) stay free-form
`_target_` nodes: their shape belongs to the class they build.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.option_ranges import option_checks
from nf_trainer.core.paths import project_root
from nf_trainer.core.task_fit import check_task_fit


@dataclass
class EarlyStoppingConf:
    enabled: bool = True
    monitor: str = "${objective.metric}"  # a metric name: full ('val/digits/loss') or short ('loss', first eval set)
    mode: str = "${objective.mode}"  # auto: min for loss-like names, max otherwise
    patience: int = 5
    min_delta: float = 0.0


PRECISIONS = ("auto", "32", "bf16", "16")  # trainer.precision: autocast dtype (nf_trainer/trainer/speed.py)
TRACKERS = ("auto", "process", "inline")  # mlflow.tracker
MODES = ("train", "eval", "predict", "export")
EXPORT_FORMATS = ("torchscript", "onnx")


@dataclass
class TrainerConf:
    max_epochs: int = 20
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    limit_train_batches: Optional[int] = None  # cap batches per epoch (debugging)
    limit_eval_batches: Optional[int] = None
    log_every_n_steps: int = 10  # per-step train loss, logged asynchronously
    # one best-<name>.pt each ('name:min|max'); the first is the model the run ends with (reports, MLflow model)
    save_best: List[str] = field(default_factory=lambda: ["${objective.metric}"])
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)
    deterministic: bool = False  # torch's deterministic algorithms: bitwise-exact resume on CPU
    progress_bar: bool = True
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all ranks
    checkpoint_every_n_steps: int = 0  # also write last.pt every N steps, resumable mid-epoch (0: epoch ends only)
    pictures: int = 16  # val images drawn with the predictions at each evaluation, logged by step (0: none)
    nonfinite: str = "stop"  # a NaN/Inf training loss: stop (the run FAILED, last good checkpoint kept) | skip the batch
    # speed (nf_trainer/trainer/speed.py, docs/performance.md)
    precision: str = "auto"  # auto | 32 | bf16 | 16 (autocast; auto: bf16 on CUDA GPUs that have it, else 32)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (pays off on long runs; compiling takes a while)
    cudnn_benchmark: bool = True  # off under deterministic=true
    fused_optimizer: bool = True  # torch.optim's fused kernels where the optimizer has one (a fused/foreach you set wins)
    accumulate_grad_batches: int = 1  # batches per optimizer step
    gradient_clip_val: Optional[float] = None  # clip the gradient norm to this value
    ema_decay: Optional[float] = None  # e.g. 0.999: keep an EMA of the weights, evaluate and checkpoint it


@dataclass
class LoaderConf:
    batch_size: int = 64
    eval_batch_size: Optional[int] = None  # defaults to batch_size
    num_workers: int = 0
    pin_memory: Optional[bool] = None  # None: on when training on CUDA
    normalize_on_device: Optional[bool] = None  # collate uint8, ToDtype/Normalize on the device; None: on CUDA
    # sets held in memory (digits, CIFAR, MNIST, synthetic, cached folders): batches gathered on the device and
    # transformed whole, random parameters per sample; false: a DataLoader running the transforms per sample
    batched_transforms: bool = True
    decode: str = "auto"  # image files: auto (gpu on CUDA) | cpu (workers decode) | gpu (workers read bytes, nvJPEG decodes)
    persistent_workers: bool = False
    prefetch_factor: Optional[int] = None  # None: PyTorch's default
    drop_last: bool = False
    shuffle: bool = True  # the train set; debug=overfit turns it off
    class_balanced: bool = False  # draw train samples so every class comes up equally often (imbalanced sets)


@dataclass
class MlflowConf:  # mlflow=team (conf/mlflow/team.yaml) points these at a tracking server
    # MLflow's own variables win over the defaults when set; `mlflow.tracking_uri=` on the command line wins over both.
    # The default store is absolute: it never depends on the cwd.
    tracking_uri: str = "${oc.env:MLFLOW_TRACKING_URI,'sqlite:///${paths.output_root}/mlflow.db'}"
    experiment_name: str = "${oc.env:MLFLOW_EXPERIMENT_NAME,nf_trainer}"
    artifact_location: Optional[str] = "${paths.output_root}/mlartifacts"  # local stores only
    run_name: Optional[str] = None  # None: named after what varies (model-optimizer-lr...)
    tags: Any = field(default_factory=dict)
    log_checkpoints: str = "best"  # best | all | none: which of the run's .pt files become artifacts
    log_model: bool = True  # the best model, once at the end, with mlflow.pytorch.log_model (a few seconds)
    registered_model_name: Optional[str] = None  # a name: also register that model in the Model Registry
    registered_model_alias: Optional[str] = None  # e.g. champion: that alias moves to the new version
    system_metrics: bool = False  # CPU, memory, disk, network (and GPU) as system/* metrics; needs psutil
    # where MLflow's calls run: process (a child process: its imports overlap the job's start and its writes
    # never take the loop's time) | inline (this process) | auto: process, unless this process has MLflow
    # loaded already (a sequential sweep's jobs, a notebook), where a child would only add its start
    tracker: str = "auto"


@dataclass
class ObjectiveConf:
    # what main.py returns and sweeps optimize: the best value of this metric over the epochs. By default the task's
    # monitor (classification: loss, detection: map), which early stopping and the best checkpoint follow too
    metric: str = "${task.monitor}"
    mode: str = "auto"  # auto: min for loss-like names, max otherwise


@dataclass
class PathsConf:
    root: str = "${nf.root:}"
    output_root: str = "${paths.root}/outputs"


@dataclass
class PredictConf:  # mode=predict (nf_trainer/jobs/predict.py)
    input: Optional[str] = None  # a folder of images, searched recursively
    output: Optional[str] = None  # the CSV; None: predictions.csv in the job's output dir
    topk: int = 5
    batch_size: Optional[int] = None  # None: loader.eval_batch_size or loader.batch_size


@dataclass
class Config:
    seed: int = 42
    resume: Optional[str] = None  # a checkpoint (or a run's output dir) to continue, in the same MLflow run
    mode: str = "train"  # train | eval | predict | export (eval/predict/export read `ckpt`)
    ckpt: Optional[str] = None  # a checkpoint file, or a run's output dir (its last.pt)
    predict: PredictConf = field(default_factory=PredictConf)
    export: List[str] = field(default_factory=list)  # torchscript, onnx: written for the best model
    rerun: Optional[str] = None  # an MLflow run id: main.py recomposes that run's config (nf_trainer/cli/rerun.py)
    objective: ObjectiveConf = field(default_factory=ObjectiveConf)
    paths: PathsConf = field(default_factory=PathsConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    loader: LoaderConf = field(default_factory=LoaderConf)
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    task: Any = MISSING  # classification | detection | a Task of your own (conf/task/, docs/tasks.md)
    optimizer: Any = MISSING
    scheduler: Any = None
    loss: Any = None  # null where the model computes its own losses (torchvision detectors)
    model: Any = MISSING
    dataset: Any = MISSING
    transforms: Any = MISSING
    metrics: Any = None  # ~metrics: none (a task of your own may build its own)


def _run_dir() -> str:
    """A run's folder under runs/: a timestamp. Under torchrun, ranks > 0 keep only their log, in
    ddp-rank<N>/, since rank 0's folder holds the run (checkpoints, config)."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        return f"ddp-rank{rank}"
    now = time.time()
    return time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(now)) + f"-{int(now % 1 * 1e6):06d}"


def register_configs() -> None:
    """Register the schema and the `nf.root` resolver (idempotent)."""
    if not OmegaConf.has_resolver("nf.root"):
        OmegaConf.register_new_resolver("nf.root", lambda: str(project_root()))
        OmegaConf.register_new_resolver("nf.run_dir", _run_dir, use_cache=True)
    ConfigStore.instance().store(name="schema", node=Config)


def validate(cfg, choices: dict[str, str] | None = None) -> None:
    """Value checks the schema's types cannot express; run before any heavy import. `choices`: Hydra's group ->
    chosen option, which the messages name."""
    checks = [
        (cfg.trainer.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {cfg.trainer.max_epochs}"),
        (cfg.loader.batch_size >= 1, f"loader.batch_size must be >= 1, got {cfg.loader.batch_size}"),
        (cfg.loader.num_workers >= 0, f"loader.num_workers must be >= 0, got {cfg.loader.num_workers}"),
        (cfg.trainer.early_stopping.patience >= 1, "trainer.early_stopping.patience must be >= 1"),
        (cfg.trainer.log_every_n_steps >= 0, "trainer.log_every_n_steps must be >= 0 (0 turns per-step logging off)"),
        (cfg.trainer.pictures >= 0, f"trainer.pictures must be >= 0 (0 draws none), got {cfg.trainer.pictures}"),
        (cfg.trainer.checkpoint_every_n_steps >= 0, "trainer.checkpoint_every_n_steps must be >= 0 (0: at epoch ends only)"),
        (cfg.trainer.nonfinite in ("stop", "skip"), f"trainer.nonfinite must be stop or skip, not '{cfg.trainer.nonfinite}'"),
        (cfg.loader.decode in ("auto", "cpu", "gpu"), f"loader.decode must be one of auto, cpu, gpu, not '{cfg.loader.decode}'"),
        (cfg.loader.eval_batch_size is None or cfg.loader.eval_batch_size >= 1,
         f"loader.eval_batch_size must be >= 1 or null, got {cfg.loader.eval_batch_size}"),
        (cfg.mlflow.tracker in TRACKERS,
         f"mlflow.tracker must be one of {', '.join(TRACKERS)}, got '{cfg.mlflow.tracker}'"),
        (cfg.trainer.precision in PRECISIONS,
         f"trainer.precision must be one of {', '.join(PRECISIONS)}, got '{cfg.trainer.precision}'"),
        (cfg.trainer.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches must be >= 1"),
        (cfg.trainer.gradient_clip_val is None or cfg.trainer.gradient_clip_val > 0,
         "trainer.gradient_clip_val must be > 0 or null"),
        (cfg.trainer.ema_decay is None or 0 < cfg.trainer.ema_decay < 1,
         "trainer.ema_decay must be between 0 and 1 (exclusive) or null"),
        (not cfg.mlflow.registered_model_alias or cfg.mlflow.registered_model_name,
         "mlflow.registered_model_alias needs mlflow.registered_model_name=NAME (the registered model it names a version of)"),
    ]
    checks += option_checks(cfg)  # optimizer.lr, scheduler.step_size, ... (core/option_ranges.py)
    fraction = cfg.dataset.get("val_fraction")
    if isinstance(fraction, (int, float)):
        checks.append((0 < fraction < 1, f"dataset.val_fraction must be between 0 and 1 (exclusive), got {fraction}"))
    for limit in ("limit_train_batches", "limit_eval_batches"):
        value = cfg.trainer[limit]
        checks.append((value is None or value >= 1, f"trainer.{limit} must be >= 1 or null, got {value}"))
    checks += [
        (cfg.mode in MODES, f"mode must be one of {', '.join(MODES)}, got '{cfg.mode}'"),
        (cfg.mode == "train" or cfg.ckpt, f"mode={cfg.mode} needs ckpt=PATH (a checkpoint file or a run's output dir)"),
        (cfg.mode != "train" or not cfg.ckpt, "ckpt= is read by mode=eval|predict|export; to continue training use resume="),
        (cfg.mode != "predict" or cfg.predict.input, "mode=predict needs predict.input=DIR (a folder of images)"),
        (cfg.predict.topk >= 1, f"predict.topk must be >= 1, got {cfg.predict.topk}"),
        *((f in EXPORT_FORMATS, f"export: unknown format '{f}'; choose from {', '.join(EXPORT_FORMATS)}") for f in cfg.export),
    ]
    for ok, message in checks:
        if not ok:
            raise NfTrainerError(message)
    check_task_fit(cfg, choices)  # task=detection model=resnet18 (core/task_fit.py)
    # top-level keys of your own are fine (`+db.password=...`, read through ${db.password} by your configs)
    added = [key for name in cfg if isinstance(cfg._get_node(name), DictConfig)
             for key in unread_keys(cfg._get_node(name), str(name))]
    if added:
        raise NfTrainerError(f"{added[0]} is not a key of {added[0].rpartition('.')[0] or 'the config'}, and nothing "
                             f"would read it: drop +{added[0]}= (--help lists the keys)")


def unread_keys(node, path: str = "") -> list[str]:
    """Keys added with `+key=value` under a node the schema types (trainer, loader, ...: Hydra adds them anyway),
    which no code reads. Group options (`_target_` nodes) take any key: their class decides."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []
    names = {f.name for f in dataclasses.fields(schema)}
    found = []
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            found.append(full)
        elif isinstance(node._get_node(key), DictConfig):
            found += unread_keys(node._get_node(key), full)
    return found
