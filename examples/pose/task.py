"""The keypoint DETR as a task of :mod:`examples.common`: its data, model, criterion, evaluation.

:data:`TASK` is what ``python -m examples.pose.train`` runs (:func:`examples.common.runner.run`
does the run); :data:`COMPARISON` is what ``python -m examples.pose.main_job``
(``make pose-demo``) compares (:func:`examples.common.comparison.main`). What is pose's:
the data (COCO ``person_keypoints`` files or the synthetic stick figures, with pose-aware
augmentations), the model (the detector's configuration with 20 + 60 tiny queries and
keypoint heads), the criterion (:func:`.criterion.build_criterion`) and pycocotools'
keypoint AP with the layout's sigmas (:mod:`.evaluate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from examples.common.comparison import Comparison, Line
from examples.common.data import split_ready
from examples.common.distributed import DistInfo
from examples.common.runner import EvalSetup, Task
from examples.detection.task import model_config

from .data import collate_fn

__all__ = ["COMPARISON", "TASK", "build_data"]

#: The tiny configuration's query counts (Q1 one-to-one, Q2 one-to-many).
TINY_QUERIES = (20, 60)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Pose's own arguments of ``python -m examples.pose.train``."""
    p.add_argument("--synthetic-train-images", type=int, default=128)
    p.add_argument("--synthetic-val-images", type=int, default=64)
    p.add_argument("--synthetic-size", type=int, default=64)
    p.add_argument("--synthetic-max-figures", type=int, default=10)


def build_data(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
    """``(train_set, val_set)`` of ``--data``; the synthetic set is generated on rank 0 if missing."""
    from .data import CocoKeypoints, make_transforms
    from .skeleton import COCO_PERSON, FIGURE

    root = Path(args.data_path)
    if args.data == "synthetic":
        from .synthetic import generate_synthetic_keypoints

        side = args.synthetic_size
        splits = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}
        if info.is_main:
            for split, count in splits.items():
                if not split_ready(root / "annotations" / f"person_keypoints_{split}.json", count=count,
                                   size=(side, side), max_figures=args.synthetic_max_figures, seed=args.data_seed):
                    generate_synthetic_keypoints(root, num_images=count, image_size=side,
                                                 max_figures=args.synthetic_max_figures, seed=args.data_seed,
                                                 split=split)
        if info.distributed:
            dist.barrier()
        paths = {s: (root / s, root / "annotations" / f"person_keypoints_{s}.json") for s in splits}
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
    return CocoKeypoints(*paths["train"], transforms=train_tf), CocoKeypoints(*paths["val"], transforms=val_tf)


def _build_model(args: argparse.Namespace, cfg: Any, train: Any) -> nn.Module:
    from .model import build_model

    return build_model(cfg, train.layout.num_joints)


def _build_criterion(args: argparse.Namespace, cfg: Any, train: Any) -> tuple[nn.Module, Any, dict]:
    from .criterion import build_criterion

    return build_criterion(args.scheme, cfg, train.layout.sigmas, k=args.k, lambda_one2many=args.lambda_one2many,
                           epochs=args.epochs, one2many_fraction=args.one2many_fraction,
                           num_one2many_layers=args.num_one2many_layers)


def _build_evaluator(args: argparse.Namespace, setup: EvalSetup) -> Any:
    from .evaluate import evaluate_keypoints

    def evaluate(epoch: int) -> dict[str, Any]:
        return {"coco_kp": evaluate_keypoints(setup.model, setup.loader, setup.dataset, setup.dataset.layout.sigmas,
                                              setup.info.device)}

    return evaluate


def _report(args: argparse.Namespace, stats: Any) -> str:
    return f"COCO keypoint AP ({args.scheme}): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in stats["coco_kp"].items())


#: The pose task of ``python -m examples.pose.train``.
TASK = Task(
    name="pose",
    description="Train / evaluate a keypoint DETR with hybridmatch (one2one, branch, epoch, layer).",
    add_arguments=add_arguments,
    build_data=build_data,
    model_config=lambda args, train: model_config(args, train.num_classes, tiny_queries=TINY_QUERIES),
    build_model=_build_model,
    build_criterion=_build_criterion,
    build_evaluator=_build_evaluator,
    collate_fn=collate_fn,
    metric="coco_kp",
    defaults={"output_dir": Path("outputs/pose"), "data_path": Path("data/pose-synthetic")},
    report=_report,
)


def _comparison_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-figures", type=int, default=10, help="most figures per image (5.5 on average at 10)")


def _comparison_argv(options: argparse.Namespace, scheme: str) -> list[str]:
    return ["--synthetic-train-images", str(options.train_images), "--synthetic-val-images", str(options.val_images),
            "--synthetic-size", str(options.image_size), "--synthetic-max-figures", str(options.max_figures)]


#: ``make pose-demo``: the tiny keypoint DETR on dense synthetic stick figures, one-to-one vs
#: the hybrid branch (20 + 60 queries, K = 5), keypoint AP of the 20 one-to-one queries.
COMPARISON = Comparison(
    task=TASK,
    task_ref="examples.pose.task:TASK",
    lines=(Line("one2one", "one2one", "coco_kp"), Line("branch o2o", "branch", "coco_kp")),
    hybrid="branch o2o",
    metric="COCO keypoint AP",
    stem="pose",
    add_arguments=_comparison_arguments,
    train_argv=_comparison_argv,
    defaults={"seeds": [0, 1, 2], "epochs": 16, "output_dir": Path("outputs/pose-demo"), "train_images": 256,
              "val_images": 64, "image_size": 64, "num_queries_one2one": TINY_QUERIES[0],
              "num_queries_one2many": TINY_QUERIES[1], "k": 5, "batch_size": 4, "lr": 4e-4},
    early_fraction=0.25,
    title=lambda o: f"tiny keypoint DETR, synthetic figures (<= {o.max_figures} per image), seeds {o.seeds}",
    caveat="""\
What this can and cannot show. A 2+2-layer, 64-wide model trained for a few CPU minutes on
64-pixel stick figures: absolute keypoint APs are low and move between seeds, so read the
paired difference and its interval, not one mean. "branch o2o" is the deployable model (the
same 20 one-to-one queries as one2one, no NMS); the one-to-many queries only train.""",
)
