"""Matchers: ``(outputs, targets) -> indices``, built from a cost and a solver.

:class:`HungarianMatcher` is a drop-in for DETR's matcher: it takes DETR's
outputs (``pred_logits (B, N, C)``, ``pred_boxes (B, N, 4)`` cxcywh) and list of
target dicts, and returns DETR's list of ``(pred_idx, tgt_idx)`` pairs. Unlike
DETR's, it builds the cost per image on a padded ``(B, N, M_max)`` batch rather
than one ``(B*N, sum M)`` matrix, validates its inputs and names the culprit
when they are wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .costs import Cost, CostSum, FocalClassCost, GIoUCost, L1BoxCost, SoftmaxClassCost
from .errors import InvalidCostError, InvalidPredictionError, InvalidTargetError, ShapeError
from .solvers import assignment_to_pairs, batched_linear_sum_assignment
from .solvers._validate import NanPolicy, check_capacity, check_nan_policy
from .targets import PaddedTargets, pad_targets

__all__ = ["HungarianMatcher", "Matches"]

#: DETR's index format: per image, ``(pred_idx, tgt_idx)`` int64, sorted by ``pred_idx``.
Matches = list[tuple[Tensor, Tensor]]
Targets = Sequence[Mapping[str, Any]]


class HungarianMatcher(torch.nn.Module):
    """One-to-one (or capacity-K) minimum-cost matching of queries to ground truth.

    The default cost is Deformable-DETR's and H-DETR's:
    ``2 * focal class cost + 5 * L1 + 2 * (-GIoU)``.

    Args:
        cost_class (float): weight of the class cost. Default 2.
        cost_bbox (float): weight of the L1 box cost. Default 5.
        cost_giou (float): weight of the GIoU cost. Default 2.
        class_cost (str): ``"focal"`` (sigmoid logits, C = classes) or ``"softmax"``
            (DETR: C = classes + 1, no-object last).
        focal_alpha (float), focal_gamma (float): focal cost settings (0.25, 2).
        cost (Cost, optional): any :class:`~hybridmatch.costs.Cost`; replaces the
            three weighted terms above.
        capacity (int): how many queries one target may take; 1 (default) is
            one-to-one, K solves H-DETR's GT-repeated-K-times problem without copies.
        backend (str): solver backend, see :func:`~hybridmatch.solvers.batched_linear_sum_assignment`.
        nan_policy (str): ``"raise"`` (default) or ``"worst"`` (NaN costs are the worst; warned once).

    Example:
        >>> matcher = HungarianMatcher()
        >>> outputs = {"pred_logits": torch.zeros(1, 3, 2),
        ...            "pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1],
        ...                                         [0.7, 0.7, 0.2, 0.2],
        ...                                         [0.5, 0.5, 0.9, 0.9]]])}
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)
        [(tensor([1]), tensor([0]))]
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        *,
        class_cost: Literal["focal", "softmax"] = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cost: Cost | None = None,
        capacity: int = 1,
        backend: str = "auto",
        nan_policy: NanPolicy = "raise",
    ) -> None:
        super().__init__()
        if class_cost not in ("focal", "softmax"):
            raise ValueError(f"class_cost must be 'focal' or 'softmax', got {class_cost!r}")
        if cost is None:
            weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
            for name, weight in weights.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                    raise ValueError(f"{name} must be a finite number, got {weight!r}")
            if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
                raise ValueError("all cost weights are 0: every assignment would cost the same")
            classes: Cost = (
                FocalClassCost(focal_alpha, focal_gamma) if class_cost == "focal" else SoftmaxClassCost()
            )
            cost = CostSum([(cost_class, classes), (cost_bbox, L1BoxCost()), (cost_giou, GIoUCost())])
        elif not isinstance(cost, Cost):
            raise TypeError(f"cost must be a hybridmatch.costs.Cost, got {type(cost).__name__}")
        self.cost = cost
        self.class_cost = class_cost
        self.capacity = check_capacity(capacity)
        self.backend = backend
        self.nan_policy = check_nan_policy(nan_policy)

    def extra_repr(self) -> str:
        return (
            f"cost={self.cost!r}, capacity={self.capacity}, backend={self.backend!r}, "
            f"nan_policy={self.nan_policy!r}"
        )

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Targets) -> Matches:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits (Tensor[B, N, C])`` and ``pred_boxes (Tensor[B, N, 4])``
                cxcywh (or the keys the cost reads).
            targets: B dicts with ``labels (Tensor[M_b] int64)`` and ``boxes (Tensor[M_b, 4])``.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors (as DETR returns them),
            sorted by ``pred_idx``; ``tgt_idx`` is local to the image. :meth:`match`
            gives the batched form on the predictions' device.
        """
        return assignment_to_pairs(self.match(outputs, targets).cpu())

    @torch.no_grad()
    def match(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Tensor:
        """The batched form: ``Tensor[B, N]`` int64, the target of each query or -1."""
        padded = targets if isinstance(targets, PaddedTargets) else _pad(targets)
        logits = self._check_outputs(outputs, padded)
        if logits is not None:
            self._check_labels(logits, padded)
        cost = self.cost(outputs, padded)
        try:
            return batched_linear_sum_assignment(
                cost,
                padded.num_targets_list,
                capacity=self.capacity,
                backend=self.backend,
                nan_policy=self.nan_policy,
            )
        except InvalidCostError as error:
            _explain_nan(outputs, cost, error)
            raise

    def _check_outputs(self, outputs: Mapping[str, Tensor], padded: PaddedTargets) -> Tensor | None:
        if not isinstance(outputs, Mapping):
            raise InvalidPredictionError(
                f"outputs must be a dict of tensors (pred_logits, pred_boxes), got {type(outputs).__name__}"
            )
        boxes = outputs.get("pred_boxes")
        logits = outputs.get("pred_logits")
        for name, tensor, last in (("pred_logits", logits, None), ("pred_boxes", boxes, 4)):
            if tensor is None:
                continue
            if tensor.ndim != 3 or (last is not None and tensor.shape[-1] != last):
                want = "(B, N, C)" if last is None else "(B, N, 4)"
                raise ShapeError(f"outputs[{name!r}] must be {want}, got {tuple(tensor.shape)}")
            if tensor.shape[0] != padded.batch_size:
                raise ShapeError(
                    f"outputs[{name!r}] holds {tensor.shape[0]} images but {padded.batch_size} "
                    "target dicts were given; pass one target dict per image"
                )
        if logits is not None and boxes is not None and logits.shape[1] != boxes.shape[1]:
            raise ShapeError(
                f"outputs['pred_logits'] has {logits.shape[1]} queries but outputs['pred_boxes'] "
                f"has {boxes.shape[1]}"
            )
        return logits

    def _check_labels(self, logits: Tensor, padded: PaddedTargets) -> None:
        num_logits = logits.shape[-1]
        num_classes = num_logits if self.class_cost == "focal" else num_logits - 1
        labels = padded.labels
        bad = padded.valid & ((labels < 0) | (labels >= num_classes))
        if not bool(bad.any()):  # one sync; the solve copies the cost to the host anyway
            return
        image, index = (int(v) for v in torch.nonzero(bad)[0])
        layout = (
            f"{num_logits} focal logits = {num_classes} classes"
            if self.class_cost == "focal"
            else f"{num_logits} softmax logits = {num_classes} classes + no-object"
        )
        raise InvalidTargetError(
            f"targets[{image}]['labels'][{index}] = {int(labels[image, index])} is outside "
            f"[0, {num_classes}) ({layout}); remap the dataset's category ids to contiguous "
            "indices or widen the classifier"
        )


def _pad(targets: Targets) -> PaddedTargets:
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise InvalidTargetError(
            f"targets must be a list of per-image dicts (labels, boxes), got {type(targets).__name__}"
        )
    return pad_targets(targets, per_object_keys=())


def _explain_nan(outputs: Mapping[str, Tensor], cost: Tensor, error: InvalidCostError) -> None:
    """Re-raise a NaN cost as an error naming the prediction that caused it, if one did."""
    nan = torch.isnan(cost)
    if not bool(nan.any()):
        return
    image, query, _ = (int(v) for v in torch.nonzero(nan)[0])
    for key, tensor in outputs.items():
        if isinstance(tensor, Tensor) and tensor.ndim >= 2 and tensor.is_floating_point():
            if tensor.shape[0] > image and tensor.shape[1] > query and bool(torch.isnan(tensor[image, query]).any()):
                raise InvalidPredictionError(
                    f"outputs[{key!r}][{image}, {query}] contains NaN (image {image}, query {query}), "
                    "so its matching cost is NaN; check for AMP overflow or a diverging loss, or "
                    "pass nan_policy='worst' to match around it"
                ) from error
