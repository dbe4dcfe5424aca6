"""What every task example shares: the runner, the paired comparison, the loop, checkpoints, helpers.

A task (:mod:`examples.detection`, :mod:`examples.pose`, :mod:`examples.segmentation`) is
a spec, ``examples/<task>/task.py``: a :class:`~examples.common.runner.Task` subclass
(data, model configuration, model, criterion, evaluator, its arguments and defaults) and a
:class:`~examples.common.comparison.Comparison` subclass (the paired demo's data options).
This package does the rest, the same way for every task:

* :mod:`.runner`: :func:`~examples.common.runner.run` and the command line of
  ``python -m examples.<task>.train``; one resume rule
  (:func:`~examples.common.runner.check_resumable`: a checkpoint of another scheme or
  setting is refused); :func:`~examples.common.runner.build_optimizer`,
  :func:`~examples.common.runner.detr_loss`;
* :mod:`.comparison`: the paired multi-seed comparison of one-to-one and hybrid training
  (``make demo``): identical initial weights and data order per seed, progress lines while
  the runs train, the early and end readout, the paired difference with its 95 % interval
  and sign count (:func:`~examples.common.comparison.summarize`), the table, JSON and PNG;
* :mod:`.criterion`: DETR's set criterion and its loop over layers and groups
  (:class:`~examples.common.criterion.SetCriterion`; a task overrides ``layer_losses``),
  the scheme factory, the weight dicts and the hybrid wrapping;
* :mod:`.coco`: pycocotools helpers (loading, gathering results over ranks, the label ->
  category map, ``COCOeval`` of any ``iouType``); :mod:`.data`: loaders whose order resume
  replays, ``Subset`` unwrapping, the COCO-format split layout; :mod:`.shapes`: the
  synthetic sets' painter;
* :mod:`.distributed`: :func:`init_distributed` (``torchrun`` -> process group, device),
  :class:`DistInfo`, :func:`all_reduce_mean`, :func:`cleanup_distributed`;
* :mod:`.training`: :func:`train_step` (forward via ``loss_fn``, backward, AMP scaling,
  gradient clipping, a finite-loss check), :func:`train_one_epoch` (means over steps and
  ranks, :class:`Progress` bar, an ``on_step`` hook), :func:`fit` (epochs, lr schedule,
  evaluation, JSON-lines log and a checkpoint after every epoch, stop and resume);
* :mod:`.checkpoint`: :func:`save_checkpoint` / :func:`load_checkpoint` with every rank's
  RNG state and any ``state_dict`` objects (a hybrid scheme), :func:`seed_everything`;
* :mod:`.run_dir`: :class:`RunDir` (where a run writes: ``checkpoint.pth``,
  ``log.jsonl``, ``args.json``), :func:`append_jsonl` / :func:`read_jsonl`;
* :mod:`.cli`: :func:`training_parser` (the training arguments every task shares) and
  :func:`check_training_args`.

Exact resume: a run stopped after epoch ``e`` (``--stop-after``) and resumed from its
checkpoint reads the same images in the same order, draws the same augmentations and
ends with the same weights as an uninterrupted run, because the sampler's order depends
only on (seed, epoch) and the checkpoint restores the model, optimiser, lr scheduler,
GradScaler, the named states and the RNG states of every rank. The modules above the loop
(runner, comparison, criterion, coco) are imported by name, not re-exported here, so that
``import examples.common`` stays light.
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
