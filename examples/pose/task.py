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

from torch import nn

from examples.common.comparison import Comparison
from examples.common.data import coco_splits, split_ready
from examples.common.distributed import DistInfo
from examples.common.runner import EvalSetup, Task, scheme_settings
from examples.detection.task import encoder_positions, model_config

from .data import collate_fn

__all__ = ["COMPARISON", "TASK", "TINY_QUERIES", "PoseComparison", "PoseTask", "synthetic_scales"]

#: The tiny configuration's query counts (Q1 one-to-one, Q2 one-to-many).
TINY_QUERIES = (20, 60)


def synthetic_scales(side: int) -> tuple[int, ...]:
    """Training sides of the synthetic figures of side ``side``: multiples of 8 from 7/8 of it.

    Example:
        >>> synthetic_scales(152), synthetic_scales(64)
        ((128, 136, 144, 152), (56, 64))
    """
    return tuple(range(max(16, (7 * side // 8) // 8 * 8), side + 1, 8)) or (side,)


class PoseTask(Task):
    """The keypoint DETR on COCO ``person_keypoints`` data (see the module docstring)."""

    name = "pose"
    description = "Train / evaluate a keypoint DETR with hybridmatch (one2one, branch, epoch, layer)."
    metric, metric_name = "coco_kp", "keypoint AP"
    defaults = {"output_dir": Path("outputs/pose"), "data_path": Path("data/pose-synthetic")}
    collate_fn = staticmethod(collate_fn)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """Pose's own arguments of ``python -m examples.pose.train``."""
        p.add_argument("--synthetic-train-images", type=int, default=128)
        p.add_argument("--synthetic-val-images", type=int, default=64)
        p.add_argument("--synthetic-size", type=int, default=64)
        p.add_argument("--synthetic-max-figures", type=int, default=10)

    def build_data(self, args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
        """``(train_set, val_set)`` of ``--data``; the synthetic set is generated on rank 0 if missing."""
        from .data import CocoKeypoints, make_transforms
        from .skeleton import COCO_PERSON, FIGURE
        from .synthetic import generate_synthetic_keypoints

        side = args.synthetic_size
        counts = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}

        def make_split(split: str) -> None:
            root = Path(args.data_path)
            if not split_ready(root / "annotations" / f"person_keypoints_{split}.json", count=counts[split],
                               size=(side, side), max_figures=args.synthetic_max_figures, seed=args.data_seed):
                generate_synthetic_keypoints(root, num_images=counts[split], image_size=side,
                                             max_figures=args.synthetic_max_figures, seed=args.data_seed, split=split)

        paths = coco_splits(args.data, args.data_path, info, prefix="person_keypoints", make_split=make_split)
        if args.data == "synthetic":
            scales = synthetic_scales(side)
            train_tf = make_transforms(True, FIGURE, scales, max(scales))
            val_tf = make_transforms(False, FIGURE, (side,), side)
        else:
            train_tf = make_transforms(True, COCO_PERSON, tuple(range(480, 801, 32)), 1333)
            val_tf = make_transforms(False, COCO_PERSON, (800,), 1333)
        return CocoKeypoints(*paths["train"], transforms=train_tf), CocoKeypoints(*paths["val"], transforms=val_tf)

    def model_config(self, args: argparse.Namespace, train: Any) -> Any:
        """The detector's :func:`~examples.detection.task.model_config` with :data:`TINY_QUERIES`."""
        return model_config(args, train.num_classes, tiny_queries=TINY_QUERIES)

    def build_model(self, args: argparse.Namespace, cfg: Any, train: Any) -> nn.Module:
        """:func:`.model.build_model` with the data's joints."""
        from .model import build_model

        return build_model(cfg, train.layout.num_joints)


    def build_criterion(self, args: argparse.Namespace, cfg: Any, train: Any) -> tuple[nn.Module, Any, dict]:
        """:func:`.criterion.build_criterion` with the data's OKS sigmas."""
        from .criterion import build_criterion

        return build_criterion(args.scheme, cfg, train.layout.sigmas, **scheme_settings(args))


    def build_evaluator(self, args: argparse.Namespace, setup: EvalSetup) -> Any:
        """pycocotools' keypoint AP (``coco_kp``) with the validation data's sigmas."""
        from .evaluate import evaluate_keypoints

        def evaluate(epoch: int) -> dict[str, Any]:
            return {"coco_kp": evaluate_keypoints(setup.model, setup.loader, setup.dataset, setup.dataset.layout.sigmas,
                                                  setup.info.device)}

        return evaluate


    def report(self, args: argparse.Namespace, stats: Any) -> str:
        """Every keypoint AP / AR number of ``coco_kp``."""
        numbers = ", ".join(f"{name} {100 * value:.1f}" for name, value in stats["coco_kp"].items())
        return f"COCO keypoint AP ({args.scheme}): {numbers}"


#: The pose task of ``python -m examples.pose.train``.
TASK = PoseTask()


class PoseComparison(Comparison):
    """``make pose-demo``: the tiny keypoint DETR on dense synthetic stick figures, one-to-one vs
    the hybrid branch (20 + 60 queries, K = 5), 5 paired seeds, keypoint AP of the 20
    one-to-one queries on 200 validation images.

    The images are 152 px (training sides 128-152), so that the encoder has at least 4
    positions per query (320 at 128 px for 80 queries) and two-stage selection gives every
    query a proposal of its own. The readout is the detection pilot's (``benchmarks/PILOT.md``):
    early = half the epochs, end = the mean AP of the last 3 epochs."""

    task = TASK
    defaults = {"epochs": 16, "train_images": 256, "val_images": 200, "image_size": 152, "seeds": [0, 1, 2, 3, 4],
                "num_queries_one2one": TINY_QUERIES[0], "num_queries_one2many": TINY_QUERIES[1], "k": 5}
    caveat = """\
What this can and cannot show. A 2+2-layer, 64-wide model trained for a few CPU minutes on
stick figures: absolute keypoint APs are low and move between seeds, so read the paired
difference, its 95 % interval and the sign count, not one mean. "branch o2o" is the
deployable model (the same 20 one-to-one queries as one2one, no NMS); the one-to-many
queries only train. H-PETR-Pose's COCO gain is far outside what this run can reproduce
or refute."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-figures", type=int, default=10, help="most figures per image (5.5 on average at 10)")

    def train_argv(self, options: argparse.Namespace, scheme: str) -> list[str]:
        return ["--synthetic-size", str(options.image_size), "--synthetic-max-figures", str(options.max_figures)]

    def title(self, options: argparse.Namespace) -> str:
        queries = options.num_queries_one2one + options.num_queries_one2many
        low, high = (encoder_positions(side) / queries for side in (min(synthetic_scales(options.image_size)),
                                                                    options.image_size))
        return (f"tiny keypoint DETR, synthetic figures (<= {options.max_figures} per image), {options.image_size} px, "
                f"{low:.1f}-{high:.1f} encoder positions per query, seeds {options.seeds}")


#: The comparison of ``python -m examples.pose.main_job`` (``make pose-demo``).
COMPARISON = PoseComparison()
