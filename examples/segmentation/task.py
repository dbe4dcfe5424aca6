"""The segmentation DETR as a task of :mod:`examples.common`: its data, model, criterion, evaluation.

:data:`TASK` is what ``python -m examples.segmentation.train`` runs
(:func:`examples.common.runner.run` does the run); :data:`COMPARISON` is what
``python -m examples.segmentation.main_job`` (``make segmentation-demo``) compares
(:func:`examples.common.comparison.main`). What is segmentation's: the data (COCO instance
masks or the synthetic shapes with masks, :mod:`.data`, :mod:`.synthetic`), the model (the
detector's configuration with a mask head, :mod:`.model`), the mask criterion
(:func:`.criterion.build_criterion`) and pycocotools' ``segm`` AP (:mod:`.evaluate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from examples.common.comparison import Comparison, Line
from examples.common.distributed import DistInfo
from examples.common.runner import EvalSetup, Task
from examples.detection.task import model_config

from .data import collate_fn

__all__ = ["COMPARISON", "TASK", "build_data"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Segmentation's own arguments of ``python -m examples.segmentation.train``."""
    p.add_argument("--image-size", type=int, default=64, help="longer image side after resizing")
    p.add_argument("--copy-masks", action="store_true",
                   help="repeat the masks K times and match the copies (default: masks shared, capacity-K matching)")
    p.add_argument("--mask-stride", type=int, choices=(2, 4), default=4,
                   help="stride of the mask logits (4: Mask2Former; 2: finer masks for small images)")
    p.add_argument("--num-points", type=int, default=256, help="matching / loss points per image / pair")
    p.add_argument("--synthetic-train-images", type=int, default=160)
    p.add_argument("--synthetic-val-images", type=int, default=64)
    p.add_argument("--synthetic-classes", type=int, default=4)
    p.add_argument("--synthetic-max-objects", type=int, default=20)


def build_data(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
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


def _build_model(args: argparse.Namespace, cfg: Any, train: Any) -> nn.Module:
    from .model import build_model

    return build_model(cfg, mask_stride=args.mask_stride)


def _build_criterion(args: argparse.Namespace, cfg: Any, train: Any) -> tuple[nn.Module, Any, dict]:
    from .criterion import build_criterion

    return build_criterion(args.scheme, cfg, k=args.k, lambda_one2many=args.lambda_one2many, epochs=args.epochs,
                           one2many_fraction=args.one2many_fraction, num_one2many_layers=args.num_one2many_layers,
                           copy_masks=args.copy_masks, num_points=args.num_points)


def _build_evaluator(args: argparse.Namespace, setup: EvalSetup) -> Any:
    from .evaluate import evaluate_segm

    def evaluate(epoch: int) -> dict[str, Any]:
        return evaluate_segm(setup.model, setup.loader, setup.dataset, setup.info.device)

    return evaluate


def _report(args: argparse.Namespace, stats: Any) -> str:
    return f"segm AP {100 * stats['segm']['AP']:.1f} (AP50 {100 * stats['segm']['AP50']:.1f})"


#: The segmentation task of ``python -m examples.segmentation.train``.
TASK = Task(
    name="segmentation",
    description="Train / evaluate a segmentation DETR with hybridmatch (one2one, branch, epoch, layer).",
    add_arguments=add_arguments,
    build_data=build_data,
    model_config=lambda args, train: model_config(args, len(train.label_to_category)),
    build_model=_build_model,
    build_criterion=_build_criterion,
    build_evaluator=_build_evaluator,
    collate_fn=collate_fn,
    metric="segm",
    metric_name="segm AP",
    defaults={"output_dir": Path("outputs/segmentation"), "data_path": Path("data/synthetic-segmentation"),
              "lr": 4e-4, "batch_size": 4},
    resume_keys=("copy_masks", "mask_stride", "num_points", "image_size"),
    report=_report,
)


def _comparison_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--max-objects", type=int, default=20)
    p.add_argument("--mask-stride", type=int, choices=(2, 4), default=2,
                   help="stride of the mask logits (2 here: 32 x 32 masks for the 64-pixel images)")


def _comparison_argv(options: argparse.Namespace, scheme: str) -> list[str]:
    return ["--image-size", str(options.image_size), "--mask-stride", str(options.mask_stride),
            "--synthetic-train-images", str(options.train_images), "--synthetic-val-images", str(options.val_images),
            "--synthetic-classes", str(options.num_classes), "--synthetic-max-objects", str(options.max_objects)]


#: ``make segmentation-demo``: the tiny segmentation DETR on dense synthetic shapes with masks,
#: one-to-one vs the hybrid branch (30 + 90 queries, K = 6, masks shared by the K copies),
#: ``segm`` AP of the 30 one-to-one queries.
COMPARISON = Comparison(
    task=TASK,
    task_ref="examples.segmentation.task:TASK",
    lines=(Line("one2one", "one2one", "segm"), Line("branch o2o", "branch", "segm")),
    hybrid="branch o2o",
    metric="COCO segm AP",
    stem="segmentation",
    add_arguments=_comparison_arguments,
    train_argv=_comparison_argv,
    defaults={"seeds": [0, 1, 2], "epochs": 12, "output_dir": Path("outputs/segmentation-demo"),
              "train_images": 160, "val_images": 64, "image_size": 64, "num_queries_one2one": 30,
              "num_queries_one2many": 90, "k": 6, "batch_size": 4, "lr": 4e-4},
    early_fraction=0.5,
    title=lambda o: f"tiny segmentation DETR, synthetic shapes (<= {o.max_objects} per image), seeds {o.seeds}",
    caveat="""\
What this can and cannot show. A 2+2-layer, 64-wide model on 64-pixel images for a few CPU
minutes: absolute mask APs are low and move between seeds, so read the paired difference
and its interval, not one mean. "branch o2o" is the deployable model (the same 30 queries as
one2one). H-DETR and MaskDINO report gains at COCO scale; this run cannot reproduce or refute them.""",
    ignore_warnings=(".*copies of its ground truth go unmatched.*",),
)
