"""Matchers: ``(outputs, targets) -> indices``, built from a cost and a solver.

:class:`HungarianMatcher` is a drop-in for DETR's matcher: it takes DETR's
outputs (``pred_logits (B, N, C)``, ``pred_boxes (B, N, 4)`` cxcywh) and list of
target dicts, and returns DETR's list of ``(pred_idx, tgt_idx)`` pairs. Unlike
DETR's, it builds the cost per image on a padded ``(B, N, M_max)`` batch rather
than one ``(B*N, sum M)`` matrix, validates its inputs and names the culprit
when they are wrong.

The one-to-many matchers share its validation and index format:

* :class:`OneToManyMatcher`: H-DETR's hybrid-branch matching, each target takes up to
  K queries (the optimum of matching against K copies of the ground truth).
* :class:`GroupMatcher`: Group DETR, G equal groups of queries each matched one-to-one.
* :class:`TopKMatcher`: DETA / MS-DETR style, each target takes its top-k queries by IoU
  (or an IoU-and-class quality) above a threshold; see :func:`topk_assignment`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._checks import check_int
from ._warnings import warn_once
from .boxes import box_cxcywh_to_xyxy, pairwise_iou
from .costs import Cost, CostSum, FocalClassCost, GIoUCost, L1BoxCost, SoftmaxClassCost
from .errors import (
    ConfigurationError,
    InvalidCostError,
    InvalidPredictionError,
    InvalidTargetError,
    ShapeError,
)
from .solvers import BACKEND_NAMES, assignment_to_pairs, batched_linear_sum_assignment
from .solvers._validate import NanPolicy, check_capacity, check_nan_policy
from .targets import PaddedTargets, pad_targets

__all__ = [
    "HungarianMatcher",
    "OneToManyMatcher",
    "GroupMatcher",
    "TopKMatcher",
    "Matches",
    "assignment_to_repeated",
    "topk_assignment",
]

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
            raise ConfigurationError(f"class_cost must be 'focal' or 'softmax', got {class_cost!r}")
        if cost is None:
            weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
            for name, weight in weights.items():
                if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                    raise ConfigurationError(f"{name} must be a finite number, got {weight!r}")
            if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
                raise ConfigurationError("all cost weights are 0: every assignment would cost the same")
            classes: Cost = (
                FocalClassCost(focal_alpha, focal_gamma) if class_cost == "focal" else SoftmaxClassCost()
            )
            cost = CostSum([(cost_class, classes), (cost_bbox, L1BoxCost()), (cost_giou, GIoUCost())])
        elif not isinstance(cost, Cost):
            raise TypeError(f"cost must be a hybridmatch.costs.Cost, got {type(cost).__name__}")
        self.cost = cost
        self.class_cost = class_cost
        self.capacity = check_capacity(capacity)
        if backend not in BACKEND_NAMES:
            raise ConfigurationError(f"unknown backend {backend!r}; choose one of {list(BACKEND_NAMES)}")
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
        padded = _as_padded(targets)
        cost = self._cost_matrix(outputs, padded)
        return self._solve(outputs, cost, padded.num_targets_list)

    def _cost_matrix(self, outputs: Mapping[str, Tensor], padded: PaddedTargets) -> Tensor:
        """Validate the inputs and return the cost, ``Tensor[B, N, M_max]``."""
        logits = _check_outputs(outputs, padded)
        if logits is not None:
            _check_labels(logits, padded, self.class_cost)
        return self.cost(outputs, padded)

    def _solve(
        self, outputs: Mapping[str, Tensor], cost: Tensor, num_targets: list[int], groups: int = 1
    ) -> Tensor:
        """Solve ``cost (B, G*n, M)`` as ``B*G`` problems of ``n`` queries; return ``(B, G*n)``."""
        batch, num_queries, max_targets = cost.shape
        per_group = cost.reshape(batch * groups, num_queries // groups, max_targets)
        counts = [m for m in num_targets for _ in range(groups)]
        try:
            assignment = batched_linear_sum_assignment(
                per_group, counts, capacity=self.capacity, backend=self.backend, nan_policy=self.nan_policy
            )
        except InvalidCostError as error:
            _explain_nan(outputs, cost, num_targets, error)
            raise
        return assignment.reshape(batch, num_queries)


class OneToManyMatcher(HungarianMatcher):
    """H-DETR's one-to-many matching: each target takes up to ``k`` queries.

    The minimum-cost assignment in which every query takes at most one target and
    every target at most ``k`` queries; its total equals that of one-to-one matching
    against the ground truth repeated ``k`` times (:func:`~hybridmatch.targets.repeat_targets`),
    which is how H-DETR ("DETRs with Hybrid Matching", Jia et al., CVPR 2023) supervises
    its one-to-many branch, but the K copies are never built. ``min(N, k * M)`` queries
    are matched per image. This is :class:`HungarianMatcher` with ``capacity=k``.

    ``forward`` returns indices into the *original* targets; :meth:`match_repeated`
    returns them into the repeated targets, for a criterion fed ``repeat_targets(targets, k)``.

    Args:
        k (int): queries per target, >= 1 (H-DETR: 6).
        **settings: ``cost_class``, ``cost_bbox``, ``cost_giou``, ``class_cost``,
            ``focal_alpha``, ``focal_gamma``, ``cost``, ``backend``, ``nan_policy``:
            as in :class:`HungarianMatcher`.

    Example:
        >>> matcher = OneToManyMatcher(k=2)
        >>> outputs = {"pred_logits": torch.zeros(1, 3, 2),
        ...            "pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1],
        ...                                         [0.7, 0.7, 0.2, 0.2],
        ...                                         [0.7, 0.7, 0.3, 0.3]]])}
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)
        [(tensor([1, 2]), tensor([0, 0]))]
        >>> matcher.match_repeated(outputs, targets)  # copy 0 and copy 1 of target 0
        [(tensor([1, 2]), tensor([0, 1]))]
    """

    def __init__(
        self,
        k: int = 6,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost: Literal["focal", "softmax"] = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cost: Cost | None = None,
        backend: str = "auto",
        nan_policy: NanPolicy = "raise",
    ) -> None:
        super().__init__(
            cost_class,
            cost_bbox,
            cost_giou,
            class_cost=class_cost,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            cost=cost,
            capacity=_check_k(k, "OneToManyMatcher"),
            backend=backend,
            nan_policy=nan_policy,
        )

    @property
    def k(self) -> int:
        """Queries per target, ``K`` (the solver's capacity)."""
        return self.capacity

    @torch.no_grad()
    def match_repeated(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Matches:
        """Match, with target indices into the ground truth repeated ``k`` times GT-major.

        The r-th query (in query order) matched to target ``j`` of an image with ``M``
        targets gets index ``r * M + j``: copy ``r`` of target ``j`` in
        ``repeat_targets(targets, k)``. Each copy is used at most once, and the total
        cost against the repeated targets equals that of :meth:`forward` (copies are
        identical). See :func:`assignment_to_repeated`.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors sorted by ``pred_idx``,
            ``tgt_idx`` in ``[0, k * M_b)``.
        """
        padded = _as_padded(targets)
        assignment = self.match(outputs, padded)
        return assignment_to_pairs(assignment_to_repeated(assignment, padded.num_targets).cpu())


def assignment_to_repeated(assignment: Tensor, num_targets: Sequence[int] | Tensor) -> Tensor:
    """Turn "target of each query" into indices of GT-major repeated targets.

    Query ``n`` matched to target ``j`` becomes ``r * M_b + j``, where ``r`` counts the
    queries before ``n`` matched to the same target: the first query on a target takes
    copy 0, the next copy 1, and so on. The inverse is
    :func:`~hybridmatch.targets.original_target_index`.

    Args:
        assignment (Tensor[B, N] int64): target of each query or -1, as from
            :meth:`OneToManyMatcher.match`.
        num_targets (Tensor[B] or Sequence[int]): ``M_b``, the original targets per image.

    Returns:
        Tensor[B, N] int64 on the assignment's device: the repeated-target index, or -1.

    Example:
        >>> assignment_to_repeated(torch.tensor([[1, 0, 1, -1, 1]]), [2])
        tensor([[ 1,  0,  3, -1,  5]])
    """
    if not isinstance(assignment, Tensor) or assignment.ndim != 2 or not _is_integer(assignment):
        got = _describe(assignment)
        raise ShapeError(f"assignment must be a (B, N) integer tensor, got {got}")
    batch, num_queries = assignment.shape
    counts = (
        num_targets.to(assignment.device)
        if isinstance(num_targets, Tensor)
        else torch.as_tensor(list(num_targets), dtype=torch.int64, device=assignment.device)
    )
    if counts.shape != (batch,) or not _is_integer(counts):
        raise ShapeError(
            f"num_targets must hold one int per image, (B,) = ({batch},), got {_describe(counts)}"
        )
    assignment = assignment.long()
    # A stable sort groups each target's queries while keeping them in query order; a
    # query's copy number is its distance from the first query of its group.
    grouped, order = torch.sort(assignment, dim=1, stable=True)
    first = torch.searchsorted(grouped, grouped)
    positions = torch.arange(num_queries, device=assignment.device).expand(batch, num_queries)
    copy = torch.empty_like(assignment).scatter_(1, order, positions - first)
    return torch.where(assignment >= 0, copy * counts.long()[:, None] + assignment, -1)


class GroupMatcher(torch.nn.Module):
    """Group DETR: G equal groups of queries, each matched one-to-one to all targets.

    Queries ``[g * n, (g + 1) * n)`` form group ``g`` (``n = N / G``); every group is
    matched independently against the same, original targets (Group DETR, Chen et al.,
    ICCV 2023; also H-DETR's group-wise variant), so each target is matched once per
    group. The cost is computed once on the whole ``(B, N, M)`` batch and solved as
    ``B * G`` problems of ``n`` queries in one batched call; indices are into the full
    query set.

    Args:
        num_groups (int): G, >= 1; must divide the number of queries.
        matcher (HungarianMatcher, optional): solves each group (its cost, capacity,
            backend and NaN policy apply). Default ``HungarianMatcher()``.

    Example:
        >>> matcher = GroupMatcher(2)
        >>> outputs = {"pred_logits": torch.zeros(1, 4, 2),
        ...            "pred_boxes": torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
        ...                                         [0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.3, 0.3]]])}
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)
        [(tensor([0, 3]), tensor([0, 0]))]
    """

    def __init__(self, num_groups: int, *, matcher: HungarianMatcher | None = None) -> None:
        super().__init__()
        self.num_groups = _check_k(num_groups, "GroupMatcher", name="num_groups", hint="Group DETR uses 11")
        if matcher is None:
            matcher = HungarianMatcher()
        elif not isinstance(matcher, HungarianMatcher):
            raise TypeError(
                f"GroupMatcher: matcher must be a HungarianMatcher (or OneToManyMatcher), got "
                f"{type(matcher).__name__}; its cost is split by group and solved in one batch"
            )
        self.matcher = matcher

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}"

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Targets) -> Matches:
        """Match every group; see :meth:`HungarianMatcher.forward` for the arguments.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors: all groups' matches of
            the image, sorted by ``pred_idx`` (so group by group); ``tgt_idx`` is local to
            the image and each target appears once per group (``capacity`` times with a
            capacitated inner matcher).
        """
        return assignment_to_pairs(self.match(outputs, targets).cpu())

    @torch.no_grad()
    def match(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Tensor:
        """The batched form: ``Tensor[B, N]`` int64, the target of each query or -1."""
        padded = _as_padded(targets)
        cost = self.matcher._cost_matrix(outputs, padded)
        num_queries = cost.shape[1]
        if num_queries % self.num_groups:
            raise ShapeError(
                f"GroupMatcher: {num_queries} queries cannot be split into num_groups="
                f"{self.num_groups} equal groups; use a number of queries divisible by "
                f"{self.num_groups} or another num_groups"
            )
        return self.matcher._solve(outputs, cost, padded.num_targets_list, groups=self.num_groups)


def topk_assignment(
    quality: Tensor, k: int, *, threshold: float = 0.0, valid: Tensor | None = None
) -> Tensor:
    """Top-k one-to-many assignment by a quality score (DETA / MS-DETR style).

    Each target proposes its ``k`` queries of highest quality (ties: lower query index
    first); a proposal is kept when its quality is ``>= threshold`` and ``> 0`` (a query
    with zero quality, e.g. no overlap, is never assigned). A query kept by several
    targets goes to the one where its quality is highest (ties: lower target index).
    NaN quality is never kept.

    Args:
        quality (Tensor[B, N, M] float): quality of query n for target m, higher is better.
        k (int): queries each target proposes, >= 1 (all N when k >= N).
        threshold (float): the least quality kept, in [0, 1].
        valid (Tensor[B, M] bool, optional): real target columns; others are ignored.

    Returns:
        Tensor[B, N] int64 on the quality's device: the target of each query, or -1.
        Each target takes at most ``k`` queries, possibly none.

    Example:
        >>> quality = torch.tensor([[[0.9, 0.8], [0.5, 0.0], [0.2, 0.6]]])
        >>> topk_assignment(quality, k=2)  # query 0 is in both top-2s; it is best for target 0
        tensor([[0, 0, 1]])
    """
    k = _check_k(k, "topk_assignment")
    threshold = _check_unit("topk_assignment", "threshold", threshold)
    if not isinstance(quality, Tensor) or quality.ndim != 3 or not quality.is_floating_point():
        got = _describe(quality)
        raise ShapeError(f"topk_assignment: quality must be a floating (B, N, M) tensor, got {got}")
    batch, num_queries, num_targets = quality.shape
    if valid is not None and tuple(valid.shape) != (batch, num_targets):
        raise ShapeError(
            f"topk_assignment: valid must be (B, M) = {(batch, num_targets)} to match quality, "
            f"got {tuple(valid.shape)}"
        )
    if num_queries == 0 or num_targets == 0:
        return torch.full((batch, num_queries), -1, dtype=torch.int64, device=quality.device)
    quality = torch.where(torch.isnan(quality), -math.inf, quality)
    kept = min(k, num_queries)
    # The k-th best quality per target; everything above it is in, and ties at it fill
    # the remaining places in query order, so the choice does not depend on topk's order.
    kth = quality.topk(kept, dim=1).values[:, -1:, :]
    above = quality > kth
    at = quality == kth
    room = kept - above.sum(dim=1, keepdim=True)
    chosen = above | (at & (at.cumsum(dim=1) <= room))
    chosen &= (quality >= threshold) & (quality > 0)
    if valid is not None:
        chosen &= valid.to(device=quality.device, dtype=torch.bool)[:, None, :]
    # argmax returns the first maximum: ties go to the lower target index.
    best = torch.where(chosen, quality, -math.inf).argmax(dim=2)
    return torch.where(chosen.any(dim=2), best, -1)


class TopKMatcher(torch.nn.Module):
    """One-to-many assignment of each target's top-k queries by quality.

    The IoU-based top-k assignment of DETA (Ouyang-Zhang et al., "NMS Strikes Back",
    2022) and, with ``quality="iou_class"``, the class-and-IoU matching score of the
    one-to-many branch of MS-DETR (Zhao et al., CVPR 2024) and of task-aligned assigners
    (TOOD, Feng et al., ICCV 2021). No solver is involved: see :func:`topk_assignment`
    for the rule (per target top-k, ``quality >= threshold`` and ``> 0``, conflicts to
    the highest quality, ties to the lower index). The quality of query n for target m:

    * ``"iou"``: ``iou = IoU(pred_boxes[n], boxes[m])`` (cxcywh in, xyxy IoU);
    * ``"iou_class"``: ``p ** alpha * iou ** (1 - alpha)`` with
      ``p = sigmoid(pred_logits[n, labels[m]])`` (sigmoid/focal logits, C = classes);
      ``alpha = 0`` is the IoU alone, ``alpha = 1`` the class probability alone.

    Everything is computed in float32 on the predictions' device.

    Args:
        k (int): queries each target takes at most, >= 1.
        threshold (float): the least quality kept, in [0, 1].
        quality (str): ``"iou"`` or ``"iou_class"``.
        alpha (float): weight of the class probability in ``"iou_class"``, in [0, 1].
        nan_policy (str): ``"raise"`` (default: a NaN prediction raises, naming the query) or
            ``"worst"`` (a query with a NaN prediction is never assigned; warned once).

    Example:
        >>> matcher = TopKMatcher(k=2, threshold=0.3)
        >>> outputs = {"pred_boxes": torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
        ...                                         [0.7, 0.7, 0.3, 0.3], [0.7, 0.7, 0.25, 0.2]]])}
        >>> targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)  # IoUs 1, 0, 0.44, 0.8: the top two
        [(tensor([0, 3]), tensor([0, 0]))]
    """

    def __init__(
        self,
        k: int = 4,
        *,
        threshold: float = 0.0,
        quality: Literal["iou", "iou_class"] = "iou",
        alpha: float = 0.5,
        nan_policy: NanPolicy = "raise",
    ) -> None:
        super().__init__()
        self.k = _check_k(k, "TopKMatcher")
        self.threshold = _check_unit("TopKMatcher", "threshold", threshold)
        if quality not in ("iou", "iou_class"):
            raise ConfigurationError(f"TopKMatcher: quality must be 'iou' or 'iou_class', got {quality!r}")
        self.quality = quality
        self.alpha = _check_unit("TopKMatcher", "alpha", alpha)
        self.nan_policy = check_nan_policy(nan_policy)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, threshold={self.threshold}, quality={self.quality!r}, "
            f"alpha={self.alpha}, nan_policy={self.nan_policy!r}"
        )

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Targets) -> Matches:
        """Assign queries; see :meth:`HungarianMatcher.forward` for the arguments.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors sorted by ``pred_idx``;
            ``tgt_idx`` is local to the image, each target appears at most ``k`` times.
        """
        return assignment_to_pairs(self.match(outputs, targets).cpu())

    @torch.no_grad()
    def match(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Tensor:
        """The batched form: ``Tensor[B, N]`` int64, the target of each query or -1."""
        padded = _as_padded(targets)
        quality = self.quality_matrix(outputs, padded)
        # Scan the predictions, not the quality: IoU maps NaN boxes to 0, which would hide them.
        keys = ("pred_boxes", "pred_logits") if self.quality == "iou_class" else ("pred_boxes",)
        nan = torch.stack([torch.isnan(outputs[key]).any(dim=-1) for key in keys]).any(dim=0)
        if bool(nan.any()):  # one sync; forward copies the result to the host anyway
            if self.nan_policy == "raise":
                error = InvalidCostError("TopKMatcher: a prediction holds NaN")
                _explain_nan(outputs, torch.where(nan, math.nan, 0.0)[..., None], [1] * nan.shape[0], error)
                raise error
            warn_once(
                "topk_nan_worst",
                "TopKMatcher: predictions hold NaN; those queries are never assigned "
                "(nan_policy='worst')",
            )
            quality = torch.where(nan[..., None], math.nan, quality)
        return topk_assignment(quality, self.k, threshold=self.threshold, valid=padded.valid)

    def quality_matrix(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Tensor:
        """The quality of every query for every target, ``Tensor[B, N, M_max]`` float32.

        Padded target columns hold arbitrary values; mask them with ``targets.valid``.
        """
        padded = _as_padded(targets)
        logits = _check_outputs(outputs, padded)
        if "pred_boxes" not in outputs:
            raise InvalidPredictionError(
                f"TopKMatcher reads outputs['pred_boxes'], which is missing; keys present: {list(outputs)}"
            )
        pred = box_cxcywh_to_xyxy(outputs["pred_boxes"].float())
        target = box_cxcywh_to_xyxy(padded.boxes.to(pred.device).float())
        iou = pairwise_iou(pred, target)
        if self.quality == "iou":
            return iou
        if logits is None:
            raise InvalidPredictionError(
                "TopKMatcher(quality='iou_class') reads outputs['pred_logits'], which is missing; "
                f"keys present: {list(outputs)}. Use quality='iou' for boxes alone"
            )
        _check_labels(logits, padded, "focal")
        labels = padded.labels.to(logits.device).clamp(0, logits.shape[-1] - 1)
        index = labels[:, None, :].expand(-1, logits.shape[1], -1)
        prob = logits.float().sigmoid().gather(2, index)
        return prob.pow(self.alpha) * iou.pow(1.0 - self.alpha)


def _as_padded(targets: Targets | PaddedTargets) -> PaddedTargets:
    return targets if isinstance(targets, PaddedTargets) else _pad(targets)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def _is_integer(tensor: Tensor) -> bool:
    return not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)


def _check_k(value: object, owner: str, *, name: str = "k", hint: str = "") -> int:
    return check_int(value, name, minimum=1, where=owner, hint=hint)


def _check_unit(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"{owner}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_outputs(outputs: Mapping[str, Tensor], padded: PaddedTargets) -> Tensor | None:
    """Check the shapes of ``pred_logits`` / ``pred_boxes``; return the logits (or None)."""
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


def _check_labels(logits: Tensor, padded: PaddedTargets, class_cost: str) -> None:
    """Raise if a real label is outside the classes ``logits (B, N, C)`` can score."""
    num_logits = logits.shape[-1]
    num_classes = num_logits if class_cost == "focal" else num_logits - 1
    labels = padded.labels
    bad = padded.valid & ((labels < 0) | (labels >= num_classes))
    if not bool(bad.any()):  # one sync; the solve copies the cost to the host anyway
        return
    image, index = (int(v) for v in torch.nonzero(bad)[0])
    layout = (
        f"{num_logits} focal logits = {num_classes} classes"
        if class_cost == "focal"
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


def _explain_nan(
    outputs: Mapping[str, Tensor], cost: Tensor, num_targets: list[int], error: InvalidCostError
) -> None:
    """Re-raise a NaN cost as an error naming the prediction that caused it, if one did."""
    real = torch.arange(cost.shape[2], device=cost.device) < torch.tensor(num_targets, device=cost.device)[:, None]
    nan = torch.isnan(cost) & real[:, None, :]  # padding columns are never read by the solver
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
