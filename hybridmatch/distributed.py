"""Loss normalisation across processes.

DETR-style criteria divide each loss by the number of ground-truth objects. With
data parallelism that number must be the *global* one (summed over ranks, then
averaged by world size), or ranks with few objects weigh their losses up. Every
rank must make the same calls, also one whose images hold no objects at all:
otherwise the collective waits forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .errors import InvalidTargetError

__all__ = ["global_num_boxes", "is_distributed"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and initialised in this process.

    Example:
        >>> from hybridmatch.distributed import is_distributed
        >>> is_distributed()                         # no process group in this process
        False
    """
    return dist.is_available() and dist.is_initialized()


def global_num_boxes(
    targets: Sequence[Mapping[str, Any]] | int | float,
    *,
    device: torch.device | str | None = None,
    label_key: str = "labels",
) -> float:
    """The object count to normalise losses by: summed over ranks, per rank, at least 1.

    Args:
        targets: this rank's list of target dicts (objects are counted by
            ``len(target[label_key])``), or this rank's count directly.
        device: where the all-reduce happens; default: the labels' device, or the
            current CUDA device for the NCCL backend, else the CPU.
        label_key (str): the key holding each image's labels.

    Returns:
        ``max(sum over ranks of the count / world size, 1.0)`` as a Python float.
        A collective when ``torch.distributed`` is initialised: call it on every rank.

    Example:
        >>> global_num_boxes([{"labels": torch.tensor([1, 2])}, {"labels": torch.tensor([])}])
        2.0
        >>> global_num_boxes(0)
        1.0
    """
    if isinstance(targets, (int, float)) and not isinstance(targets, bool):
        count = float(targets)
    else:
        if isinstance(targets, Mapping):
            raise InvalidTargetError(
                f"targets must be a list of per-image dicts (one per image, each with {label_key!r}), "
                f"got a single dict with keys {list(targets)}; for one image pass [targets]"
            )
        count = 0.0
        for index, target in enumerate(targets):
            if not isinstance(target, Mapping) or label_key not in target:
                raise InvalidTargetError(
                    f"targets[{index}] has no {label_key!r} entry; pass label_key= to count another key"
                )
            count += len(target[label_key])
            if device is None and isinstance(target[label_key], torch.Tensor):
                device = target[label_key].device
    if not is_distributed():
        return max(count, 1.0)
    if device is None or (dist.get_backend() == "nccl" and torch.device(device).type != "cuda"):
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([count], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return max(float(total.item()) / dist.get_world_size(), 1.0)
