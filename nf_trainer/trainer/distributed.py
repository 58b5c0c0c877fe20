"""torch.distributed, when main.py runs under torchrun: one process per device, rank 0 speaks.

Outside torchrun every helper here is a no-op, so the engine reads the same either way.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """torchrun's variables, or a multi-task submitit/SLURM job (whose variables submitit translates)."""
    if "LOCAL_RANK" not in os.environ and "SUBMITIT_FOLDER" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment  # the optional cluster extra: only under SLURM

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str) -> tuple[Dist, torch.device | None]:
    """Join the process group torchrun describes: nccl on GPU, gloo on CPU. Returns (Dist, device or None)."""
    if not launched_by_torchrun():
        return Dist(), None
    info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(cleanup)
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_across_ranks(*tensors: torch.Tensor) -> None:
    """In-place sum over ranks (loss sums, sample counts); nothing to do in a single process."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (of any length along dim 0), concatenated in rank order on every rank, on the CPU: what
    all the ranks' shards of a set give; the tensor itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def rank0_decides(flag: bool) -> bool:
    """Every rank follows rank 0's decision (early stopping), so no rank waits alone in a collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def broadcast(value):
    """Rank 0's value on every rank (e.g. its output dir and MLflow run id)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoints the others will read)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, inside DistributedDataParallel (checkpoints hold the plain state dict)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
