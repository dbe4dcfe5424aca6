"""Training of the H-Deformable-DETR example on :mod:`examples.common`: what is detection's.

:func:`run` does a whole run from parsed arguments (:func:`get_args_parser`) and returns
its history, one dict per epoch, also written as JSON lines to ``output_dir/log.jsonl``.
The loop, checkpoints, logs and distributed set-up are :mod:`examples.common`'s; this
module adds the detection parts: the command line (data, model, scheme), the data sets
and loaders, the parameter groups of the optimiser, the loss function (the model, the
criterion wrapped by a hybrid scheme, the weighted sum) and the COCO evaluation.

Data parallelism: launched by ``torchrun`` each process reads its share of the images
through a ``DistributedSampler`` and the model is wrapped in ``DistributedDataParallel``.
The criterion normalises by the global object count (:func:`hybridmatch.global_num_boxes`),
so averaging gradients over ranks gives the gradient of the whole batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from examples.common import (
    DistInfo,
    RunDir,
    autocast,
    cleanup_distributed,
    fit,
    init_distributed,
    load_checkpoint,
    seed_everything,
    training_parser,
)
from examples.common import train_step as common_train_step

from .criterion import SCHEMES, build_criterion, total_loss

__all__ = [
    "build_optimizer",
    "cleanup_distributed",
    "config_for_scheme",
    "detection_loss",
    "get_args_parser",
    "run",
    "train_step",
]


# ---------------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m examples.detection.train``: :func:`examples.common.training_parser`
    plus the detection arguments."""
    p = training_parser(
        "examples.detection.train",
        "Train / evaluate H-Deformable-DETR with hybridmatch (one2one, branch, epoch, layer).",
        output_dir=Path("outputs/detection"),
    )
    p.add_argument("--data", choices=("synthetic", "coco"), default="synthetic",
                   help="synthetic: coloured shapes, generated into --data-path when missing; coco: "
                        "DATA_PATH/{train2017,val2017} + DATA_PATH/annotations/instances_*2017.json")
    p.add_argument("--data-path", type=Path, default=Path("data/synthetic"))
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
    p.add_argument("--one2many-matcher", action="store_true",
                   help="match one-to-many groups with a capacity-K OneToManyMatcher (no K copies matched)")
    p.add_argument("--num-queries-one2one", type=int, default=None, help="override the config's Q1")
    p.add_argument("--num-queries-one2many", type=int, default=None, help="override the config's Q2 (branch)")
    p.add_argument("--enc-layers", type=int, default=None, help="override the config's encoder layers")
    p.add_argument("--dec-layers", type=int, default=None, help="override the config's decoder layers")
    p.add_argument("--eval-one2many", action="store_true",
                   help="(branch) also evaluate the one-to-many queries with class-wise NMS "
                        "(coco_one2many_nms in the log)")
    p.add_argument("--synthetic-train-images", type=int, default=256)
    p.add_argument("--synthetic-val-images", type=int, default=64)
    p.add_argument("--synthetic-size", type=int, default=128, help="side of the synthetic images")
    p.add_argument("--synthetic-classes", type=int, default=4)
    p.add_argument("--synthetic-max-objects", type=int, default=6, help="most objects per synthetic image")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="evaluate only the first N validation images")
    return p


# ---------------------------------------------------------------------------------- setup


def model_config(args: argparse.Namespace, num_classes: int) -> Any:
    """The :class:`ModelConfig` of ``--config`` for ``--scheme``."""
    from .config import ModelConfig

    if args.config == "tiny":
        cfg = ModelConfig.tiny(num_classes)
    else:
        cfg = ModelConfig(num_classes=num_classes, backbone="resnet50",
                          backbone_weights=str(args.backbone_weights) if args.backbone_weights else None)
    if args.num_queries_one2one is not None:
        cfg.num_queries_one2one = args.num_queries_one2one
    if args.num_queries_one2many is not None:
        cfg.num_queries_one2many = args.num_queries_one2many
    if getattr(args, "enc_layers", None) is not None:
        cfg.enc_layers = args.enc_layers
    if getattr(args, "dec_layers", None) is not None:
        cfg.dec_layers = args.dec_layers
    return config_for_scheme(cfg, args.scheme)


def config_for_scheme(cfg: Any, scheme: str) -> Any:
    """A copy of ``cfg`` with the query counts a scheme trains with.

    ``one2one``: the Q1 one-to-one queries only (Q2 = 0). ``branch``: Q1 + Q2 as configured.
    ``epoch`` / ``layer``: one group of Q1 + Q2 queries (the paper's 1800), Q2 = 0, so the
    single-group schemes see as many queries as the branch does in training.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "one2one":
        cfg = dataclasses.replace(cfg, num_queries_one2many=0)
    elif scheme in ("epoch", "layer"):
        cfg = dataclasses.replace(cfg, num_queries_one2one=cfg.num_queries_one2one + cfg.num_queries_one2many,
                                  num_queries_one2many=0)
    cfg.validate()
    return cfg


def build_optimizer(model: nn.Module, args: argparse.Namespace, *,
                    pretrained_backbone: bool = False) -> torch.optim.Optimizer:
    """AdamW over three parameter groups: backbone, deformable attention's sampling offsets /
    reference points (``lr * lr_linear_proj_mult``), the rest (``lr``).

    The backbone's lr is ``args.lr_backbone`` when set; otherwise ``lr / 10`` for pretrained
    weights (the official setting: fine-tune gently) and ``lr`` for a randomly initialised
    backbone, which a tenth of the rate would leave nearly untrained.
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
    """H-DETR's 12-epoch schedule drops at epoch 11: 11/12 of the epochs, at least 1."""
    return max(1, (11 * epochs) // 12)


# ---------------------------------------------------------------------------------- data


def build_datasets(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
    """``(train_set, val_set)`` of ``--data``; the synthetic set is generated on rank 0 if missing."""
    from .data import CocoDetection, make_transforms

    root = Path(args.data_path)
    if args.data == "synthetic":
        from .synthetic import generate_synthetic_coco

        size = (args.synthetic_size, args.synthetic_size)
        splits = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}
        if info.is_main:
            for split, count in splits.items():
                if not _synthetic_ready(root, split, count, size, args.synthetic_classes,
                                        args.synthetic_max_objects):
                    generate_synthetic_coco(root, num_images=count, image_size=size,
                                            num_classes=args.synthetic_classes,
                                            max_objects=args.synthetic_max_objects, seed=0, split=split)
        if info.distributed:
            dist.barrier()
        paths = {split: (root / split, root / "annotations" / f"instances_{split}.json") for split in splits}
        scales = _synthetic_scales(args.synthetic_size)
        train_tf = make_transforms(True, scales=scales, max_size=max(scales))
        val_tf = make_transforms(False, scales=(args.synthetic_size,), max_size=args.synthetic_size)
    else:
        paths = {split: (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
                 for split in ("train", "val")}
        train_tf, val_tf = make_transforms(True), make_transforms(False)
    for split, (images, annotations) in paths.items():
        if not annotations.is_file():
            raise FileNotFoundError(f"{split} annotations not found: {annotations} (--data {args.data} "
                                    f"--data-path {root})")
    train_set = CocoDetection(*paths["train"], transforms=train_tf)
    val_set = CocoDetection(*paths["val"], transforms=val_tf)
    if args.train_limit:
        train_set = torch.utils.data.Subset(train_set, range(min(args.train_limit, len(train_set))))
    if args.val_limit:
        # The evaluation reads COCO ground truth of the images it saw only.
        val_set = torch.utils.data.Subset(val_set, range(min(args.val_limit, len(val_set))))
    return train_set, val_set


def _synthetic_scales(side: int) -> tuple[int, ...]:
    # Multi-scale training at 3/4 to 1 of the image side in steps of 8 (128: 96, 104, ..., 128),
    # as examples.detection.data.small_scales; never upscaled, which would only cost CPU time.
    return tuple(range(max(16, (3 * side // 4) // 8 * 8), side + 1, 8)) or (side,)


def _synthetic_ready(root: Path, split: str, count: int, size: tuple[int, int], classes: int,
                     max_objects: int) -> bool:
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        return False
    try:
        data = json.loads(annotations.read_text())
    except (OSError, ValueError):
        return False
    images = data.get("images", [])
    return (len(images) == count and len(data.get("categories", [])) == classes
            and data.get("info", {}).get("max_objects") == max_objects
            and all((im["height"], im["width"]) == size for im in images[:1]))


def _base(dataset: Any) -> Any:
    return dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset


def num_classes_of(dataset: Any) -> int:
    return len(_base(dataset).label_to_category)


def make_loader(dataset: Any, batch_size: int, info: DistInfo, *, train: bool, seed: int,
                num_workers: int = 0) -> DataLoader:
    """A loader over this rank's share; shuffled per epoch (``sampler.set_epoch``) with ``seed``.

    A ``DistributedSampler`` also for one process: its order depends only on (seed, epoch), so a
    resumed run reads the same images in the same order as an uninterrupted one.
    """
    from .data import collate_fn

    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train,
                                 seed=seed, drop_last=train and info.distributed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, drop_last=False, pin_memory=info.device.type == "cuda")


# ---------------------------------------------------------------------------------- training


def _to_device(targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
            for t in targets]


def detection_loss(criterion: nn.Module, weight_dict: Mapping[str, float], device: torch.device | str,
                   amp: bool = False) -> Callable[[nn.Module, Any], tuple[Tensor, dict[str, Tensor]]]:
    """The :data:`examples.common.training.LossFn` of detection.

    For a batch ``(images (Tensor[B, 3, H, W]), pixel_mask (Tensor[B, H, W] bool, True =
    padding), targets)`` of :func:`examples.detection.data.collate_fn`: the model's forward
    under :func:`examples.common.autocast`, the criterion in float32 outside it, and the
    weighted sum ``sum(weight_dict[k] * loss[k])``.
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


def train_step(model: nn.Module, criterion: nn.Module, weight_dict: Mapping[str, float],
               images: Tensor, pixel_mask: Tensor, targets: Sequence[Mapping[str, Any]],
               optimizer: torch.optim.Optimizer | None, *, device: torch.device | str = "cpu",
               scaler: torch.amp.GradScaler | None = None, amp: bool = False,
               clip_max_norm: float = 0.1) -> dict[str, float]:
    """One detection step: :func:`examples.common.train_step` with :func:`detection_loss`.

    Args:
        model: the detector in training mode (or its DDP wrapper).
        criterion: ``criterion(outputs, targets) -> dict`` of unweighted losses.
        weight_dict: loss weights; the optimised loss is ``sum(weight * loss)``.
        images (Tensor[B, 3, H, W]), pixel_mask (Tensor[B, H, W] bool, True = padding), targets:
            a batch of :func:`examples.detection.data.collate_fn`.
        optimizer: None leaves the gradients in ``.grad`` (for tests).
        scaler: a ``GradScaler`` when ``amp`` (used on CUDA only).
        clip_max_norm (float): gradient-norm clip; 0 disables it.

    Returns:
        ``{"loss": weighted total, "grad_norm": ..., <each loss>: value}`` as floats.
    """
    use_amp = amp and torch.device(device).type == "cuda"
    return common_train_step(model, detection_loss(criterion, weight_dict, device, use_amp),
                             (images, pixel_mask, targets), optimizer,
                             scaler=scaler if use_amp else None, clip_max_norm=clip_max_norm)


# ---------------------------------------------------------------------------------- the run


def _evaluator(model: nn.Module, loader: Any, dataset: Any, info: DistInfo, amp: bool,
               one2many: bool) -> Callable[[int], dict[str, Any]]:
    from .evaluate import evaluate_heads
    from .model import postprocess
    from .nms import postprocess_one2many

    heads: dict[str, Any] = {"coco": postprocess}
    if one2many:
        heads["coco_one2many_nms"] = postprocess_one2many

    def evaluate(epoch: int) -> dict[str, Any]:
        return evaluate_heads(model, loader, dataset, heads, info.device, amp=amp, one2many=one2many)

    return evaluate


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train (or with ``--eval-only`` evaluate) as the arguments say; return the per-epoch history.

    Each epoch appends one JSON line to ``output_dir/log.jsonl`` (rank 0): ``epoch``, ``scheme``,
    ``lr``, the averaged ``train`` losses, the ``coco`` stats when evaluated (and
    ``coco_one2many_nms`` with ``--eval-one2many``), ``train_time_s``, ``eval_time_s``; and
    overwrites ``output_dir/checkpoint.pth``.
    """
    from .evaluate import format_ap_table
    from .model import build_model

    info = init_distributed(args.device)
    if args.amp and info.device.type != "cuda" and info.is_main:
        print("--amp needs a GPU; training in float32 on the CPU", file=sys.stderr)
    amp = args.amp and info.device.type == "cuda"
    run_dir = RunDir(Path(args.output_dir))
    if info.is_main:
        run_dir.create(args, fresh_log=args.resume is None and not args.eval_only)

    train_set, val_set = build_datasets(args, info)
    cfg = model_config(args, num_classes_of(train_set))
    seed_everything(args.seed)  # the same initial weights on every rank
    model = build_model(cfg).to(info.device)
    criterion, scheme, weight_dict = build_criterion(
        args.scheme, cfg, k=args.k, lambda_one2many=args.lambda_one2many, epochs=args.epochs,
        one2many_fraction=args.one2many_fraction, num_one2many_layers=args.num_one2many_layers,
        one2many_matcher=args.one2many_matcher)
    optimizer = build_optimizer(model, args, pretrained_backbone=cfg.backbone_weights is not None)
    lr_drop = args.lr_drop if args.lr_drop is not None else default_lr_drop(args.epochs)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    seed_everything(args.seed + info.rank)  # data augmentation differs per rank

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)

    states = {"scheme": scheme}
    start_epoch, history = 0, []
    if args.resume:
        if scheme is None and not args.eval_only:
            state = torch.load(args.resume, map_location="cpu", weights_only=False)
            if (state.get("states") or {}).get("scheme") is not None:
                raise ValueError(f"{args.resume} was trained with a hybrid scheme; resume it with that --scheme")
        try:
            state = load_checkpoint(Path(args.resume), model=model,
                                    optimizer=None if args.eval_only else optimizer,
                                    lr_scheduler=None if args.eval_only else lr_scheduler,
                                    states=None if args.eval_only else states, info=info,
                                    scaler=scaler, restore_rng=not args.eval_only)
        except KeyError:
            raise ValueError(f"{args.resume} was trained without a hybrid scheme; resume it with "
                             f"--scheme one2one") from None
        start_epoch, history = state["epoch"] + 1, list(state.get("history", []))
        if scheme is not None and scheme.epoch != start_epoch:
            scheme.set_epoch(start_epoch)

    val_loader = make_loader(val_set, args.batch_size, info, train=False, seed=args.seed,
                             num_workers=args.num_workers)
    evaluate = _evaluator(model, val_loader, _base(val_set), info, amp,
                          one2many=args.eval_one2many and cfg.num_queries_one2many > 0)
    if args.eval_only:
        started = time.perf_counter()
        stats = evaluate(start_epoch)
        if info.is_main:
            print(format_ap_table(stats["coco"], title=f"COCO bbox, {args.scheme}"))
            run_dir.append({"eval_only": True, "scheme": args.scheme, **stats,
                            "eval_time_s": time.perf_counter() - started})
        return [stats]

    train_loader = make_loader(train_set, args.batch_size, info, train=True, seed=args.seed,
                               num_workers=args.num_workers)
    criterion.train()
    return fit(
        model=model, train_model=train_model, loss_fn=detection_loss(criterion, weight_dict, info.device, amp),
        loader=train_loader, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, info=info,
        run_dir=run_dir, epochs=args.epochs, clip_max_norm=args.clip_max_norm, evaluate=evaluate,
        eval_every=args.eval_every, eval_epochs=args.eval_epochs, states=states,
        on_epoch_end=(lambda epoch: scheme.step()) if scheme is not None else None,  # hybrid epoch switches
        start_epoch=start_epoch, stop_after=args.stop_after, history=history,
        record_extra={"scheme": args.scheme}, args=args,
        describe=lambda record: f" AP {100 * record['coco']['AP']:.1f}" if "coco" in record else "",
        progress=not args.quiet,
    )
