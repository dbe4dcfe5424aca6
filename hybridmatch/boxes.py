"""Box formats and batched pairwise IoU / GIoU.

Two formats, named in every function: ``cxcywh`` (centre x, centre y, width,
height; the DETR convention for predictions and targets) and ``xyxy`` (left, top,
right, bottom). The overlap functions take ``xyxy`` only; convert first with
:func:`box_cxcywh_to_xyxy`.

Overlaps are computed in float32 whatever the input (float16, bfloat16 and
integer boxes are upcast; float64 stays float64), so that areas of boxes in
pixel units do not overflow under AMP.

Degenerate boxes are defined, not rejected, and never produce NaN:

* a box with a negative width or height (``x1 < x0`` or ``y1 < y0``) has zero
  area, as does a box of zero width or height; no corner is reordered;
* the enclosing box used by GIoU is ``(min x0, min y0, max x1, max y1)`` over the
  pair, a negative width or height of it counting as zero;
* the IoU of two boxes whose union has zero area is 0;
* when the smallest enclosing box has zero area, GIoU equals IoU (which is then 0);
* hence IoU is in [0, 1] and GIoU in [-1, 1] for all finite inputs.

Non-finite coordinates (NaN, inf) give NaN; they are not checked here, since a
check would be a device synchronisation in the matcher's hot path.

GIoU is from Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ShapeError
from .validation import check_same_device, check_tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "pairwise_iou",
    "pairwise_giou",
    "elementwise_giou",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert boxes from ``cxcywh`` to ``xyxy``.

    Args:
        boxes (Tensor[..., 4]): boxes as (centre x, centre y, width, height).

    Returns:
        Tensor[..., 4]: the same boxes as (x0, y0, x1, y1), in the input's dtype.

    Example:
        >>> box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 1.0, 2.0]))
        tensor([ 0.0000, -0.5000,  1.0000,  1.5000])
    """
    check_tensor(boxes, "boxes", last=4, layout="(..., 4)", needs_values=False)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert boxes from ``xyxy`` to ``cxcywh``.

    Args:
        boxes (Tensor[..., 4]): boxes as (x0, y0, x1, y1).

    Returns:
        Tensor[..., 4]: the same boxes as (centre x, centre y, width, height), in the
        input's dtype. A box with ``x1 < x0`` gets a negative width (nothing is clamped).

    Example:
        >>> from hybridmatch.boxes import box_xyxy_to_cxcywh
        >>> box_xyxy_to_cxcywh(torch.tensor([[0.0, 0.0, 0.4, 0.2]]))
        tensor([[0.2000, 0.1000, 0.4000, 0.2000]])
    """
    check_tensor(boxes, "boxes", last=4, layout="(..., 4)", needs_values=False)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) * 0.5, (y0 + y1) * 0.5, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes; a negative width or height counts as zero.

    Args:
        boxes (Tensor[..., 4]): boxes as (x0, y0, x1, y1).

    Returns:
        Tensor[...]: areas, >= 0, in float32 (float64 for float64 input).

    Example:
        >>> from hybridmatch.boxes import box_area
        >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]]))
        tensor([6., 0.])
    """
    check_tensor(boxes, "boxes", last=4, layout="(..., 4)", needs_values=False)
    boxes = _upcast(boxes)
    return _area(boxes)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of ``xyxy`` boxes, per image.

    Args:
        boxes1 (Tensor[B, N, 4] or Tensor[N, 4]): boxes as (x0, y0, x1, y1).
        boxes2 (Tensor[B, M, 4] or Tensor[M, 4]): boxes as (x0, y0, x1, y1), with the
            same number of dimensions (and the same B) as ``boxes1``.

    Returns:
        Tensor[B, N, M] or Tensor[N, M]: IoU in [0, 1]; 0 where the union has zero
        area. float32, or float64 if an input is float64.

    Example:
        >>> # a unit square inside a 2 x 2 square: IoU 1/4
        >>> small = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> big = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> pairwise_iou(small, big)
        tensor([[0.2500]])
    """
    boxes1, boxes2 = _check_pairwise(boxes1, boxes2)
    iou, _, _ = _overlaps(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3))
    return iou


def pairwise_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of every pair of ``xyxy`` boxes, per image.

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with C the smallest box enclosing A and B;
    GIoU = IoU where ``|C| = 0``.

    Args:
        boxes1 (Tensor[B, N, 4] or Tensor[N, 4]): boxes as (x0, y0, x1, y1).
        boxes2 (Tensor[B, M, 4] or Tensor[M, 4]): boxes as (x0, y0, x1, y1), with the
            same number of dimensions (and the same B) as ``boxes1``.

    Returns:
        Tensor[B, N, M] or Tensor[N, M]: GIoU in [-1, 1], never above the IoU of the
        same pair. float32, or float64 if an input is float64.

    Example:
        >>> # two unit squares side by side: IoU 0, and they fill their enclosing box: GIoU 0
        >>> left = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> right = torch.tensor([[1.0, 0.0, 2.0, 1.0]])
        >>> pairwise_giou(left, right)
        tensor([[0.]])
    """
    boxes1, boxes2 = _check_pairwise(boxes1, boxes2)
    iou, union, enclosing = _overlaps(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3))
    return _giou(iou, union, enclosing)


def elementwise_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of corresponding ``xyxy`` boxes (matched pairs, for a loss).

    Same definition and degenerate-box rules as :func:`pairwise_giou`; gradients are
    finite for degenerate boxes too.

    Args:
        boxes1 (Tensor[..., 4]): boxes as (x0, y0, x1, y1).
        boxes2 (Tensor[..., 4]): boxes as (x0, y0, x1, y1), the same shape as ``boxes1``.

    Returns:
        Tensor[...]: GIoU in [-1, 1], float32 (float64 if an input is float64).

    Example:
        >>> from hybridmatch.boxes import elementwise_giou
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        >>> b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]])   # the same box; an adjacent one
        >>> elementwise_giou(a, b)
        tensor([1., 0.])
    """
    check_tensor(boxes1, "boxes1", last=4, layout="(..., 4)", needs_values=False)
    check_tensor(boxes2, "boxes2", last=4, layout="(..., 4)", needs_values=False)
    if boxes1.shape != boxes2.shape:
        raise ShapeError(
            f"elementwise_giou: boxes1 and boxes2 must have the same shape (..., 4), got "
            f"boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)}; for all pairs "
            f"use pairwise_giou"
        )
    check_same_device("", "boxes1", boxes1, "boxes2", boxes2)
    iou, union, enclosing = _overlaps(_upcast(boxes1), _upcast(boxes2))
    return _giou(iou, union, enclosing)


def _upcast(boxes: Tensor) -> Tensor:
    # float16 areas overflow at 256 x 256 pixels; bfloat16 loses IoU digits.
    if boxes.dtype in (torch.float32, torch.float64):
        return boxes
    return boxes.float()


def _area(boxes: Tensor) -> Tensor:
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return widths * heights


def _safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator where the denominator is > 0, else 0, with finite gradients."""
    positive = denominator > 0
    # The inner where keeps 0/0 out of the backward pass of the outer one.
    safe_denominator = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, numerator / safe_denominator, torch.zeros_like(numerator))


def _overlaps(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, union area and enclosing-box area of two broadcastable ``xyxy`` tensors."""
    area1 = _area(boxes1)
    area2 = _area(boxes2)

    inter_lo = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    inter_hi = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter_wh = (inter_hi - inter_lo).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    # inter <= min(area1, area2) even after rounding, so union >= inter >= 0 and IoU <= 1.
    union = area1 + area2 - inter
    iou = _safe_ratio(inter, union)

    enclosing_lo = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enclosing_hi = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclosing_wh = (enclosing_hi - enclosing_lo).clamp(min=0)
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return iou, union, enclosing


def _giou(iou: Tensor, union: Tensor, enclosing: Tensor) -> Tensor:
    # Clamping keeps GIoU <= IoU when rounding puts the union a hair above the enclosing
    # area; union >= 0 keeps the penalty <= 1, so GIoU >= -1.
    empty_part = (enclosing - union).clamp(min=0)
    return iou - _safe_ratio(empty_part, enclosing)


def _check_pairwise(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4:
            raise ShapeError(
                f"{name} must have shape (B, N, 4) or (N, 4), got {tuple(boxes.shape)}"
            )
    if boxes1.ndim != boxes2.ndim:
        raise ShapeError(
            f"boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)} must both be "
            f"batched (B, N, 4) or both unbatched (N, 4)"
        )
    if boxes1.ndim == 3 and boxes1.shape[0] != boxes2.shape[0]:
        raise ShapeError(
            f"boxes1 has batch size {boxes1.shape[0]} but boxes2 has {boxes2.shape[0]} "
            f"(shapes {tuple(boxes1.shape)} and {tuple(boxes2.shape)}); both must describe "
            f"the same images"
        )
    check_same_device("", "boxes1", boxes1, "boxes2", boxes2)
    return _upcast(boxes1), _upcast(boxes2)
