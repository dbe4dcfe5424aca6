"""Data-parallel set-up: one process per device, started by ``torchrun`` or alone.

Launched by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in the environment)
each process joins a process group (NCCL on GPU, gloo on the CPU); started plainly it runs
alone. Losses normalised by a global count (:func:`hybridmatch.global_num_boxes`) make the
averaged gradients of ``DistributedDataParallel`` the gradient of the whole batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "all_reduce_mean", "cleanup_distributed", "init_distributed", "unwrap"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs and checkpoints."""
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), else run alone.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None (CUDA when available). Under
            ``torchrun`` with CUDA each process takes the GPU ``LOCAL_RANK``.

    Returns:
        DistInfo. A process group already initialised (e.g. by a test) is used as it is.
    """
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    else:
        rank, world, local = 0, 1, 0
    if want_cuda:
        dev = torch.device("cuda", local) if device in (None, "cuda") else torch.device(device)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, world, local, dev)


def all_reduce_mean(values: Mapping[str, float], info: DistInfo) -> dict[str, float]:
    """The mean of each named number over the ranks (a collective; alone: a copy).

    Args:
        values: this rank's numbers; every rank must pass the same keys.
        info: from :func:`init_distributed`.

    Returns:
        dict[str, float]: the same keys, averaged in float64.
    """
    if not info.distributed:
        return dict(values)
    keys = sorted(values)
    device = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return {k: float(v) / info.world_size for k, v in zip(keys, packed.tolist())}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
