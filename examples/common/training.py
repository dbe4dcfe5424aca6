"""The training loop: one step, one epoch, and a whole run with logs and checkpoints.

A task gives a loss function ``loss_fn(model, batch) -> (total, losses)``: ``total`` is the
scalar to minimise and ``losses`` the named scalars to log. It moves the batch to the
device and runs the forward pass, under :func:`autocast` where it wants mixed precision.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import Stateful, save_checkpoint
from .distributed import DistInfo, all_reduce_mean
from .run_dir import RunDir

__all__ = ["LossFn", "Progress", "autocast", "fit", "train_one_epoch", "train_step"]

#: ``loss_fn(model, batch) -> (total loss, {name: loss})``.
LossFn = Callable[[nn.Module, Any], "tuple[Tensor, Mapping[str, Tensor]]"]


def autocast(device: torch.device | str, enabled: bool) -> AbstractContextManager:
    """float16 autocast on CUDA when ``enabled``; a no-op elsewhere (the CPU trains in float32)."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def train_step(model: nn.Module, loss_fn: LossFn, batch: Any, optimizer: torch.optim.Optimizer | None, *,
               scaler: torch.amp.GradScaler | None = None, clip_max_norm: float = 0.0) -> dict[str, float]:
    """One forward (``loss_fn``), backward and, when ``optimizer`` is given, optimiser step.

    With a ``scaler`` (AMP) the loss is scaled for the backward pass and the gradients are
    unscaled before clipping, so ``clip_max_norm`` and the logged ``grad_norm`` are in true
    units; the scaler skips steps whose gradients overflowed.

    Args:
        model: the model in training mode (or its DDP wrapper).
        loss_fn: ``loss_fn(model, batch) -> (total, losses)``.
        batch: whatever the loader yields; passed to ``loss_fn`` as it is.
        optimizer: None leaves the gradients in ``.grad`` (for tests and gradient checks).
        scaler: a ``torch.amp.GradScaler`` for mixed precision, or None.
        clip_max_norm: clip the global gradient norm to this; 0 disables clipping.

    Returns:
        ``{"loss": total, "grad_norm": norm before clipping, <each loss>: value}`` as floats.

    Raises:
        FloatingPointError: the total loss is not finite (stops the run instead of
            corrupting the weights); the message lists every loss.
    """
    total, losses = loss_fn(model, batch)
    value = float(total.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value}; losses: { {k: float(v.detach()) for k, v in losses.items()} }")
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        if optimizer is not None:
            scaler.unscale_(optimizer)
    else:
        total.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_max_norm > 0 and optimizer is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_max_norm))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))) \
            if params else 0.0
    if optimizer is not None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    record = {"loss": value, "grad_norm": grad_norm}
    record.update({key: float(v.detach()) for key, v in losses.items()})
    return record


class Progress:
    """A one-line progress bar on stderr: rewritten in place on a terminal, else every ~10%.

    Args:
        total: steps in the epoch.
        description: the text before the bar.
        enabled: False prints nothing (other ranks, ``--quiet``).
    """

    def __init__(self, total: int, description: str, enabled: bool = True, width: int = 24) -> None:
        self.total, self.description, self.enabled, self.width = max(total, 1), description, enabled, width
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, done: int, note: str = "") -> None:
        """Show ``done`` of ``total`` steps, the elapsed time, an estimate of the rest and ``note``."""
        if not self.enabled:
            return
        fraction = min(done / self.total, 1.0)
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.description} [{bar}] {done}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {note}"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(100))
            if done >= self.total:
                sys.stderr.write("\n")
        else:
            decile = int(10 * fraction)
            if decile == self._last_decile:
                return
            self._last_decile = decile
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def train_one_epoch(model: nn.Module, loss_fn: LossFn, loader: Iterable, optimizer: torch.optim.Optimizer,
                    info: DistInfo, epoch: int, *, scaler: torch.amp.GradScaler | None = None,
                    clip_max_norm: float = 0.0, progress: bool = True,
                    on_step: Callable[[int, int, int, Mapping[str, float]], None] | None = None) -> dict[str, float]:
    """Train one epoch; return every logged number averaged over the steps (and the ranks).

    ``on_step(epoch, step, steps, record)`` is called after each step (1-based ``step`` of
    ``steps``) with the step's :func:`train_step` record, e.g. to report progress.
    """
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    total = len(loader)  # type: ignore[arg-type]
    bar = Progress(total, f"epoch {epoch}", enabled=progress and info.is_main)
    for batch in loader:
        record = train_step(model, loss_fn, batch, optimizer, scaler=scaler, clip_max_norm=clip_max_norm)
        steps += 1
        for key, value in record.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(steps, f"loss {record['loss']:.3f}")
        if on_step is not None:
            on_step(epoch, steps, total, record)
    return all_reduce_mean({key: value / max(steps, 1) for key, value in sums.items()}, info)


def fit(*, model: nn.Module, loss_fn: LossFn, loader: Any, optimizer: torch.optim.Optimizer, info: DistInfo,
        run_dir: RunDir, epochs: int, train_model: nn.Module | None = None, lr_scheduler: Any = None,
        scaler: torch.amp.GradScaler | None = None, clip_max_norm: float = 0.0,
        evaluate: Callable[[int], Mapping[str, Any]] | None = None, eval_every: int = 1,
        eval_epochs: Collection[int] | None = None, states: Mapping[str, Stateful | None] | None = None,
        on_epoch_end: Callable[[int], None] | None = None, start_epoch: int = 0,
        stop_after: int | None = None, history: list[dict[str, Any]] | None = None,
        record_extra: Mapping[str, Any] | None = None, args: Any = None,
        describe: Callable[[Mapping[str, Any]], str] | None = None,
        progress: bool = True,
        on_step: Callable[[int, int, int, Mapping[str, float]], None] | None = None,
        on_record: Callable[[Mapping[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train epochs ``start_epoch .. epochs - 1``; log, evaluate and checkpoint after each.

    Per epoch: ``loader.sampler.set_epoch(epoch)`` when the sampler has it, one
    :func:`train_one_epoch`, ``lr_scheduler.step()``, ``on_epoch_end(epoch)`` (e.g. a
    scheme's ``step``), then ``evaluate(epoch)`` every ``eval_every`` epochs and after the
    last one (its dict is merged into the record), one JSON line in ``run_dir.log`` and
    the checkpoint ``run_dir.checkpoint`` (with ``states``, the RNG states and the history).

    Args:
        model: the model (saved in checkpoints); ``train_model`` its DDP wrapper if any.
        loss_fn, optimizer, scaler, clip_max_norm: as in :func:`train_step`.
        loader: the training loader.
        info: from :func:`examples.common.init_distributed`.
        run_dir: where to log and checkpoint (created by the caller on the main rank).
        epochs: length of the whole schedule.
        evaluate: ``evaluate(epoch) -> dict`` merged into the epoch's record, or None.
        eval_every: evaluate every N epochs; 0: only after the last epoch.
        eval_epochs: 1-based epochs to evaluate after (the last one always); replaces
            ``eval_every`` when given.
        states: named ``state_dict`` objects saved in the checkpoint.
        on_epoch_end: called with the finished epoch, after the lr scheduler steps.
        start_epoch / history: where a resumed run continues (:func:`load_checkpoint`).
        stop_after: train at most this many epochs in this call (an interruption on purpose).
        record_extra: constant fields of every record (e.g. ``{"scheme": "branch"}``).
        args: the run's arguments, stored in the checkpoint.
        describe: ``describe(record) -> str`` appended to the per-epoch line on stderr.
        progress: show a progress bar (main rank).
        on_step: passed to :func:`train_one_epoch` (called after every step).
        on_record: called with each epoch's record after it is logged (main rank).

    Returns:
        The history: every record so far, the resumed ones included. A record holds
        ``epoch``, ``lr`` (of the first parameter group, during the epoch), ``train`` (the
        averaged losses), ``train_time_s``, the ``record_extra`` fields and, when it
        evaluated, the evaluation's fields and ``eval_time_s``.
    """
    history = list(history or [])
    train_model = model if train_model is None else train_model
    stop = epochs if stop_after is None else min(epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, stop):
        started = time.perf_counter()
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        means = train_one_epoch(train_model, loss_fn, loader, optimizer, info, epoch, scaler=scaler,
                                clip_max_norm=clip_max_norm, progress=progress, on_step=on_step)
        if lr_scheduler is not None:
            lr_scheduler.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        train_time = time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch, **(record_extra or {}), "lr": lr, "train": means,
                                  "train_time_s": round(train_time, 3)}
        if eval_epochs is not None:
            due = epoch + 1 in eval_epochs
        else:
            due = eval_every > 0 and (epoch + 1) % eval_every == 0
        if evaluate is not None and (epoch == epochs - 1 or due):
            started = time.perf_counter()
            record.update(evaluate(epoch))
            record["eval_time_s"] = round(time.perf_counter() - started, 3)
        history.append(record)
        if info.is_main:
            run_dir.append(record)
            if progress:
                note = describe(record) if describe is not None else ""
                print(f"epoch {epoch}: loss {means.get('loss', float('nan')):.4f}{note} ({train_time:.1f}s)",
                      file=sys.stderr)
            if on_record is not None:
                on_record(record)
        save_checkpoint(run_dir.checkpoint, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                        scaler=scaler, states=states, epoch=epoch, info=info, args=args, history=history)
    return history
