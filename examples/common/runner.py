"""One run of any task: its command line, set-up, resume rule, training and evaluation.

A task is a :class:`Task` subclass: how to build its data, model configuration, model,
criterion and evaluator, plus its own arguments and defaults. :func:`run` does the rest the same way for
every task:

1. joins the process group (``torchrun``) or runs alone, creates the run folder (rank 0);
2. builds the data (``--train-limit`` / ``--val-limit`` keep the first images), the model
   configuration, then seeds with ``--seed`` and builds the model (the same initial weights
   on every rank and, where the schemes share parameters, for every scheme), the criterion
   with its scheme and loss weights, AdamW over :func:`build_optimizer`'s parameter groups,
   a step lr schedule (:func:`default_lr_drop`), and reseeds with ``seed + rank``;
3. resumes from ``--resume`` under one rule (:func:`check_resumable`): a checkpoint written
   by a run of another scheme or setting is refused, with the settings that differ;
4. evaluates (``--eval-only``) or trains with :func:`examples.common.fit`: the loss is
   :func:`detr_loss` (the model's forward under autocast, the criterion, the weighted sum).

:func:`task_parser` is the command line (the shared arguments of
:func:`examples.common.training_parser`, the model and scheme arguments every DETR task
has, and the task's own), :func:`main` the entry point of ``python -m examples.<task>.train``.

Example (what a task's ``train.py`` holds)::

    from examples.common.runner import main
    from .task import TASK

    if __name__ == "__main__":
        main(TASK)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, seed_everything
from .cli import check_training_args, training_parser
from .criterion import SCHEMES, total_loss
from .data import base_dataset, limit, make_loader
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .run_dir import RunDir, jsonable
from .training import autocast, fit

__all__ = [
    "RESUME_KEYS",
    "EvalSetup",
    "StepHook",
    "Task",
    "build_optimizer",
    "check_resumable",
    "default_lr_drop",
    "detr_loss",
    "main",
    "run",
    "scheme_settings",
    "task_parser",
]

#: The settings every task's checkpoint must share with the run that resumes it: the scheme
#: and what decides the model's queries and its supervision. A task adds its own
#: (:attr:`Task.resume_keys`).
RESUME_KEYS = ("scheme", "config", "k", "lambda_one2many", "one2many_fraction", "num_one2many_layers",
               "num_queries_one2one", "num_queries_one2many", "enc_layers", "dec_layers")

#: ``on_step(epoch, step, steps, record)``: called after every training step (see :func:`run`).
StepHook = Callable[[int, int, int, Mapping[str, float]], None]


@dataclasses.dataclass(frozen=True)
class EvalSetup:
    """What a task's evaluator is built from (:attr:`Task.build_evaluator`).

    Attributes:
        model: the model (not its DDP wrapper).
        loader: the validation loader (this rank's share).
        dataset: the validation data set, a ``Subset`` unwrapped (it holds the COCO ground truth).
        info: this process's rank and device.
        cfg: the model configuration (:attr:`Task.model_config`).
        amp: evaluate under float16 autocast (CUDA and ``--amp``).
    """

    model: nn.Module
    loader: Any
    dataset: Any
    info: DistInfo
    cfg: Any
    amp: bool


class Task:
    """What a task supplies to be trained, resumed, evaluated and compared by :mod:`examples.common`.

    A task subclasses it: a few class attributes and the five ``build_*`` methods, each a
    plain function of the parsed arguments (``train`` below is the training data set with a
    ``Subset`` unwrapped). :func:`run` calls them in this order: :meth:`build_data`,
    :meth:`model_config`, (seed) :meth:`build_model`, :meth:`build_criterion`, and after
    resuming :meth:`build_evaluator`.

    Attributes:
        name: the package under ``examples`` (``"pose"``): the command is
            ``python -m examples.<name>.train``.
        description: one line for ``--help``.
        metric: the record key of the main evaluation (``"coco"``, ``"coco_kp"``, ``"segm"``).
        metric_name: how its ``AP`` is printed (``"AP"``, ``"segm AP"``).
        defaults: new defaults of any argument by destination (``{"output_dir": Path(...)}``).
        resume_keys: the task's settings a resumed checkpoint must share, beyond :data:`RESUME_KEYS`.
        collate_fn: the loaders' batcher; a batch is ``(images (Tensor[B, 3, H, W]),
            pixel_mask (Tensor[B, H, W] bool), targets)``.
    """

    name: str = ""
    description: str = ""
    metric: str = "coco"
    metric_name: str = "AP"
    defaults: Mapping[str, Any] = types.MappingProxyType({})
    resume_keys: tuple[str, ...] = ()
    collate_fn: Callable[[Sequence[Any]], Any]

    @property
    def prog(self) -> str:
        """The training command's module, ``examples.<name>.train``."""
        return f"examples.{self.name}.train"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the task's own arguments (the shared ones are :func:`task_parser`'s)."""

    def build_data(self, args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
        """``(train_set, val_set)``; generates missing synthetic data on rank 0 (the others wait)."""
        raise NotImplementedError

    def model_config(self, args: argparse.Namespace, train: Any) -> Any:
        """The model configuration, with the query counts of ``args.scheme``."""
        raise NotImplementedError

    def build_model(self, args: argparse.Namespace, cfg: Any, train: Any) -> nn.Module:
        """The model; called right after seeding, so it should draw only the initial weights."""
        raise NotImplementedError

    def build_criterion(self, args: argparse.Namespace, cfg: Any, train: Any) -> tuple[nn.Module, Any, dict]:
        """``(criterion, scheme or None, weight_dict)``, e.g. with
        :func:`examples.common.criterion.hybrid_criterion` and :func:`scheme_settings`."""
        raise NotImplementedError

    def build_evaluator(self, args: argparse.Namespace, setup: EvalSetup) -> Callable[[int], dict[str, Any]]:
        """``evaluate(epoch) -> {metric: {"AP": ...}, ...}``, merged into the epoch's record."""
        raise NotImplementedError

    def report(self, args: argparse.Namespace, stats: Mapping[str, Any]) -> str:
        """What ``--eval-only`` prints of the evaluation's ``stats``; default: the AP."""
        return f"{self.metric_name} ({args.scheme}): {100 * stats[self.metric]['AP']:.1f}"


# ---------------------------------------------------------------------------------- command line


def task_parser(task: Task) -> argparse.ArgumentParser:
    """The command line of ``python -m examples.<task>.train``.

    :func:`examples.common.training_parser`'s arguments, the ones every DETR task of the
    examples has (data, ``--scheme`` and its settings, query counts, backbone), the task's
    own (:attr:`Task.add_arguments`), then :attr:`Task.defaults`.

    Raises:
        ValueError: a key of :attr:`Task.defaults` is no argument of the parser.
    """
    p = training_parser(task.prog, task.description)
    p.add_argument("--data", choices=("synthetic", "coco"), default="synthetic",
                   help="synthetic: generated into --data-path when missing; coco: DATA_PATH/{train2017,val2017} "
                        "and DATA_PATH/annotations/")
    p.add_argument("--data-path", type=Path, default=Path(f"data/{task.name}-synthetic"))
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="evaluate only the first N validation images")
    p.add_argument("--scheme", choices=SCHEMES, default="branch")
    p.add_argument("--config", choices=("tiny", "r50"), default="tiny",
                   help="tiny: small CNN + 2+2 layers for the CPU; r50: H-Deformable-DETR R50 settings")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="(r50) local .pth of torchvision-named ResNet-50 ImageNet weights")
    p.add_argument("--lr-backbone", type=float, default=None,
                   help="backbone lr (default: --lr / 10 for pretrained weights, --lr for a randomly "
                        "initialised backbone, which has everything to learn)")
    p.add_argument("--lr-linear-proj-mult", type=float, default=0.1,
                   help="lr factor of the deformable attention's sampling offsets and reference points")
    p.add_argument("--k", type=int, default=None, help="GT copies (default: branch 6, epoch/layer 10)")
    p.add_argument("--lambda-one2many", type=float, default=1.0, help="one-to-many loss weight (branch)")
    p.add_argument("--one2many-fraction", type=float, default=2 / 3, help="rho of the epoch scheme")
    p.add_argument("--num-one2many-layers", type=int, default=None,
                   help="L1 of the layer scheme (default dec_layers - 2, at least 1)")
    p.add_argument("--num-queries-one2one", type=int, default=None, help="override the config's Q1")
    p.add_argument("--num-queries-one2many", type=int, default=None, help="override the config's Q2 (branch)")
    p.add_argument("--enc-layers", type=int, default=None, help="override the config's encoder layers")
    p.add_argument("--dec-layers", type=int, default=None, help="override the config's decoder layers")
    task.add_arguments(p)
    known = {action.dest for action in p._actions}
    unknown = sorted(set(task.defaults) - known)
    if unknown:
        raise ValueError(f"Task {task.name!r}: defaults {unknown} are no arguments of {task.prog}; known: "
                         f"{sorted(known)}")
    p.set_defaults(**task.defaults)
    return p


def main(task: Task, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``python -m examples.<task>.train``: parse, check, :func:`run`, leave the process group."""
    parser = task_parser(task)
    args = parser.parse_args(argv)
    check_training_args(parser, args)
    if args.eval_only and args.resume is None:
        print("--eval-only without --resume evaluates an untrained model", file=sys.stderr)
    try:
        return run(task, args)
    finally:
        cleanup_distributed()


# ---------------------------------------------------------------------------------- set-up


def build_optimizer(model: nn.Module, args: argparse.Namespace, *,
                    pretrained_backbone: bool = False) -> torch.optim.Optimizer:
    """AdamW over three parameter groups: backbone, deformable attention's sampling offsets /
    reference points (``lr * lr_linear_proj_mult``), the rest (``lr``).

    The backbone's lr is ``args.lr_backbone`` when set; otherwise ``lr / 10`` for pretrained
    weights (the official setting: fine-tune gently) and ``lr`` for a randomly initialised
    backbone, which a tenth of the rate would leave nearly untrained.

    Args:
        model: parameters named ``backbone...`` / ``....backbone....`` form the backbone group,
            those with ``sampling_offsets`` or ``reference_points`` the projection group.
        args: ``lr``, ``weight_decay``, ``lr_linear_proj_mult`` and optionally ``lr_backbone``.
        pretrained_backbone: the backbone starts from pretrained weights.
    """
    backbone, linear_proj, rest = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone") or ".backbone." in name:
            backbone.append(param)
        elif "sampling_offsets" in name or "reference_points" in name:
            linear_proj.append(param)
        else:
            rest.append(param)
    lr_backbone = getattr(args, "lr_backbone", None)
    if lr_backbone is None:
        lr_backbone = args.lr / 10 if pretrained_backbone else args.lr
    groups = [{"params": rest, "lr": args.lr}]
    if linear_proj:
        groups.append({"params": linear_proj, "lr": args.lr * args.lr_linear_proj_mult})
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone})
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def default_lr_drop(epochs: int) -> int:
    """H-DETR's 12-epoch schedule drops at epoch 11: 11/12 of the epochs, at least 1.

    Example:
        >>> default_lr_drop(12), default_lr_drop(16), default_lr_drop(1)
        (11, 14, 1)
    """
    return max(1, (11 * epochs) // 12)


def _to_device(targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
            for t in targets]


def detr_loss(criterion: nn.Module, weight_dict: Mapping[str, float], device: torch.device | str,
              amp: bool = False) -> Callable[[nn.Module, Any], tuple[Tensor, dict[str, Tensor]]]:
    """The :data:`examples.common.training.LossFn` of a DETR task.

    For a batch ``(images (Tensor[B, 3, H, W]), pixel_mask (Tensor[B, H, W] bool, True =
    padding), targets)``: the model's forward under :func:`examples.common.autocast`, the
    criterion in float32 outside it, and the weighted sum
    (:func:`examples.common.criterion.total_loss`).
    """
    device = torch.device(device)

    def loss_fn(model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        images, pixel_mask, targets = batch
        images, pixel_mask = images.to(device, non_blocking=True), pixel_mask.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = model(images, pixel_mask)
        losses = criterion(outputs, _to_device(targets, device))
        return total_loss(losses, weight_dict), losses

    return loss_fn


def scheme_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The hybrid scheme's settings of the command line, as keyword arguments of
    :func:`examples.common.criterion.build_scheme` (``k``, ``lambda_one2many``, ``epochs``,
    ``one2many_fraction``, ``num_one2many_layers``)."""
    return {"k": args.k, "lambda_one2many": args.lambda_one2many, "epochs": args.epochs,
            "one2many_fraction": args.one2many_fraction, "num_one2many_layers": args.num_one2many_layers}


def check_resumable(saved: Mapping[str, Any], args: argparse.Namespace, keys: Sequence[str],
                    source: str = "the checkpoint") -> None:
    """Refuse to resume a checkpoint written by a run of another scheme or setting.

    The rule every task follows: each of ``keys`` that the checkpoint's stored arguments
    hold must equal this run's (compared as stored, e.g. paths as text); and a checkpoint
    with a hybrid scheme's state is not resumed without one, nor one without with one
    (older checkpoints that lack the arguments are still told apart by that).

    Args:
        saved: the checkpoint (``args``, ``states``) as :func:`examples.common.save_checkpoint`
            writes it.
        args: this run's arguments.
        keys: the settings that must agree (:data:`RESUME_KEYS` and the task's).
        source: how to name the checkpoint in the message.

    Raises:
        ValueError: the message lists each differing setting, the checkpoint's value and this run's.

    Example:
        >>> saved = {"args": {"scheme": "branch", "k": 6}, "states": {"scheme": {"epoch": 1}}}
        >>> check_resumable(saved, argparse.Namespace(scheme="branch", k=6), ["scheme", "k"])
        >>> check_resumable(saved, argparse.Namespace(scheme="branch", k=4), ["scheme", "k"])
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint was written by a run with other settings: --k 6 there, 4 here; ...
    """
    stored = saved.get("args") or {}
    here = jsonable(args)
    differ = [f"--{key.replace('_', '-')} {stored[key]} there, {here.get(key)} here"
              for key in keys if key in stored and stored[key] != here.get(key)]
    has_scheme = (saved.get("states") or {}).get("scheme") is not None
    wants_scheme = getattr(args, "scheme", "one2one") != "one2one"
    if not differ and has_scheme != wants_scheme:
        differ = ["a hybrid scheme there, " + ("one" if wants_scheme else "none") + " here (--scheme)"]
    if differ:
        raise ValueError(f"{source} was written by a run with other settings: {'; '.join(differ)}; resume with "
                         f"the checkpoint's settings, or start afresh in another --output-dir")


# ---------------------------------------------------------------------------------- the run


def run(task: Task, args: argparse.Namespace, *, on_step: StepHook | None = None,
        on_epoch: Callable[[Mapping[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train (or with ``--eval-only`` evaluate) ``task`` as the arguments say; return the history.

    Each epoch appends one JSON line to ``output_dir/log.jsonl`` (rank 0): ``epoch``,
    ``scheme``, ``lr``, the averaged ``train`` losses, ``train_time_s`` and, when it
    evaluated, the evaluator's fields (``task.metric`` among them) and ``eval_time_s``; and
    overwrites ``output_dir/checkpoint.pth``.

    Args:
        task: the task's spec.
        args: from :func:`task_parser`.
        on_step: called after every training step with ``(epoch, step, steps, record)``
            (the step's losses as floats); e.g. a progress report. Reads only.
        on_epoch: called with each epoch's record once it is logged (main rank).

    Returns:
        the history: one record per epoch, the resumed ones included; with ``--eval-only``
        a list of the one evaluation.
    """
    info = init_distributed(args.device)
    amp = args.amp and info.device.type == "cuda"
    if args.amp and not amp and info.is_main:
        print("--amp needs a GPU; training in float32 on the CPU", file=sys.stderr)
    run_dir = RunDir(Path(args.output_dir))
    if info.is_main:
        run_dir.create(args, fresh_log=args.resume is None and not args.eval_only)

    train_set, val_set = task.build_data(args, info)
    train_set, val_set = limit(train_set, args.train_limit), limit(val_set, args.val_limit)
    cfg = task.model_config(args, base_dataset(train_set))
    seed_everything(args.seed)  # the same initial weights on every rank, and for every scheme
    model = task.build_model(args, cfg, base_dataset(train_set)).to(info.device)
    criterion, scheme, weight_dict = task.build_criterion(args, cfg, base_dataset(train_set))
    optimizer = build_optimizer(model, args, pretrained_backbone=getattr(cfg, "backbone_weights", None) is not None)
    lr_drop = args.lr_drop if args.lr_drop is not None else default_lr_drop(args.epochs)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    seed_everything(args.seed + info.rank)  # augmentation (and point samples) differ per rank

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)

    states = {"scheme": scheme}
    start_epoch, history = 0, []
    if args.resume:
        keys = (*RESUME_KEYS, *task.resume_keys)
        state = load_checkpoint(Path(args.resume), model=model, optimizer=None if args.eval_only else optimizer,
                                lr_scheduler=None if args.eval_only else lr_scheduler,
                                states=None if args.eval_only else states, info=info, scaler=scaler,
                                restore_rng=not args.eval_only,
                                check=lambda saved: check_resumable(saved, args, keys, str(args.resume)))
        start_epoch, history = state["epoch"] + 1, list(state.get("history", []))
        if scheme is not None and scheme.epoch != start_epoch:
            scheme.set_epoch(start_epoch)

    val_loader = make_loader(val_set, args.batch_size, info, train=False, seed=args.seed,
                             collate_fn=task.collate_fn, num_workers=args.num_workers)
    evaluate = task.build_evaluator(args, EvalSetup(model=model, loader=val_loader, dataset=base_dataset(val_set),
                                                    info=info, cfg=cfg, amp=amp))
    if args.eval_only:
        started = time.perf_counter()
        stats = evaluate(start_epoch)
        if info.is_main:
            print(task.report(args, stats))
            run_dir.append({"eval_only": True, "scheme": args.scheme, **stats,
                            "eval_time_s": time.perf_counter() - started})
        return [stats]

    train_loader = make_loader(train_set, args.batch_size, info, train=True, seed=args.seed,
                               collate_fn=task.collate_fn, num_workers=args.num_workers)
    criterion.train()

    def describe(record: Mapping[str, Any]) -> str:
        return f" {task.metric_name} {100 * record[task.metric]['AP']:.1f}" if task.metric in record else ""

    return fit(
        model=model, train_model=train_model, loss_fn=detr_loss(criterion, weight_dict, info.device, amp),
        loader=train_loader, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, info=info,
        run_dir=run_dir, epochs=args.epochs, clip_max_norm=args.clip_max_norm, evaluate=evaluate,
        eval_every=args.eval_every, eval_epochs=args.eval_epochs, states=states,
        on_epoch_end=(lambda epoch: scheme.step()) if scheme is not None else None,  # hybrid epoch switches
        start_epoch=start_epoch, stop_after=args.stop_after, history=history,
        record_extra={"scheme": args.scheme}, args=args, describe=describe, progress=not args.quiet,
        on_step=on_step, on_record=on_epoch,
    )
