"""Match qualities for top-k assignment (DETA, MS-DETR, TOOD): higher is better.

These are :class:`~hybridmatch.costs.Cost` objects in the matcher's sense (a pairwise
``Tensor[B, N, M]`` of outputs and targets) but read the other way: a
:class:`~hybridmatch.matchers.TopK` assigner keeps the *highest* values. Feed them to
``TopK``, not to ``Hungarian``.

A prediction or target box that is not finite gives NaN quality for its whole row or
column, so the assigner can name it (``IoU`` alone would hide a NaN box as 0 overlap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..boxes import box_cxcywh_to_xyxy, pairwise_iou
from ..errors import InvalidPredictionError, InvalidTargetError, ShapeError
from ..validation import check_probability, check_tensor, nan_where_nonfinite
from .boxes import _check_box_inputs
from ._base import Cost, Shared, key_repr, read_output, read_target, shape_of, valid_mask
from .classes import check_label_range

__all__ = ["IoUQuality", "ClassIoUQuality"]


class IoUQuality(Cost):
    """``IoU(pred_boxes[n], boxes[m])`` of cxcywh boxes, ``Tensor[B, N, M]`` float32 in [0, 1].

    Args:
        key (str): the outputs entry with the boxes (default ``pred_boxes``).

    Example:
        >>> from hybridmatch import IoUQuality
        >>> pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.55, 0.5, 0.2, 0.2]]])   # same box; shifted by half
        >>> IoUQuality()({"pred_boxes": pred}, {"boxes": pred[:, :1]})             # higher is better
        tensor([[[1.0000],
                 [0.6000]]])
    """

    images_independent = True

    target_keys = ("boxes",)

    def __init__(self, *, key: str = "pred_boxes") -> None:
        self.key = key
        self.output_keys = (key,)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        super().check(outputs, targets)
        _check_box_inputs(type(self).__name__, read_output(outputs, self.key, self), read_target(targets, "boxes", self))

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        pred = outputs[self.key].float()
        target = read_target(targets, "boxes", self).to(pred.device).float()
        iou = pairwise_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        return nan_where_nonfinite(iou, pred, target)

    def __repr__(self) -> str:
        return f"IoUQuality({key_repr(self.key, 'pred_boxes')})"


class ClassIoUQuality(IoUQuality):
    """The class-and-IoU score ``p ** alpha * iou ** (1 - alpha)`` (MS-DETR, TOOD).

    ``p = sigmoid(logits[n, labels[m]])`` (sigmoid / focal logits, C = classes);
    ``alpha = 0`` is the IoU alone, ``alpha = 1`` the class probability alone.

    Args:
        alpha (float): weight of the class probability, in [0, 1].
        key (str): the outputs entry with the boxes (default ``pred_boxes``).
        logits_key (str): the outputs entry with the logits (default ``pred_logits``).

    Example:
        >>> from hybridmatch import ClassIoUQuality
        >>> outputs = {"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]), "pred_logits": torch.zeros(1, 1, 2)}
        >>> targets = {"labels": torch.tensor([[1]]), "boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}
        >>> ClassIoUQuality(alpha=0.5)(outputs, targets)   # sigmoid(0) ** 0.5 * IoU(1) ** 0.5
        tensor([[[0.7071]]])
    """

    target_keys = ("boxes", "labels")

    def __init__(self, alpha: float = 0.5, *, key: str = "pred_boxes", logits_key: str = "pred_logits") -> None:
        super().__init__(key=key)
        self.alpha = check_probability(alpha, "alpha", where="ClassIoUQuality")
        self.logits_key = logits_key
        self.output_keys = (key, logits_key)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        super().check(outputs, targets)
        logits = read_output(outputs, self.logits_key, self)
        check_tensor(
            logits, f"outputs[{self.logits_key!r}]", ndim=3, layout="(B, N, C)", dtype="floating",
            where=type(self).__name__, error=InvalidPredictionError,
        )
        labels = read_target(targets, "labels", self)
        check_tensor(
            labels, "each targets[b]['labels']", ndim=2, layout="(B, M) once padded", dtype="integer",
            where=type(self).__name__, error=InvalidTargetError,
        )
        boxes = read_target(targets, "boxes", self)
        if labels.shape != boxes.shape[:2] or logits.shape[:2] != read_output(outputs, self.key, self).shape[:2]:
            raise ShapeError(
                f"{type(self).__name__}: labels {shape_of(labels)} must be (B, M) of boxes {shape_of(boxes)}, and "
                f"outputs[{self.logits_key!r}] {shape_of(logits)} (B, N, C) of outputs[{self.key!r}]"
            )
        num_classes = logits.shape[-1]
        layout = f"{num_classes} focal logits = {num_classes} classes"
        check_label_range(type(self).__name__, labels, valid_mask(targets, labels), num_classes, layout)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        iou = super().compute(outputs, targets, shared)
        logits = outputs[self.logits_key]
        labels = read_target(targets, "labels", self).to(logits.device).clamp(0, logits.shape[-1] - 1)
        index = labels[:, None, :].expand(-1, logits.shape[1], -1)
        prob = logits.float().sigmoid().gather(2, index)
        return nan_where_nonfinite(prob.pow(self.alpha) * iou.pow(1.0 - self.alpha), logits)

    def __repr__(self) -> str:
        parts = [f"alpha={self.alpha!r}", key_repr(self.key, "pred_boxes"), key_repr(self.logits_key, "pred_logits", "logits_key")]
        return f"ClassIoUQuality({', '.join(p for p in parts if p)})"
