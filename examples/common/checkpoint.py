"""Checkpoints that resume exactly: weights, optimiser, schedules, named states and RNG.

:func:`save_checkpoint` writes, atomically, everything a run needs to continue as if it
had never stopped; :func:`load_checkpoint` puts it back. "Named states" are any objects
with ``state_dict()`` / ``load_state_dict()`` beyond the usual ones, e.g. a hybrid
matching scheme (:class:`hybridmatch.HybridEpoch` knows which phase it is in).
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .distributed import DistInfo, unwrap
from .run_dir import jsonable

__all__ = ["Stateful", "load_checkpoint", "rng_state", "save_checkpoint", "seed_everything", "set_rng_state"]


class Stateful(Protocol):
    """Anything with ``state_dict()`` and ``load_state_dict(state)``."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CUDA included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch (CPU and every CUDA device), Python, numpy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s result (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int,
                    info: DistInfo, lr_scheduler: Any = None, scaler: torch.amp.GradScaler | None = None,
                    states: Mapping[str, Stateful | None] | None = None,
                    args: argparse.Namespace | Mapping[str, Any] | None = None,
                    history: list[dict[str, Any]] | None = None) -> None:
    """Write the run's state after ``epoch`` (0-based) to ``path``.

    A collective when distributed (every rank's RNG state is gathered); only rank 0
    writes. The file is written next to ``path`` and renamed over it, so an interrupted
    save never leaves a half-written checkpoint.

    Args:
        path: the checkpoint file.
        model: the model (a ``DistributedDataParallel`` wrapper is unwrapped).
        optimizer, lr_scheduler, scaler: saved when given.
        epoch: the last finished epoch.
        info: from :func:`examples.common.init_distributed`.
        states: named objects with ``state_dict`` (None values are saved as None).
        args: the run's arguments (stored as JSON-like values).
        history: the per-epoch records so far.
    """
    rng = [rng_state()]
    if info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if not info.is_main:
        return
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "states": {name: (obj.state_dict() if obj is not None else None) for name, obj in (states or {}).items()},
        "epoch": epoch,
        "args": jsonable(args) if args is not None else {},
        "rng": rng,
        "history": list(history or []),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    lr_scheduler: Any = None, scaler: torch.amp.GradScaler | None = None,
                    states: Mapping[str, Stateful | None] | None = None, info: DistInfo | None = None,
                    restore_rng: bool = True,
                    check: Callable[[Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    """Load :func:`save_checkpoint`'s state into the given objects; return the checkpoint dict.

    Args:
        path: the checkpoint file.
        model: receives the weights (a DDP wrapper is unwrapped).
        optimizer, lr_scheduler, scaler: restored when given and saved.
        states: named objects to restore; None values are skipped.
        info: this process's rank (its own RNG state is restored).
        restore_rng: put back the RNG state of this rank; skipped when the checkpoint was
            written by a different number of processes.
        check: called with the checkpoint dict before anything is loaded; raises to refuse it
            (e.g. :func:`examples.common.runner.check_resumable`).

    Returns:
        dict: ``epoch`` (the last finished one), ``history``, ``args`` and the raw states.

    Raises:
        KeyError: a named state was asked for that the checkpoint does not hold (the
            message names it and what the checkpoint has).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if check is not None:
        check(state)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and state.get("lr_scheduler") is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    saved = state.get("states", {})
    for name, obj in (states or {}).items():
        if obj is None:
            continue
        if saved.get(name) is None:
            have = sorted(k for k, v in saved.items() if v is not None)
            raise KeyError(f"{path} holds no state for {name!r} (it has {have}); was it written by a run "
                           f"with different settings?")
        obj.load_state_dict(saved[name])
    if restore_rng and state.get("rng"):
        world, rank = (info.world_size, info.rank) if info is not None else (1, 0)
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
    return state
