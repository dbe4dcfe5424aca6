"""Batched pairwise matching costs ``(B, N, M)`` and their weighted sums.

B images, N queries, M (padded) targets. Every cost is returned in float32
whatever the input dtype: float16 and bfloat16 are upcast before any arithmetic
(AMP-safe), and float64 is cast down, so all terms of a sum share one dtype.

Padded targets: target column ``m`` of image ``b`` is real when ``m <
num_targets[b]``. Padded columns may hold any label (-1, or >= C) and any box;
their costs are arbitrary but finite for finite inputs, and are ignored by the
solver via ``num_targets``. A real column's cost never depends on the padded
ones: every column is computed on its own.

Every cost states a contract per input (range, dtype, layout) in its docstring and
checks it: metadata (ndim, batch size, last dimension, dtype, device) always; values
only where a bad one would give a plausible-looking cost, with one device sync per
call (the class costs' real labels, the keypoint costs' visibility and areas, the mask
costs' target values at the points). A NaN or infinite prediction or box needs no
scan: its row (or column) of the cost is NaN, which the solver refuses and the matcher
traces back to the input. The :class:`Cost` classes declare the keys they read
(:attr:`Cost.output_keys`, :attr:`Cost.target_keys`) and check them. The classes
compose with ``*`` (a weight) and ``+`` into a :class:`CostSum`::

    cost = 2.0 * FocalClassCost() + 5.0 * L1BoxCost() + 2.0 * GIoUCost()
    cost_matrix = cost(outputs, targets)  # Tensor[B, N, M] float32

The terms, by task:

* classes (:mod:`~hybridmatch.costs.classes`): :class:`SoftmaxClassCost`, :class:`FocalClassCost`;
* boxes (:mod:`~hybridmatch.costs.boxes`): :class:`L1BoxCost`, :class:`GIoUCost`;
* keypoints (:mod:`~hybridmatch.costs.keypoints`): :class:`OKSCost`, :class:`KeypointL1Cost`;
* masks (:mod:`~hybridmatch.costs.masks`): :class:`MaskDiceCost`, :class:`MaskBCECost`;
* qualities for top-k assignment (:mod:`~hybridmatch.costs.qualities`): :class:`IoUQuality`,
  :class:`ClassIoUQuality` (higher is better).
"""

from __future__ import annotations

from ._base import Cost, CostSum, TargetBatch
from .boxes import GIoUCost, L1BoxCost, giou_cost, l1_box_cost
from .classes import FocalClassCost, SoftmaxClassCost, focal_class_cost, softmax_class_cost
from .keypoints import COCO_KEYPOINT_SIGMAS, KeypointL1Cost, OKSCost, keypoint_l1_cost, oks_cost
from .masks import (
    DEFAULT_NUM_POINTS,
    MaskBCECost,
    MaskDiceCost,
    bce_cost_on_points,
    dice_cost_on_points,
    mask_bce_cost,
    mask_dice_cost,
    mask_points,
    point_sample,
    sample_points,
)
from .qualities import ClassIoUQuality, IoUQuality

__all__ = [
    "TargetBatch",
    "Cost",
    "CostSum",
    # classes
    "softmax_class_cost",
    "focal_class_cost",
    "SoftmaxClassCost",
    "FocalClassCost",
    # boxes
    "l1_box_cost",
    "giou_cost",
    "L1BoxCost",
    "GIoUCost",
    # keypoints
    "COCO_KEYPOINT_SIGMAS",
    "oks_cost",
    "keypoint_l1_cost",
    "OKSCost",
    "KeypointL1Cost",
    # masks
    "DEFAULT_NUM_POINTS",
    "sample_points",
    "point_sample",
    "mask_points",
    "mask_dice_cost",
    "mask_bce_cost",
    "dice_cost_on_points",
    "bce_cost_on_points",
    "MaskDiceCost",
    "MaskBCECost",
    # qualities
    "IoUQuality",
    "ClassIoUQuality",
]
