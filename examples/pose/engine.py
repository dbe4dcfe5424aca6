"""Training of the keypoint DETR on :mod:`examples.common`: what is pose's.

:func:`run` does a whole run from parsed arguments (:func:`get_args_parser`) and returns its
history, one dict per epoch (``output_dir/log.jsonl``). The loop, checkpoints, logs and
distributed set-up are :mod:`examples.common`'s; the optimiser groups, loaders, query
counts per scheme and the loss function are the detection example's
(:mod:`examples.detection.engine`); this module adds the pose parts: the data sets, the
model with keypoint heads, the pose criterion and the keypoint evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from examples.common import (
    DistInfo,
    RunDir,
    cleanup_distributed,
    fit,
    init_distributed,
    load_checkpoint,
    seed_everything,
    training_parser,
)
from examples.detection.config import ModelConfig
from examples.detection.engine import (
    _base,
    build_optimizer,
    config_for_scheme,
    default_lr_drop,
    detection_loss,
    make_loader,
)

from .criterion import SCHEMES, build_criterion

__all__ = ["build_datasets", "cleanup_distributed", "get_args_parser", "model_config", "run", "synthetic_ready"]


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m examples.pose.train``: the shared arguments plus pose's."""
    p = training_parser("examples.pose.train",
                        "Train / evaluate a keypoint DETR with hybridmatch (one2one, branch, epoch, layer).",
                        output_dir=Path("outputs/pose"))
    p.add_argument("--data", choices=("synthetic", "coco"), default="synthetic",
                   help="synthetic: stick figures, generated into --data-path when missing; coco: "
                        "DATA_PATH/{train2017,val2017} + DATA_PATH/annotations/person_keypoints_*2017.json")
    p.add_argument("--data-path", type=Path, default=Path("data/pose-synthetic"))
    p.add_argument("--scheme", choices=SCHEMES, default="branch")
    p.add_argument("--config", choices=("tiny", "r50"), default="tiny",
                   help="tiny: small CNN + 2+2 layers for the CPU; r50: H-Deformable-DETR R50 settings")
    p.add_argument("--backbone-weights", type=Path, default=None, help="(r50) local torchvision ResNet-50 .pth")
    p.add_argument("--lr-backbone", type=float, default=None)
    p.add_argument("--lr-linear-proj-mult", type=float, default=0.1)
    p.add_argument("--k", type=int, default=None, help="GT copies (default: branch 6, epoch/layer 10)")
    p.add_argument("--lambda-one2many", type=float, default=1.0)
    p.add_argument("--one2many-fraction", type=float, default=2 / 3)
    p.add_argument("--num-one2many-layers", type=int, default=None)
    p.add_argument("--num-queries-one2one", type=int, default=None)
    p.add_argument("--num-queries-one2many", type=int, default=None)
    p.add_argument("--synthetic-train-images", type=int, default=128)
    p.add_argument("--synthetic-val-images", type=int, default=64)
    p.add_argument("--synthetic-size", type=int, default=64)
    p.add_argument("--synthetic-max-figures", type=int, default=10)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--val-limit", type=int, default=None)
    return p


def model_config(args: argparse.Namespace, num_classes: int) -> ModelConfig:
    """The detector configuration of ``--config`` for ``--scheme`` (tiny: 20 + 60 queries)."""
    if args.config == "tiny":
        cfg = ModelConfig.tiny(num_classes)
        cfg.num_queries_one2one, cfg.num_queries_one2many = 20, 60
    else:
        cfg = ModelConfig(num_classes=num_classes, backbone="resnet50",
                          backbone_weights=str(args.backbone_weights) if args.backbone_weights else None)
    if args.num_queries_one2one is not None:
        cfg.num_queries_one2one = args.num_queries_one2one
    if args.num_queries_one2many is not None:
        cfg.num_queries_one2many = args.num_queries_one2many
    return config_for_scheme(cfg, args.scheme)


def synthetic_ready(root: Path, split: str, count: int, size: int, max_figures: int) -> bool:
    """Whether ``root`` already holds the synthetic split asked for."""
    path = root / "annotations" / f"person_keypoints_{split}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    images = data.get("images", [])
    return (len(images) == count and data.get("info", {}).get("max_figures") == max_figures
            and all((im["height"], im["width"]) == (size, size) for im in images[:1]))


def build_datasets(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
    """``(train_set, val_set)`` of ``--data``; the synthetic set is generated on rank 0 if missing."""
    from .data import CocoKeypoints, make_transforms
    from .skeleton import COCO_PERSON, FIGURE

    root = Path(args.data_path)
    if args.data == "synthetic":
        from .synthetic import generate_synthetic_keypoints

        splits = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}
        if info.is_main:
            for split, count in splits.items():
                if not synthetic_ready(root, split, count, args.synthetic_size, args.synthetic_max_figures):
                    generate_synthetic_keypoints(root, num_images=count, image_size=args.synthetic_size,
                                                 max_figures=args.synthetic_max_figures, seed=0, split=split)
        if info.distributed:
            dist.barrier()
        paths = {s: (root / s, root / "annotations" / f"person_keypoints_{s}.json") for s in splits}
        side = args.synthetic_size
        scales = tuple(range(max(16, (7 * side // 8) // 8 * 8), side + 1, 8)) or (side,)
        train_tf = make_transforms(True, FIGURE, scales, max(scales))
        val_tf = make_transforms(False, FIGURE, (side,), side)
    else:
        paths = {s: (root / f"{s}2017", root / "annotations" / f"person_keypoints_{s}2017.json")
                 for s in ("train", "val")}
        scales = tuple(range(480, 801, 32))
        train_tf = make_transforms(True, COCO_PERSON, scales, 1333)
        val_tf = make_transforms(False, COCO_PERSON, (800,), 1333)
    for split, (_, annotations) in paths.items():
        if not annotations.is_file():
            raise FileNotFoundError(f"{split} annotations not found: {annotations} (--data {args.data} "
                                    f"--data-path {root})")
    train_set = CocoKeypoints(*paths["train"], transforms=train_tf)
    val_set = CocoKeypoints(*paths["val"], transforms=val_tf)
    if args.train_limit:
        train_set = torch.utils.data.Subset(train_set, range(min(args.train_limit, len(train_set))))
    if args.val_limit:
        val_set = torch.utils.data.Subset(val_set, range(min(args.val_limit, len(val_set))))
    return train_set, val_set


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train (or with ``--eval-only`` evaluate) as the arguments say; return the per-epoch history.

    Each epoch appends a JSON line to ``output_dir/log.jsonl`` (rank 0) with the averaged
    ``train`` losses and, when evaluated, ``coco_kp`` (keypoint AP/AR by name).
    """
    from .evaluate import evaluate_keypoints
    from .model import build_model

    info = init_distributed(args.device)
    if args.amp and info.device.type != "cuda" and info.is_main:
        print("--amp needs a GPU; training in float32 on the CPU", file=sys.stderr)
    amp = args.amp and info.device.type == "cuda"
    run_dir = RunDir(Path(args.output_dir))
    if info.is_main:
        run_dir.create(args, fresh_log=args.resume is None and not args.eval_only)

    train_set, val_set = build_datasets(args, info)
    layout = _base(train_set).layout
    cfg = model_config(args, _base(train_set).num_classes)
    seed_everything(args.seed)  # the same initial weights on every rank and for every scheme
    model = build_model(cfg, layout.num_joints).to(info.device)
    criterion, scheme, weight_dict = build_criterion(
        args.scheme, cfg, layout.sigmas, k=args.k, lambda_one2many=args.lambda_one2many, epochs=args.epochs,
        one2many_fraction=args.one2many_fraction, num_one2many_layers=args.num_one2many_layers)
    optimizer = build_optimizer(model, args, pretrained_backbone=cfg.backbone_weights is not None)
    lr_drop = args.lr_drop if args.lr_drop is not None else default_lr_drop(args.epochs)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    seed_everything(args.seed + info.rank)  # augmentation differs per rank

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)

    states = {"scheme": scheme}
    start_epoch, history = 0, []
    if args.resume:
        try:
            state = load_checkpoint(Path(args.resume), model=model, optimizer=None if args.eval_only else optimizer,
                                    lr_scheduler=None if args.eval_only else lr_scheduler,
                                    states=None if args.eval_only else states, info=info, scaler=scaler,
                                    restore_rng=not args.eval_only)
        except KeyError:
            raise ValueError(f"{args.resume} was trained with another --scheme; resume it with that one") from None
        start_epoch, history = state["epoch"] + 1, list(state.get("history", []))
        if scheme is not None and scheme.epoch != start_epoch:
            scheme.set_epoch(start_epoch)

    val_loader = make_loader(val_set, args.batch_size, info, train=False, seed=args.seed,
                             num_workers=args.num_workers)

    def evaluate(epoch: int) -> dict[str, Any]:
        return {"coco_kp": evaluate_keypoints(model, val_loader, _base(val_set), layout.sigmas, info.device)}

    if args.eval_only:
        started = time.perf_counter()
        stats = evaluate(start_epoch)
        if info.is_main:
            print(f"COCO keypoint AP ({args.scheme}): " + ", ".join(f"{k} {100 * v:.1f}"
                                                                 for k, v in stats["coco_kp"].items()))
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
        on_epoch_end=(lambda epoch: scheme.step()) if scheme is not None else None,
        start_epoch=start_epoch, stop_after=args.stop_after, history=history,
        record_extra={"scheme": args.scheme}, args=args,
        describe=lambda record: f" AP {100 * record['coco_kp']['AP']:.1f}" if "coco_kp" in record else "",
        progress=not args.quiet,
    )
