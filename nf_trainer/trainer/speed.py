"""Speed settings (`trainer.*`): built once per job by `build`, applied by the loop through `Speed`.

    images, targets = speed.to_device(images, targets, device)   # non-blocking copy, channels_last
    with speed.autocast():                                        # bf16 / fp16 mixed precision
        loss = loss_fn(model(images), targets)
    speed.backward(loss)                                          # fp16 loss scaling, / accumulated batches
    speed.step(optimizer, model)                                  # unscale, clip, step, zero_grad, EMA

Model-wide settings are applied in place once (channels_last weights, torch.compile, EfficientNet's
native SiLU), and `optimizer_kwargs` asks torch.optim for its fused kernels where it has them.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from nf_trainer.model.build import plain_activations

log = logging.getLogger("nf_trainer")

DTYPES = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
FUSED_OPTIMIZERS = {"Adam": ("cpu", "cuda"), "AdamW": ("cpu", "cuda"), "SGD": ("cpu", "cuda"), "Adagrad": ("cpu",)}


class EMA:
    """An exponential moving average of the weights and buffers, evaluated in place of the model.

    The update is torch's `get_ema_multi_avg_fn` (one foreach lerp per dtype), the one
    `torch.optim.swa_utils.AveragedModel` uses; we call it directly because
    `AveragedModel.update_parameters` reads its step counter on the host every step (a sync on CUDA).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)  # same device and memory format
        self._update = get_ema_multi_avg_fn(decay)
        self._groups: dict[torch.dtype, tuple[list, list]] = {}  # dtype -> (EMA tensors, model tensors)
        averaged = [*self.module.parameters(), *self.module.buffers()]
        for ema, live in zip(averaged, [*model.parameters(), *model.buffers()], strict=True):
            ema_list, live_list = self._groups.setdefault(ema.dtype, ([], []))
            ema_list.append(ema.detach())
            live_list.append(live.detach())

    @torch.no_grad()
    def update(self) -> None:
        for ema, live in self._groups.values():
            self._update(ema, live, None)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


@dataclass
class Speed:
    """What the train step applies; `Speed()` is the plain fp32 step."""
    device_type: str = "cpu"
    dtype: torch.dtype | None = None  # autocast dtype; None: full precision
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None  # fp16 only: bf16 needs no loss scaling
    accumulate: int = 1  # batches per optimizer step
    clip_norm: float | None = None
    ema: EMA | None = None

    @property
    def precision(self) -> str:
        """'32', 'bf16' or '16': what `trainer.precision` (auto) chose."""
        return _precision_name(self.dtype)

    def to_device(self, images, targets, device):
        fmt = torch.channels_last if self.channels_last and images.dim() == 4 else torch.preserve_format
        return images.to(device, non_blocking=True, memory_format=fmt), targets.to(device, non_blocking=True)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accumulate > 1:
            loss = loss / self.accumulate  # gradients of the accumulated batches add up to their mean
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        if self.clip_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])


def grad_sync(model: torch.nn.Module, enabled: bool):
    """Under DDP, skip the gradient all-reduce on batches that only accumulate (`no_sync`)."""
    if enabled or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def build(trainer_cfg, model: torch.nn.Module, device: torch.device) -> Speed:
    """Apply the model-wide settings to `model` in place (before DDP wraps it) and return the step's."""
    if trainer_cfg.cudnn_benchmark and not trainer_cfg.deterministic:
        torch.backends.cudnn.benchmark = True  # autotune conv algorithms for the (fixed) input shapes
    plain_activations(model)  # efficientnet-pytorch: native SiLU, faster, compilable
    if trainer_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = EMA(model, trainer_cfg.ema_decay) if trainer_cfg.ema_decay is not None else None
    if trainer_cfg.compile:
        model.compile()  # in place: the state_dict keys stay the same
        if ema is not None:
            ema.module.compile()
    dtype = autocast_dtype(trainer_cfg.precision, device)
    log.info("speed: precision %s, channels_last %s, compile %s%s", _precision_name(dtype), trainer_cfg.channels_last,
             trainer_cfg.compile, f", EMA decay {trainer_cfg.ema_decay}" if ema is not None else "")
    return Speed(
        device_type=device.type, dtype=dtype, channels_last=trainer_cfg.channels_last,
        scaler=torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
        accumulate=trainer_cfg.accumulate_grad_batches, clip_norm=trainer_cfg.gradient_clip_val, ema=ema,
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`trainer.precision` -> the autocast dtype. auto: bf16 on CUDA GPUs that run it natively (Ampere
    and later), fp32 elsewhere. On a CPU with AVX512-BF16, bf16 sped resnet18 up and slowed
    efficientnet_b0 down (docs/performance.md): there it is yours to try with `trainer.precision=bf16`."""
    if precision == "auto":
        native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        precision = "bf16" if native_bf16 else "32"
    return DTYPES[precision]


def optimizer_kwargs(optimizer_cfg, device: torch.device, enabled: bool) -> dict:
    """{'fused': True} for a torch.optim optimizer with a fused kernel on this device: one kernel for the
    whole update instead of a loop over parameters. A `fused` or `foreach` the optimizer config sets wins.
    (Other optimizers already pick their multi-tensor `foreach` path on CUDA by themselves.)"""
    chosen = {**(optimizer_cfg.get("args") or {}), **optimizer_cfg}  # the {module:, args:} form too
    if not enabled or "fused" in chosen or "foreach" in chosen:
        return {}
    target = str(optimizer_cfg.get("_target_") or optimizer_cfg.get("module") or "")
    name = target.removeprefix("torch.optim.")
    return {"fused": True} if device.type in FUSED_OPTIMIZERS.get(name, ()) else {}


def _precision_name(dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)
