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

from torch import nn

from examples.common.comparison import Comparison
from examples.common.data import coco_splits
from examples.common.distributed import DistInfo
from examples.common.runner import EvalSetup, Task, scheme_settings
from examples.detection.task import encoder_positions, model_config

from .data import collate_fn

__all__ = ["COMPARISON", "TASK", "SegmentationComparison", "SegmentationTask"]


class SegmentationTask(Task):
    """The segmentation DETR on COCO instance masks (see the module docstring)."""

    name = "segmentation"
    description = "Train / evaluate a segmentation DETR with hybridmatch (one2one, branch, epoch, layer)."
    metric, metric_name = "segm", "segm AP"
    defaults = {"output_dir": Path("outputs/segmentation"), "data_path": Path("data/synthetic-segmentation"),
                "lr": 4e-4, "batch_size": 4}
    resume_keys = ("copy_masks", "mask_stride", "num_points", "image_size")
    collate_fn = staticmethod(collate_fn)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """Segmentation's own arguments of ``python -m examples.segmentation.train``."""
        p.add_argument("--image-size", type=int, default=64, help="longer image side after resizing")
        p.add_argument("--copy-masks", action="store_true",
                       help="repeat the masks K times and match the copies "
                            "(default: masks shared, capacity-K matching)")
        p.add_argument("--mask-stride", type=int, choices=(2, 4), default=4,
                       help="stride of the mask logits (4: Mask2Former; 2: finer masks for small images)")
        p.add_argument("--num-points", type=int, default=256, help="matching / loss points per image / pair")
        p.add_argument("--synthetic-train-images", type=int, default=160)
        p.add_argument("--synthetic-val-images", type=int, default=64)
        p.add_argument("--synthetic-classes", type=int, default=4)
        p.add_argument("--synthetic-max-objects", type=int, default=20)

    def build_data(self, args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
        """``(train_set, val_set)``; the synthetic set is generated on rank 0 when missing."""
        from .data import CocoInstanceSegmentation
        from .synthetic import generate_synthetic_segmentation, synthetic_ready

        size = (args.image_size, args.image_size)
        counts = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}

        def make_split(split: str) -> None:
            if not synthetic_ready(Path(args.data_path), split, counts[split], size, args.synthetic_classes,
                                   args.synthetic_max_objects, args.data_seed):
                generate_synthetic_segmentation(args.data_path, num_images=counts[split], image_size=size,
                                                num_classes=args.synthetic_classes,
                                                max_objects=args.synthetic_max_objects, seed=args.data_seed,
                                                split=split)

        paths = coco_splits(args.data, args.data_path, info, prefix="instances", make_split=make_split)
        return (CocoInstanceSegmentation(*paths["train"], size=args.image_size, train=True),
                CocoInstanceSegmentation(*paths["val"], size=args.image_size, train=False))

    def model_config(self, args: argparse.Namespace, train: Any) -> Any:
        """The detector's :func:`~examples.detection.task.model_config` for the data's classes."""
        return model_config(args, len(train.label_to_category))

    def build_model(self, args: argparse.Namespace, cfg: Any, train: Any) -> nn.Module:
        """:func:`.model.build_model` with ``--mask-stride``."""
        from .model import build_model

        return build_model(cfg, mask_stride=args.mask_stride)


    def build_criterion(self, args: argparse.Namespace, cfg: Any, train: Any) -> tuple[nn.Module, Any, dict]:
        """:func:`.criterion.build_criterion` with ``--copy-masks`` and ``--num-points``."""
        from .criterion import build_criterion

        return build_criterion(args.scheme, cfg, copy_masks=args.copy_masks, num_points=args.num_points,
                               **scheme_settings(args))


    def build_evaluator(self, args: argparse.Namespace, setup: EvalSetup) -> Any:
        """pycocotools' ``segm`` AP of the one-to-one queries (``segm``, on rank 0)."""
        from .evaluate import evaluate_segm

        def evaluate(epoch: int) -> dict[str, Any]:
            return evaluate_segm(setup.model, setup.loader, setup.dataset, setup.info.device)

        return evaluate


    def report(self, args: argparse.Namespace, stats: Any) -> str:
        """``segm`` AP and AP50."""
        return f"segm AP {100 * stats['segm']['AP']:.1f} (AP50 {100 * stats['segm']['AP50']:.1f})"


#: The segmentation task of ``python -m examples.segmentation.train``.
TASK = SegmentationTask()


class SegmentationComparison(Comparison):
    """``make segmentation-demo``: the tiny segmentation DETR on dense synthetic shapes with masks,
    one-to-one vs the hybrid branch (30 + 90 queries, K = 6, masks shared by the K copies),
    5 paired seeds, ``segm`` AP of the 30 one-to-one queries on 200 validation images.

    The images are 160 px, so that the encoder has 500 positions for the 120 queries (4.2
    per query) and two-stage selection gives every query a proposal of its own; the mask
    logits have stride 4 (40 x 40). The readout is the detection pilot's
    (``benchmarks/PILOT.md``): early = half the epochs, end = the mean AP of the last 3."""

    task = TASK
    defaults = {"val_images": 200, "image_size": 160, "seeds": [0, 1, 2, 3, 4]}
    ignore_warnings = (".*copies of its ground truth go unmatched.*",)
    caveat = """\
What this can and cannot show. A 2+2-layer, 64-wide model trained for a few CPU minutes on
coloured shapes: absolute mask APs are low and move between seeds, so read the paired
difference, its 95 % interval and the sign count, not one mean. "branch o2o" is the
deployable model (the same 30 queries as one2one). H-DETR and MaskDINO report gains at
COCO scale; this run cannot reproduce or refute them."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--num-classes", type=int, default=4)
        p.add_argument("--max-objects", type=int, default=20)
        p.add_argument("--mask-stride", type=int, choices=(2, 4), default=4,
                       help="stride of the mask logits (4 here: 40 x 40 masks for the 160-pixel images)")

    def train_argv(self, options: argparse.Namespace, scheme: str) -> list[str]:
        return ["--image-size", str(options.image_size), "--mask-stride", str(options.mask_stride),
                "--synthetic-classes", str(options.num_classes), "--synthetic-max-objects", str(options.max_objects)]

    def title(self, options: argparse.Namespace) -> str:
        per_query = encoder_positions(options.image_size) / (options.num_queries_one2one +
                                                             options.num_queries_one2many)
        return (f"tiny segmentation DETR, synthetic shapes (<= {options.max_objects} per image), {options.image_size} "
                f"px, {per_query:.1f} encoder positions per query, seeds {options.seeds}")


#: The comparison of ``python -m examples.segmentation.main_job`` (``make segmentation-demo``).
COMPARISON = SegmentationComparison()
