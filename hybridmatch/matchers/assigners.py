"""Assigners: ``(cost Tensor[B, N, M], num_targets) -> Tensor[B, N]``, the target of each query or -1.

An assigner is the second half of a :class:`~hybridmatch.matchers.Matcher`: small, pure and
task-agnostic. It sees only the cost matrix and how many of its columns are real per image.

* :class:`Hungarian`: minimum-cost assignment; ``capacity=K`` lets a target take K queries
  (H-DETR's one-to-many branch, without materialising K copies of the ground truth).
* :class:`Groups`: Group DETR, G equal query groups each matched on their own.
* :class:`TopK`: each target's top-k queries by a *quality* (higher is better; DETA, MS-DETR).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._warnings import warn_once
from ..errors import InvalidCostError, ShapeError
from ..solvers import BACKEND_NAMES, CAPACITY_HINT, batched_linear_sum_assignment
from ..validation import NanPolicy, check_choice, check_int, check_nan_policy, check_probability

__all__ = ["Assigner", "Hungarian", "Groups", "TopK", "topk_assignment"]


class Assigner(abc.ABC):
    """Turns a cost (or quality) matrix into "target of each query".

    Subclasses implement ``__call__(cost, num_targets)`` and :attr:`max_per_target`.

    Example:
        >>> from hybridmatch.matchers import Assigner
        >>> class Nearest(Assigner):            # each query takes its cheapest target (many-to-one)
        ...     def __call__(self, cost, num_targets):
        ...         return cost.argmin(-1)
        ...     @property
        ...     def max_per_target(self):
        ...         return cost.shape[1]
        >>> cost = torch.tensor([[[0.1, 0.9], [0.2, 0.3], [0.8, 0.1]]])
        >>> Nearest()(cost, [2])
        tensor([[0, 0, 1]])
    """

    @abc.abstractmethod
    def __call__(self, cost: Tensor, num_targets: Sequence[int]) -> Tensor:
        """Assign queries to targets.

        Args:
            cost (Tensor[B, N, M] float): the matrix; only the first ``num_targets[b]``
                columns of image ``b`` are real.
            num_targets (Sequence[int]): ``M_b`` per image (host ints).

        Returns:
            Tensor[B, N] int64 on the cost's device: the target of each query, or -1.
        """

    @property
    @abc.abstractmethod
    def max_per_target(self) -> int:
        """The most queries one target can take (the copies ``match_repeated`` indexes)."""


class Hungarian(Assigner):
    """Minimum-cost assignment, each target taking up to ``capacity`` queries.

    ``capacity=1`` is DETR's one-to-one Hungarian matching; ``capacity=K`` is H-DETR's
    one-to-many matching against the ground truth repeated K times, solved without the
    copies (same optimum). See :func:`~hybridmatch.solvers.batched_linear_sum_assignment`.

    Args:
        capacity (int): queries per target, >= 1 (capped at N, with a warning).
        backend (str): solver backend: ``"auto"``, ``"native"``, ``"cuda"``, ``"scipy"``, ``"lap"``.
        nan_policy (str): ``"raise"`` (a NaN cost raises) or ``"worst"`` (NaN is the worst
            cost; warned once).

    Example:
        >>> Hungarian()(torch.tensor([[[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]]]), [2])
        tensor([[ 0,  1, -1]])
    """

    def __init__(self, capacity: int = 1, *, backend: str = "auto", nan_policy: NanPolicy = "raise") -> None:
        self.capacity = check_int(capacity, "capacity", minimum=1, where="Hungarian", hint=CAPACITY_HINT)
        self.backend: str = check_choice(backend, "backend", BACKEND_NAMES)  # type: ignore[assignment]
        self.nan_policy = check_nan_policy(nan_policy)

    @property
    def max_per_target(self) -> int:
        return self.capacity

    def __call__(self, cost: Tensor, num_targets: Sequence[int]) -> Tensor:
        num_queries = cost.shape[-2] if isinstance(cost, Tensor) and cost.ndim >= 2 else None
        if num_queries is not None and 0 < num_queries < self.capacity:
            warn_once(
                "hungarian_capacity_capped",
                f"Hungarian: capacity={self.capacity} is more than the {num_queries} queries of a "
                f"problem, so it is capped at {num_queries}: a target can take at most every query "
                "(said once)",
            )
        return batched_linear_sum_assignment(
            cost, list(num_targets), capacity=self.capacity, backend=self.backend, nan_policy=self.nan_policy
        )

    def __repr__(self) -> str:
        return f"Hungarian(capacity={self.capacity}, backend={self.backend!r}, nan_policy={self.nan_policy!r})"


class Groups(Assigner):
    """Group DETR: queries ``[g * n, (g + 1) * n)`` form group ``g``, each matched on its own.

    The N queries split into ``num_groups`` equal groups of ``n = N / G``; each group is
    matched against all targets of the image (Group DETR, Chen et al., ICCV 2023; H-DETR's
    group-wise variant), so each target is taken ``capacity`` times per group. All ``B * G``
    problems are solved in one batched call.

    Args:
        num_groups (int): G, >= 1; must divide N.
        capacity, backend, nan_policy: as in :class:`Hungarian`.

    Example:
        >>> cost = torch.tensor([[[0.1], [0.9], [0.8], [0.2]]])
        >>> Groups(2)(cost, [1])  # one match in each half
        tensor([[ 0, -1, -1,  0]])
    """

    def __init__(
        self, num_groups: int, capacity: int = 1, *, backend: str = "auto", nan_policy: NanPolicy = "raise"
    ) -> None:
        self.num_groups = check_int(num_groups, "num_groups", minimum=1, where="Groups", hint="Group DETR uses 11")
        self.per_group = Hungarian(capacity, backend=backend, nan_policy=nan_policy)

    @property
    def capacity(self) -> int:
        return self.per_group.capacity

    @property
    def backend(self) -> str:
        return self.per_group.backend

    @property
    def nan_policy(self) -> NanPolicy:
        return self.per_group.nan_policy

    @property
    def max_per_target(self) -> int:
        return self.num_groups * self.capacity

    def __call__(self, cost: Tensor, num_targets: Sequence[int]) -> Tensor:
        batch, num_queries, max_targets = cost.shape
        if num_queries % self.num_groups:
            raise ShapeError(
                f"Groups: {num_queries} queries cannot be split into num_groups={self.num_groups} "
                f"equal groups; use a number of queries divisible by {self.num_groups} or another "
                "num_groups"
            )
        per_group = cost.reshape(batch * self.num_groups, num_queries // self.num_groups, max_targets)
        counts = [m for m in num_targets for _ in range(self.num_groups)]
        return self.per_group(per_group, counts).reshape(batch, num_queries)

    def __repr__(self) -> str:
        return (
            f"Groups(num_groups={self.num_groups}, capacity={self.capacity}, backend={self.backend!r}, "
            f"nan_policy={self.nan_policy!r})"
        )


class TopK(Assigner):
    """Each target takes its top-``k`` queries by quality; see :func:`topk_assignment`.

    The matrix it receives is a *quality*, higher is better (an IoU, or
    :class:`~hybridmatch.costs.ClassIoUQuality`), not a cost. No solver is involved.

    Args:
        k (int): queries each target takes at most, >= 1.
        threshold (float): the least quality kept, in [0, 1].
        nan_policy (str): ``"raise"`` (a NaN quality at a real target raises) or ``"worst"``
            (NaN is never kept; warned once).

    Example:
        >>> TopK(k=2)(torch.tensor([[[0.9, 0.8], [0.5, 0.0], [0.2, 0.6]]]), [2])
        tensor([[0, 0, 1]])
    """

    def __init__(self, k: int = 4, threshold: float = 0.0, *, nan_policy: NanPolicy = "raise") -> None:
        self.k = check_int(k, "k", minimum=1, where="TopK")
        self.threshold = check_probability(threshold, "threshold", where="TopK")
        self.nan_policy = check_nan_policy(nan_policy)

    @property
    def max_per_target(self) -> int:
        return self.k

    def __call__(self, cost: Tensor, num_targets: Sequence[int]) -> Tensor:
        batch, _, max_targets = cost.shape
        counts = torch.as_tensor(list(num_targets), dtype=torch.int64, device=cost.device)
        valid = torch.arange(max_targets, device=cost.device)[None, :] < counts[:, None]
        nan = torch.isnan(cost) & valid[:, None, :]
        if bool(nan.any()):  # one sync; forward copies the result to the host anyway
            image, query, target = (int(v) for v in torch.nonzero(nan)[0])
            if self.nan_policy == "raise":
                raise InvalidCostError(
                    f"quality[{image}, {query}, {target}] is NaN (image {image}, query {query}, target "
                    f"{target}); pass nan_policy='worst' to leave NaN pairs unassigned"
                )
            warn_once(
                "topk_nan_worst",
                "TopK: the quality holds NaN; those pairs are never assigned (nan_policy='worst')",
            )
        return topk_assignment(cost, self.k, threshold=self.threshold, valid=valid)

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, threshold={self.threshold}, nan_policy={self.nan_policy!r})"


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
    k = check_int(k, "k", minimum=1, where="topk_assignment")
    threshold = check_probability(threshold, "threshold", where="topk_assignment")
    if not isinstance(quality, Tensor) or quality.ndim != 3 or not quality.is_floating_point():
        got = f"{tuple(quality.shape)} {quality.dtype}" if isinstance(quality, Tensor) else type(quality).__name__
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
