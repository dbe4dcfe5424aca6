"""Training of the segmentation example on :mod:`examples.common`: what is segmentation's.

:func:`run` does a whole run from parsed arguments (:func:`get_args_parser`) and returns its
history (one dict per epoch, also ``output_dir/log.jsonl``). It reuses the detection
example's model configuration (:func:`examples.detection.engine.model_config`), parameter
groups (:func:`~examples.detection.engine.build_optimizer`) and loss function
(:func:`~examples.detection.engine.detection_loss`: forward, criterion, weighted sum), and
adds the data (:mod:`.data`, :mod:`.synthetic`), the mask criterion (:mod:`.criterion`) and
the ``segm`` evaluation (:mod:`.evaluate`). Under ``torchrun`` each process reads its share
through a ``DistributedSampler`` and the model is wrapped in ``DistributedDataParallel``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

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
from examples.detection.criterion import SCHEMES
from examples.detection.engine import build_optimizer, default_lr_drop, detection_loss, model_config

__all__ = ["build_datasets", "cleanup_distributed", "get_args_parser", "make_loader", "run"]


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m examples.segmentation.train``."""
    p = training_parser("examples.segmentation.train",
                        "Train / evaluate a segmentation DETR with hybridmatch (one2one, branch, epoch, layer).",
                        output_dir=Path("outputs/segmentation"), lr=4e-4, batch_size=4)
    p.add_argument("--data", choices=("synthetic", "coco"), default="synthetic",
                   help="synthetic: shapes with instance masks, generated into --data-path when missing; coco: "
                        "DATA_PATH/{train2017,val2017} + DATA_PATH/annotations/instances_*2017.json")
    p.add_argument("--data-path", type=Path, default=Path("data/synthetic-segmentation"))
    p.add_argument("--image-size", type=int, default=64, help="longer image side after resizing")
    p.add_argument("--scheme", choices=SCHEMES, default="branch")
    p.add_argument("--config", choices=("tiny", "r50"), default="tiny")
    p.add_argument("--backbone-weights", type=Path, default=None)
    p.add_argument("--lr-backbone", type=float, default=None)
    p.add_argument("--lr-linear-proj-mult", type=float, default=0.1)
    p.add_argument("--k", type=int, default=None, help="GT copies (default: branch 6, epoch/layer 10)")
    p.add_argument("--lambda-one2many", type=float, default=1.0)
    p.add_argument("--one2many-fraction", type=float, default=2 / 3)
    p.add_argument("--num-one2many-layers", type=int, default=None)
    p.add_argument("--copy-masks", action="store_true",
                   help="repeat the masks K times and match the copies (default: masks shared, capacity-K matching)")
    p.add_argument("--mask-stride", type=int, choices=(2, 4), default=4,
                   help="stride of the mask logits (4: Mask2Former; 2: finer masks for small images)")
    p.add_argument("--num-points", type=int, default=256, help="matching / loss points per image / pair")
    p.add_argument("--num-queries-one2one", type=int, default=None)
    p.add_argument("--num-queries-one2many", type=int, default=None)
    p.add_argument("--synthetic-train-images", type=int, default=160)
    p.add_argument("--synthetic-val-images", type=int, default=64)
    p.add_argument("--synthetic-classes", type=int, default=4)
    p.add_argument("--synthetic-max-objects", type=int, default=20)
    p.add_argument("--data-seed", type=int, default=0)
    return p


def build_datasets(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
    """``(train_set, val_set)``; the synthetic set is generated on rank 0 when missing."""
    from .data import CocoInstanceSegmentation

    root = Path(args.data_path)
    if args.data == "synthetic":
        from .synthetic import generate_synthetic_segmentation, synthetic_ready

        size = (args.image_size, args.image_size)
        splits = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}
        if info.is_main:
            for split, count in splits.items():
                if not synthetic_ready(root, split, count, size, args.synthetic_classes,
                                       args.synthetic_max_objects, args.data_seed):
                    generate_synthetic_segmentation(root, num_images=count, image_size=size,
                                                    num_classes=args.synthetic_classes,
                                                    max_objects=args.synthetic_max_objects, seed=args.data_seed,
                                                    split=split)
        if info.distributed:
            dist.barrier()
        paths = {split: (root / split, root / "annotations" / f"instances_{split}.json") for split in splits}
    else:
        paths = {split: (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
                 for split in ("train", "val")}
    for split, (_, annotations) in paths.items():
        if not annotations.is_file():
            raise FileNotFoundError(f"{split} annotations not found: {annotations} (--data {args.data} "
                                    f"--data-path {root})")
    return (CocoInstanceSegmentation(*paths["train"], size=args.image_size, train=True),
            CocoInstanceSegmentation(*paths["val"], size=args.image_size, train=False))


def make_loader(dataset: Any, batch_size: int, info: DistInfo, *, train: bool, seed: int,
                num_workers: int = 0) -> DataLoader:
    """This rank's loader; its order depends only on (seed, epoch), so resume is exact."""
    from .data import collate_fn

    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train,
                                 seed=seed, drop_last=train and info.distributed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, pin_memory=info.device.type == "cuda")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train (or with ``--eval-only`` evaluate) as the arguments say; return the per-epoch history.

    Each epoch's record holds ``epoch``, ``scheme``, ``lr``, the mean ``train`` losses and,
    when evaluated, ``segm`` (the 12 COCO numbers of :func:`.evaluate.coco_segm_stats`).
    """
    from .evaluate import evaluate_segm
    from .model import build_model
    from .criterion import build_criterion

    info = init_distributed(args.device)
    amp = args.amp and info.device.type == "cuda"
    if args.amp and not amp and info.is_main:
        print("--amp needs a GPU; training in float32 on the CPU", file=sys.stderr)
    run_dir = RunDir(Path(args.output_dir))
    if info.is_main:
        run_dir.create(args, fresh_log=args.resume is None and not args.eval_only)
    train_set, val_set = build_datasets(args, info)
    cfg = model_config(args, len(train_set.label_to_category))
    seed_everything(args.seed)  # the same initial weights on every rank, and for every scheme
    model = build_model(cfg, mask_stride=args.mask_stride).to(info.device)
    criterion, scheme, weight_dict = build_criterion(
        args.scheme, cfg, k=args.k, lambda_one2many=args.lambda_one2many, epochs=args.epochs,
        one2many_fraction=args.one2many_fraction, num_one2many_layers=args.num_one2many_layers,
        copy_masks=args.copy_masks, num_points=args.num_points)
    optimizer = build_optimizer(model, args)
    lr_drop = args.lr_drop if args.lr_drop is not None else default_lr_drop(args.epochs)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    seed_everything(args.seed + info.rank)  # augmentation and point samples differ per rank

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)
    states = {"scheme": scheme}
    start_epoch, history = 0, []
    if args.resume:
        state = load_checkpoint(Path(args.resume), model=model, optimizer=None if args.eval_only else optimizer,
                                lr_scheduler=None if args.eval_only else lr_scheduler,
                                states=None if args.eval_only or scheme is None else states, info=info,
                                scaler=scaler, restore_rng=not args.eval_only)
        start_epoch, history = state["epoch"] + 1, list(state.get("history", []))
        if scheme is not None and scheme.epoch != start_epoch:
            scheme.set_epoch(start_epoch)

    val_loader = make_loader(val_set, args.batch_size, info, train=False, seed=args.seed,
                             num_workers=args.num_workers)

    def evaluate(epoch: int) -> dict[str, Any]:
        return evaluate_segm(model, val_loader, val_set, info.device)

    if args.eval_only:
        stats = evaluate(start_epoch)
        if info.is_main:
            print(f"segm AP {100 * stats['segm']['AP']:.1f} (AP50 {100 * stats['segm']['AP50']:.1f})")
            run_dir.append({"eval_only": True, "scheme": args.scheme, **stats})
        return [stats]
    train_loader = make_loader(train_set, args.batch_size, info, train=True, seed=args.seed,
                               num_workers=args.num_workers)
    criterion.train()
    return fit(
        model=model, train_model=train_model, loss_fn=detection_loss(criterion, weight_dict, info.device, amp),
        loader=train_loader, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, info=info,
        run_dir=run_dir, epochs=args.epochs, clip_max_norm=args.clip_max_norm, evaluate=evaluate,
        eval_every=args.eval_every, eval_epochs=args.eval_epochs, states=states if scheme is not None else {},
        on_epoch_end=(lambda epoch: scheme.step()) if scheme is not None else None,
        start_epoch=start_epoch, stop_after=args.stop_after, history=history,
        record_extra={"scheme": args.scheme}, args=args,
        describe=lambda record: f" segm AP {100 * record['segm']['AP']:.1f}" if "segm" in record else "",
        progress=not args.quiet,
    )
