"""Box costs: L1 distance and negative generalized IoU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..boxes import box_cxcywh_to_xyxy, pairwise_giou
from ..validation import check_same_batch, check_tensor, nan_where_nonfinite
from ._base import Cost, Shared, key_repr, read_target

__all__ = ["l1_box_cost", "giou_cost", "L1BoxCost", "GIoUCost"]


def l1_box_cost(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """L1 distance between every predicted and every target box.

    Any box format works as long as both use the same one (DETR uses normalised
    ``cxcywh``).

    Args:
        pred_boxes (Tensor[B, N, 4]): predicted boxes, any real dtype, finite.
        target_boxes (Tensor[B, M, 4]): target boxes, any real dtype, finite.

    Returns:
        Tensor[B, N, M] float32: ``sum_i |pred_boxes[b, n, i] - target_boxes[b, m, i]|``,
        >= 0; NaN in the rows of predicted and the columns of target boxes that hold NaN or
        an infinity (the solver refuses it and the matcher names the box).

    Example:
        >>> import torch
        >>> from hybridmatch.costs import l1_box_cost
        >>> l1_box_cost(torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]), torch.tensor([[[0.6, 0.5, 0.2, 0.4]]]))
        tensor([[[0.3000]]])
    """
    _check_box_inputs("l1_box_cost", pred_boxes, target_boxes)
    # Broadcasting rather than torch.cdist: cdist has no float16 path on every device,
    # and this stays exact in float32 for the small N x M of matching.
    diff = pred_boxes.float().unsqueeze(2) - target_boxes.float().unsqueeze(1)
    return nan_where_nonfinite(diff.abs().sum(dim=-1), pred_boxes, target_boxes)


def giou_cost(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """Negative generalized IoU between every predicted and every target box.

    See :func:`hybridmatch.boxes.pairwise_giou` for the degenerate-box rules (finite,
    never NaN).

    Args:
        pred_boxes (Tensor[B, N, 4]): predicted boxes, ``cxcywh``, any real dtype, finite
            (a negative width or height is a degenerate box).
        target_boxes (Tensor[B, M, 4]): target boxes, ``cxcywh``, as ``pred_boxes``.

    Returns:
        Tensor[B, N, M] float32, in [-1, 1]; NaN in the rows and columns of boxes holding
        NaN or an infinity, as :func:`l1_box_cost`.

    Example:
        >>> import torch
        >>> from hybridmatch.costs import giou_cost
        >>> boxes = torch.tensor([[[0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.5, 1.0]]])
        >>> giou_cost(boxes, boxes)
        tensor([[[-1., -0.],
                 [-0., -1.]]])
    """
    _check_box_inputs("giou_cost", pred_boxes, target_boxes)
    pred_xyxy = box_cxcywh_to_xyxy(pred_boxes.float())
    target_xyxy = box_cxcywh_to_xyxy(target_boxes.float())
    return nan_where_nonfinite(-pairwise_giou(pred_xyxy, target_xyxy), pred_boxes, target_boxes)


class _BoxCost(Cost):
    target_keys = ("boxes",)
    images_independent = True

    def __init__(self, key: str) -> None:
        self.key = key
        self.output_keys = (key,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({key_repr(self.key, 'pred_boxes')})"


class L1BoxCost(_BoxCost):
    """L1 box cost on ``outputs[key]`` and ``targets.boxes``; see :func:`l1_box_cost`.

    Args:
        key (str): the outputs entry holding the boxes, Tensor[B, N, 4] ``cxcywh``.

    Example:
        >>> import torch
        >>> from hybridmatch import L1BoxCost
        >>> pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
        >>> L1BoxCost()({"pred_boxes": pred}, {"boxes": torch.tensor([[[0.6, 0.5, 0.2, 0.4]]])})
        tensor([[[0.3000]]])
    """

    def __init__(self, *, key: str = "pred_boxes") -> None:
        super().__init__(key)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        return l1_box_cost(outputs[self.key], read_target(targets, "boxes", self))


class GIoUCost(_BoxCost):
    """Negative GIoU on ``outputs[key]`` and ``targets.boxes``; see :func:`giou_cost`.

    Args:
        key (str): the outputs entry holding the boxes, Tensor[B, N, 4] ``cxcywh``.

    Example:
        >>> import torch
        >>> from hybridmatch import GIoUCost
        >>> boxes = torch.tensor([[[0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.5, 1.0]]])   # two adjacent halves
        >>> GIoUCost()({"pred_boxes": boxes}, {"boxes": boxes})                    # -GIoU: -1 same, 0 adjacent
        tensor([[[-1., -0.],
                 [-0., -1.]]])
    """

    def __init__(self, *, key: str = "pred_boxes") -> None:
        super().__init__(key)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        return giou_cost(outputs[self.key], read_target(targets, "boxes", self))


def _check_box_inputs(function: str, pred_boxes: Tensor, target_boxes: Tensor) -> None:
    for name, boxes, size in (("pred_boxes", pred_boxes, "N"), ("target_boxes", target_boxes, "M")):
        check_tensor(boxes, name, ndim=3, last=4, layout=f"(B, {size}, 4)", dtype="real", where=function)
    check_same_batch(function, "pred_boxes", pred_boxes, "target_boxes", target_boxes)
