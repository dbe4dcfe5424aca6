"""Class costs: DETR's softmax probability and Deformable-DETR's sigmoid focal cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidPredictionError, InvalidTargetError, ShapeError
from ..validation import Arg, ValueCheck, check_probability, check_real, check_tensor, check_values, nan_where_nonfinite
from ._base import Cost, Shared, key_repr, read_output, read_target, shape_of, valid_mask

__all__ = [
    "softmax_class_cost",
    "focal_class_cost",
    "SoftmaxClassCost",
    "FocalClassCost",
]

_FOCAL_EPS = 1e-8


def softmax_class_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """Negative softmax probability of each target's class (DETR, Carion et al. 2020).

    Args:
        logits (Tensor[B, N, C]): floating class logits, C >= 1; C includes the "no object"
            class.
        labels (Tensor[B, M] integer): target classes in ``[0, C)``; a label outside reads
            the nearest class (padded columns may hold any value: -1 or C). The class
            costs (:class:`SoftmaxClassCost`) check the range of the real labels.

    Returns:
        Tensor[B, N, M] float32: ``-softmax(logits[b, n])[labels[b, m]]``, in [-1, 0];
        NaN in the rows of queries with a NaN or infinite logit.

    Example:
        >>> from hybridmatch.costs import softmax_class_cost
        >>> logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))
        >>> softmax_class_cost(logits, torch.tensor([[0, 1]]))        # -probability of each label
        tensor([[[-0.7000, -0.2000]]])
    """
    logits, labels = _check_class_inputs("softmax_class_cost", logits, labels)
    probs = logits.float().softmax(dim=-1)
    return nan_where_nonfinite(-_gather_classes(probs, labels), logits)


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
        logits (Tensor[B, N, C]): floating per-class sigmoid logits (no "no object" class),
            C >= 1.
        labels (Tensor[B, M] integer): target classes in ``[0, C)``, as in
            :func:`softmax_class_cost` (:class:`FocalClassCost` checks the real ones).
        alpha (float): weight of the positive term, in [0, 1].
        gamma (float): focusing exponent, >= 0.

    Returns:
        Tensor[B, N, M] float32 in ``[-(1 - alpha) * L, alpha * L]`` with ``L = -log(eps)
        = 18.42``; NaN in the rows of queries with a NaN or infinite logit.

    Example:
        >>> from hybridmatch.costs import focal_class_cost
        >>> cost = focal_class_cost(torch.tensor([[[4.0, -4.0]]]), torch.tensor([[0, 1]]))
        >>> cost.shape, bool(cost[0, 0, 0] < cost[0, 0, 1])          # class 0 is the cheaper target
        (torch.Size([1, 1, 2]), True)
    """
    _check_focal_settings(alpha, gamma)
    logits, labels = _check_class_inputs("focal_class_cost", logits, labels)
    target_logits = _gather_classes(logits.float(), labels)
    p = target_logits.sigmoid()
    one_minus_p = (-target_logits).sigmoid()
    pos = alpha * one_minus_p.pow(gamma) * -(p + _FOCAL_EPS).log()
    neg = (1.0 - alpha) * p.pow(gamma) * -(one_minus_p + _FOCAL_EPS).log()
    return nan_where_nonfinite(pos - neg, logits)


class _ClassCost(Cost):
    """Shared by the class costs: reads ``outputs[key]`` and ``targets.labels``, checks the range."""

    images_independent = True

    target_keys = ("labels",)
    #: Logit columns that are not a class (the softmax no-object column).
    _extra_columns = 0

    def __init__(self, key: str) -> None:
        self.key = key
        self.output_keys = (key,)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        logits = read_output(outputs, self.key, self)
        labels = read_target(targets, "labels", self)
        name = type(self).__name__
        if logits.ndim != 3:
            raise ShapeError(
                f"{name}: outputs[{self.key!r}] must have shape (B, N, C), got {shape_of(logits)}"
            )
        num_classes = logits.shape[-1] - self._extra_columns
        if num_classes < 1:
            raise InvalidPredictionError(
                f"{name}: outputs[{self.key!r}] has {logits.shape[-1]} logit column(s), "
                f"{self._layout(logits.shape[-1])}: the classifier scores no class; give the "
                f"classification head at least {1 + self._extra_columns} outputs"
            )
        check_label_range(name, labels, valid_mask(targets, labels), num_classes, self._layout(logits.shape[-1]))

    def _layout(self, num_logits: int) -> str:
        return f"{num_logits} focal logits = {num_logits} classes"


def check_label_range(owner: str, labels: Tensor, valid: Tensor, num_classes: int, layout: str) -> None:
    """Raise :class:`InvalidTargetError` naming the first real label outside ``[0, num_classes)``.

    Reads the values: one device sync (the solve copies the cost to the host anyway, and
    a bad label would otherwise surface as a CUDA device-side assert).
    """
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        return  # the cost function names the dtype
    if labels.ndim != 2 or tuple(valid.shape) != tuple(labels.shape):
        return  # the cost function names the shape
    check_values(
        ValueCheck(
            labels, Arg.target("labels", key="labels"), f"in [0, {num_classes}) ({layout})",
            minimum=0, maximum=num_classes - 1, valid=valid,
            fix="remap the dataset's category ids to contiguous indices or widen the classifier",
        ),
        where=owner,
    )


class SoftmaxClassCost(_ClassCost):
    """DETR's class cost on ``outputs[key]``; see :func:`softmax_class_cost`.

    The last logit column is "no object", so real labels must lie in ``[0, C - 1)``.

    Args:
        key (str): the outputs entry holding the logits, Tensor[B, N, C].

    Example:
        >>> from hybridmatch import SoftmaxClassCost
        >>> logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))   # 2 classes + "no object", last
        >>> SoftmaxClassCost()({"pred_logits": logits}, {"labels": torch.tensor([[0, 1]])})
        tensor([[[-0.7000, -0.2000]]])
    """

    _extra_columns = 1

    def __init__(self, *, key: str = "pred_logits") -> None:
        super().__init__(key)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        return softmax_class_cost(outputs[self.key], read_target(targets, "labels", self))

    def _layout(self, num_logits: int) -> str:
        return f"{num_logits} softmax logits = {num_logits - 1} classes + no-object"

    def __repr__(self) -> str:
        return f"SoftmaxClassCost({key_repr(self.key, 'pred_logits')})"


class FocalClassCost(_ClassCost):
    """Deformable-DETR's focal class cost on ``outputs[key]``; see :func:`focal_class_cost`.

    Real labels must lie in ``[0, C)``.

    Args:
        alpha (float): weight of the positive term, in [0, 1].
        gamma (float): focusing exponent, >= 0.
        key (str): the outputs entry holding the logits, Tensor[B, N, C].

    Example:
        >>> from hybridmatch import FocalClassCost
        >>> logits = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]])        # query 0 says class 0, query 1 class 1
        >>> FocalClassCost()({"pred_logits": logits}, {"labels": torch.tensor([[1]])}) < 0
        tensor([[[False],
                 [ True]]])
    """

    def __init__(
        self, alpha: float = 0.25, gamma: float = 2.0, *, key: str = "pred_logits"
    ) -> None:
        _check_focal_settings(alpha, gamma)
        super().__init__(key)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        labels = read_target(targets, "labels", self)
        return focal_class_cost(outputs[self.key], labels, alpha=self.alpha, gamma=self.gamma)

    def __repr__(self) -> str:
        key = key_repr(self.key, "pred_logits")
        return (
            f"FocalClassCost(alpha={self.alpha!r}, gamma={self.gamma!r}{', ' + key if key else ''})"
        )


def _gather_classes(per_class: Tensor, labels: Tensor) -> Tensor:
    """per_class (B, N, C), labels (B, M) -> per_class[b, n, labels[b, m]] as (B, N, M)."""
    num_queries, num_classes = per_class.shape[1], per_class.shape[2]
    # Padded columns may hold -1 or >= C; clamping keeps the gather in range without a
    # value check (a GPU sync). Real labels are checked by the Cost classes.
    index = labels.clamp(0, num_classes - 1).unsqueeze(1)
    index = index.expand(labels.shape[0], num_queries, labels.shape[1])
    return per_class.gather(2, index)


def _check_class_inputs(function: str, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    check_tensor(
        logits, "logits", ndim=3, layout="(B, N, C)", dtype="floating", where=function,
        hint="for a single image pass logits[None]",
    )
    if logits.shape[2] == 0:
        raise ShapeError(f"{function}: logits must have at least one class, got {shape_of(logits)}")
    if labels.ndim != 2:
        raise ShapeError(
            f"{function}: labels must have shape (B, M), got {shape_of(labels)}; "
            f"for a single image pass labels[None]"
        )
    if labels.shape[0] != logits.shape[0]:
        raise ShapeError(
            f"{function}: logits {shape_of(logits)} and labels {shape_of(labels)} have different "
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


def _check_focal_settings(alpha: float, gamma: float) -> None:
    check_probability(alpha, "alpha", where="focal cost")
    check_real(gamma, "gamma", minimum=0.0, where="focal cost")


def focal_class_table(logits: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """:func:`focal_class_cost` of every query and *class*: ``Tensor[B, N, C]`` float32.

    The same formula, elementwise, before the gather by label: gathering this table at
    ``labels`` gives :func:`focal_class_cost`. The fused detection cost reads it.
    """
    logits = logits.float()
    p = logits.sigmoid()
    one_minus_p = (-logits).sigmoid()
    pos = alpha * one_minus_p.pow(gamma) * -(p + _FOCAL_EPS).log()
    neg = (1.0 - alpha) * p.pow(gamma) * -(one_minus_p + _FOCAL_EPS).log()
    return nan_where_nonfinite(pos - neg, logits)


def softmax_class_table(logits: Tensor) -> Tensor:
    """:func:`softmax_class_cost` of every query and class: ``Tensor[B, N, C]`` float32."""
    return nan_where_nonfinite(-logits.float().softmax(dim=-1), logits)
