"""Batched pairwise matching costs ``(B, N, M)`` and their weighted sums.

B images, N queries, M (padded) targets. Every cost is returned in float32
whatever the input dtype: float16 and bfloat16 are upcast before any arithmetic
(AMP-safe), and float64 is cast down, so all terms of a sum share one dtype.

Padded targets: target column ``m`` of image ``b`` is real when ``m <
num_targets[b]``. Padded columns may hold any label (-1, or >= C) and any box;
their costs are arbitrary but finite for finite boxes, and are ignored by the
solver via ``num_targets``. A real column's cost never depends on the padded
ones: every column is computed on its own.

Only metadata is validated here (ndim, batch size, last dimension, dtype,
device). Values are not scanned (no NaN check, no label range check), since that
would synchronise with the GPU in the matcher's hot path; labels are clamped into
``[0, C - 1]`` only so that the gather cannot fail.

The functions are pure; the :class:`Cost` classes store a configuration, read
their inputs from the model outputs and the targets, call the functions, and
compose with ``*`` (a weight) and ``+`` into a :class:`CostSum`::

    cost = 2.0 * FocalClassCost() + 5.0 * L1BoxCost() + 2.0 * GIoUCost()
    cost_matrix = cost(outputs, targets)  # Tensor[B, N, M] float32
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .boxes import box_cxcywh_to_xyxy, pairwise_giou
from .errors import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError

__all__ = [
    "softmax_class_cost",
    "focal_class_cost",
    "l1_box_cost",
    "giou_cost",
    "TargetBatch",
    "Cost",
    "CostSum",
    "SoftmaxClassCost",
    "FocalClassCost",
    "L1BoxCost",
    "GIoUCost",
]

_FOCAL_EPS = 1e-8


def softmax_class_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """Negative softmax probability of each target's class (DETR, Carion et al. 2020).

    Args:
        logits (Tensor[B, N, C]): class logits; C includes the "no object" class.
        labels (Tensor[B, M] integer): target classes; padded columns may hold any value.

    Returns:
        Tensor[B, N, M] float32: ``-softmax(logits[b, n])[labels[b, m]]``, in [-1, 0].
    """
    logits, labels = _check_class_inputs("softmax_class_cost", logits, labels)
    probs = logits.float().softmax(dim=-1)
    return -_gather_classes(probs, labels)


def focal_class_cost(
    logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal class cost of Deformable-DETR (Zhu et al. 2021).

    With ``p = sigmoid(logits[b, n, labels[b, m]])`` and ``eps = 1e-8``::

        pos  = alpha * (1 - p) ** gamma * -log(p + eps)
        neg  = (1 - alpha) * p ** gamma * -log(1 - p + eps)
        cost = pos - neg

    ``1 - p`` is evaluated as ``sigmoid(-logit)``, so the values agree with a float64
    evaluation of the formula to about 1e-6 and stay finite for any finite logit,
    including ±30 in float16.

    Args:
        logits (Tensor[B, N, C]): per-class sigmoid logits (no "no object" class).
        labels (Tensor[B, M] integer): target classes; padded columns may hold any value.
        alpha (float): weight of the positive term, in [0, 1].
        gamma (float): focusing exponent, >= 0.

    Returns:
        Tensor[B, N, M] float32.
    """
    _check_focal_settings(alpha, gamma)
    logits, labels = _check_class_inputs("focal_class_cost", logits, labels)
    target_logits = _gather_classes(logits.float(), labels)
    p = target_logits.sigmoid()
    one_minus_p = (-target_logits).sigmoid()
    pos = alpha * one_minus_p.pow(gamma) * -(p + _FOCAL_EPS).log()
    neg = (1.0 - alpha) * p.pow(gamma) * -(one_minus_p + _FOCAL_EPS).log()
    return pos - neg


def l1_box_cost(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """L1 distance between every predicted and every target box.

    Any box format works as long as both use the same one (DETR uses normalised
    ``cxcywh``).

    Args:
        pred_boxes (Tensor[B, N, 4]): predicted boxes.
        target_boxes (Tensor[B, M, 4]): target boxes.

    Returns:
        Tensor[B, N, M] float32: ``sum_i |pred_boxes[b, n, i] - target_boxes[b, m, i]|``.
    """
    pred_boxes, target_boxes = _check_box_inputs("l1_box_cost", pred_boxes, target_boxes)
    # Broadcasting rather than torch.cdist: cdist has no float16 path on every device,
    # and this stays exact in float32 for the small N x M of matching.
    diff = pred_boxes.float().unsqueeze(2) - target_boxes.float().unsqueeze(1)
    return diff.abs().sum(dim=-1)


def giou_cost(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """Negative generalized IoU between every predicted and every target box.

    See :func:`hybridmatch.boxes.pairwise_giou` for the degenerate-box rules (finite,
    never NaN).

    Args:
        pred_boxes (Tensor[B, N, 4]): predicted boxes, ``cxcywh``.
        target_boxes (Tensor[B, M, 4]): target boxes, ``cxcywh``.

    Returns:
        Tensor[B, N, M] float32, in [-1, 1].
    """
    pred_boxes, target_boxes = _check_box_inputs("giou_cost", pred_boxes, target_boxes)
    pred_xyxy = box_cxcywh_to_xyxy(pred_boxes.float())
    target_xyxy = box_cxcywh_to_xyxy(target_boxes.float())
    return -pairwise_giou(pred_xyxy, target_xyxy)


@runtime_checkable
class TargetBatch(Protocol):
    """A padded batch of targets, such as :class:`hybridmatch.targets.PaddedTargets`.

    Attributes:
        labels (Tensor[B, M] int64): classes; padded columns hold any value.
        boxes (Tensor[B, M, 4]): boxes, ``cxcywh`` normalised.
    """

    @property
    def labels(self) -> Tensor: ...

    @property
    def boxes(self) -> Tensor: ...


class Cost(abc.ABC):
    """A matching cost: ``cost(outputs, targets) -> Tensor[B, N, M]`` float32.

    ``outputs`` maps names to prediction tensors (``pred_logits (B, N, C)``,
    ``pred_boxes (B, N, 4)``, ...); ``targets`` is a :class:`TargetBatch`.
    Multiply by a float for a weighted cost and add costs to sum them; both give a
    :class:`CostSum`.
    """

    @abc.abstractmethod
    def __call__(self, outputs: Mapping[str, Tensor], targets: TargetBatch) -> Tensor:
        """Return the cost matrix, Tensor[B, N, M] float32."""

    def __mul__(self, weight: float) -> CostSum:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            return NotImplemented
        return CostSum([(weight, self)])

    def __rmul__(self, weight: float) -> CostSum:
        return self.__mul__(weight)

    def __add__(self, other: Cost) -> CostSum:
        if not isinstance(other, Cost):
            return NotImplemented
        return CostSum([(1.0, self), (1.0, other)])

    def __radd__(self, other: int) -> CostSum:
        # Lets sum() start from 0: sum(weight * cost for ...).
        if isinstance(other, numbers.Real) and not isinstance(other, bool) and other == 0:
            return CostSum([(1.0, self)])
        return NotImplemented


class CostSum(Cost):
    """A weighted sum of costs: ``sum(weight * cost(outputs, targets))``.

    Nested sums are flattened, so ``2 * (a + b) + c`` has the terms
    ``[(2, a), (2, b), (1, c)]``.

    Args:
        terms (Sequence[tuple[float, Cost]]): at least one ``(weight, cost)`` pair;
            each weight a finite real number (negative and zero allowed).

    Raises:
        ValueError: a weight is not a finite real number, or ``terms`` is empty.
        TypeError: a term is not a :class:`Cost`.
    """

    def __init__(self, terms: Sequence[tuple[float, Cost]]) -> None:
        flat: list[tuple[float, Cost]] = []
        for weight, cost in terms:
            weight = _check_weight(weight)
            if isinstance(cost, CostSum):
                flat.extend((weight * inner_weight, inner) for inner_weight, inner in cost.terms)
            elif isinstance(cost, Cost):
                flat.append((weight, cost))
            else:
                raise TypeError(
                    f"CostSum terms must be (weight, Cost) pairs, got a {type(cost).__name__} "
                    f"as cost"
                )
        if not flat:
            raise ConfigurationError("CostSum needs at least one (weight, cost) term, got none")
        self.terms: tuple[tuple[float, Cost], ...] = tuple(flat)

    def __call__(self, outputs: Mapping[str, Tensor], targets: TargetBatch) -> Tensor:
        (first_weight, first_cost), *rest = self.terms
        total = first_weight * first_cost(outputs, targets)
        for weight, cost in rest:
            total = total + weight * cost(outputs, targets)
        return total

    def __repr__(self) -> str:
        return f"CostSum({' + '.join(f'{weight!r}*{cost!r}' for weight, cost in self.terms)})"


class SoftmaxClassCost(Cost):
    """DETR's class cost on ``outputs[key]``; see :func:`softmax_class_cost`.

    Args:
        key (str): the outputs entry holding the logits, Tensor[B, N, C].
    """

    def __init__(self, *, key: str = "pred_logits") -> None:
        self.key = key

    def __call__(self, outputs: Mapping[str, Tensor], targets: TargetBatch) -> Tensor:
        logits = _get_output(outputs, self.key, self)
        return softmax_class_cost(logits, _get_target(targets, "labels", self))

    def __repr__(self) -> str:
        return f"SoftmaxClassCost({_key_repr(self.key, 'pred_logits')})"


class FocalClassCost(Cost):
    """Deformable-DETR's focal class cost on ``outputs[key]``; see :func:`focal_class_cost`.

    Args:
        alpha (float): weight of the positive term, in [0, 1].
        gamma (float): focusing exponent, >= 0.
        key (str): the outputs entry holding the logits, Tensor[B, N, C].
    """

    def __init__(
        self, alpha: float = 0.25, gamma: float = 2.0, *, key: str = "pred_logits"
    ) -> None:
        _check_focal_settings(alpha, gamma)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.key = key

    def __call__(self, outputs: Mapping[str, Tensor], targets: TargetBatch) -> Tensor:
        logits = _get_output(outputs, self.key, self)
        labels = _get_target(targets, "labels", self)
        return focal_class_cost(logits, labels, alpha=self.alpha, gamma=self.gamma)

    def __repr__(self) -> str:
        key = _key_repr(self.key, "pred_logits")
        return (
            f"FocalClassCost(alpha={self.alpha!r}, gamma={self.gamma!r}{', ' + key if key else ''})"
        )


class L1BoxCost(Cost):
    """L1 box cost on ``outputs[key]`` and ``targets.boxes``; see :func:`l1_box_cost`.

    Args:
        key (str): the outputs entry holding the boxes, Tensor[B, N, 4] ``cxcywh``.
    """

    def __init__(self, *, key: str = "pred_boxes") -> None:
        self.key = key

    def __call__(self, outputs: Mapping[str, Tensor], targets: TargetBatch) -> Tensor:
        pred_boxes = _get_output(outputs, self.key, self)
        return l1_box_cost(pred_boxes, _get_target(targets, "boxes", self))

    def __repr__(self) -> str:
        return f"L1BoxCost({_key_repr(self.key, 'pred_boxes')})"


class GIoUCost(Cost):
    """Negative GIoU on ``outputs[key]`` and ``targets.boxes``; see :func:`giou_cost`.

    Args:
        key (str): the outputs entry holding the boxes, Tensor[B, N, 4] ``cxcywh``.
    """

    def __init__(self, *, key: str = "pred_boxes") -> None:
        self.key = key

    def __call__(self, outputs: Mapping[str, Tensor], targets: TargetBatch) -> Tensor:
        pred_boxes = _get_output(outputs, self.key, self)
        return giou_cost(pred_boxes, _get_target(targets, "boxes", self))

    def __repr__(self) -> str:
        return f"GIoUCost({_key_repr(self.key, 'pred_boxes')})"


def _gather_classes(per_class: Tensor, labels: Tensor) -> Tensor:
    """per_class (B, N, C), labels (B, M) -> per_class[b, n, labels[b, m]] as (B, N, M)."""
    num_queries, num_classes = per_class.shape[1], per_class.shape[2]
    # Padded columns may hold -1 or >= C; clamping keeps the gather in range without a
    # value check (a GPU sync). Real labels are validated where targets are built.
    index = labels.clamp(0, num_classes - 1).unsqueeze(1)
    index = index.expand(labels.shape[0], num_queries, labels.shape[1])
    return per_class.gather(2, index)


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _check_class_inputs(function: str, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if logits.ndim != 3:
        raise ShapeError(
            f"{function}: logits must have shape (B, N, C), got {_shape(logits)}; "
            f"for a single image pass logits[None]"
        )
    if logits.shape[2] == 0:
        raise ShapeError(f"{function}: logits must have at least one class, got {_shape(logits)}")
    if labels.ndim != 2:
        raise ShapeError(
            f"{function}: labels must have shape (B, M), got {_shape(labels)}; "
            f"for a single image pass labels[None]"
        )
    if labels.shape[0] != logits.shape[0]:
        raise ShapeError(
            f"{function}: logits {_shape(logits)} and labels {_shape(labels)} have different "
            f"batch sizes; both must describe the same B images"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ShapeError(
            f"{function}: labels must be an integer tensor (int64), got {labels.dtype}"
        )
    if labels.device != logits.device:
        raise ShapeError(
            f"{function}: logits are on {logits.device} but labels on {labels.device}; "
            f"move both to one device"
        )
    return logits, labels.long()


def _check_box_inputs(
    function: str, pred_boxes: Tensor, target_boxes: Tensor
) -> tuple[Tensor, Tensor]:
    for name, boxes, size in (("pred_boxes", pred_boxes, "N"), ("target_boxes", target_boxes, "M")):
        if boxes.ndim != 3 or boxes.shape[2] != 4:
            raise ShapeError(
                f"{function}: {name} must have shape (B, {size}, 4), got {_shape(boxes)}"
            )
    if pred_boxes.shape[0] != target_boxes.shape[0]:
        raise ShapeError(
            f"{function}: pred_boxes {_shape(pred_boxes)} and target_boxes "
            f"{_shape(target_boxes)} have different batch sizes; both must describe the "
            f"same B images"
        )
    if pred_boxes.device != target_boxes.device:
        raise ShapeError(
            f"{function}: pred_boxes are on {pred_boxes.device} but target_boxes on "
            f"{target_boxes.device}; move both to one device"
        )
    return pred_boxes, target_boxes


def _check_focal_settings(alpha: float, gamma: float) -> None:
    if not _is_finite_real(alpha) or not 0.0 <= alpha <= 1.0:
        raise ConfigurationError(f"focal cost: alpha must be a real number in [0, 1], got {alpha!r}")
    if not _is_finite_real(gamma) or gamma < 0.0:
        raise ConfigurationError(f"focal cost: gamma must be a finite real number >= 0, got {gamma!r}")


def _is_finite_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_weight(weight: object) -> float:
    if not _is_finite_real(weight):
        raise ConfigurationError(
            f"cost weights must be finite real numbers, got {weight!r} ({type(weight).__name__})"
        )
    return float(weight)  # type: ignore[arg-type]


def _key_repr(key: str, default: str) -> str:
    return "" if key == default else f"key={key!r}"


def _get_output(outputs: Mapping[str, Tensor], key: str, cost: Cost) -> Tensor:
    try:
        return outputs[key]
    except KeyError:
        raise InvalidPredictionError(
            f"{type(cost).__name__} reads outputs[{key!r}], which is missing; keys present: "
            f"{list(outputs)}. Pass key=... to read another entry"
        ) from None


def _get_target(targets: TargetBatch, attribute: str, cost: Cost) -> Tensor:
    try:
        return getattr(targets, attribute)  # type: ignore[no-any-return]
    except AttributeError:
        raise InvalidTargetError(
            f"{type(cost).__name__} reads targets.{attribute}, but the "
            f"{type(targets).__name__} passed has no such attribute; pass padded targets "
            f"(hybridmatch.targets.PaddedTargets) with labels (B, M) and boxes (B, M, 4)"
        ) from None
