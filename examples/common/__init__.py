"""What every task example needs: distributed set-up, training loop, checkpoints, logs, CLI.

The detection example (:mod:`examples.detection`) is built on it; pose and segmentation
examples extend it the same way. A task supplies its model, data loaders, a loss function
``loss_fn(model, batch) -> (total loss, {name: loss})`` and, optionally, an evaluation
``evaluate(epoch) -> dict``; this package does the rest:

* :mod:`.distributed`: :func:`init_distributed` (``torchrun`` -> process group, device),
  :class:`DistInfo`, :func:`all_reduce_mean`, :func:`cleanup_distributed`;
* :mod:`.training`: :func:`train_step` (forward via ``loss_fn``, backward, AMP scaling,
  gradient clipping, a finite-loss check), :func:`train_one_epoch` (means over steps and
  ranks, :class:`Progress` bar), :func:`fit` (epochs, lr schedule, evaluation, JSON-lines
  log and a checkpoint after every epoch, stop and resume);
* :mod:`.checkpoint`: :func:`save_checkpoint` / :func:`load_checkpoint` with every rank's
  RNG state and any ``state_dict`` objects (a hybrid scheme), :func:`seed_everything`;
* :mod:`.run_dir`: :class:`RunDir` (where a run writes: ``checkpoint.pth``,
  ``log.jsonl``, ``args.json``), :func:`append_jsonl` / :func:`read_jsonl`;
* :mod:`.cli`: :func:`training_parser` (the arguments every task shares) and
  :func:`check_training_args`.

Exact resume: a run stopped after epoch ``e`` (``--stop-after``) and resumed from its
checkpoint reads the same images in the same order, draws the same augmentations and
ends with the same weights as an uninterrupted run, because the sampler's order depends
only on (seed, epoch) and the checkpoint restores the model, optimiser, lr scheduler,
GradScaler, the named states and the RNG states of every rank.
"""

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from .cli import check_training_args, training_parser
from .distributed import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed, unwrap
from .run_dir import RunDir, append_jsonl, read_jsonl
from .training import Progress, autocast, fit, train_one_epoch, train_step

__all__ = [
    "DistInfo",
    "Progress",
    "RunDir",
    "all_reduce_mean",
    "append_jsonl",
    "autocast",
    "check_training_args",
    "cleanup_distributed",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "read_jsonl",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "train_one_epoch",
    "train_step",
    "training_parser",
    "unwrap",
]
