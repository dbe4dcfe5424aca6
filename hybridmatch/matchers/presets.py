"""The familiar matchers, as constructors of :class:`~hybridmatch.matchers.Matcher`.

Each is a :class:`Matcher` with a preset cost and assigner; none adds behaviour:

* :class:`HungarianMatcher`: DETR's matcher (one-to-one, or capacity K).
* :class:`OneToManyMatcher`: H-DETR's one-to-many branch, ``HungarianMatcher(capacity=k)``.
* :class:`GroupMatcher`: Group DETR, G query groups each matched one-to-one.
* :class:`TopKMatcher`: DETA / MS-DETR style top-k by IoU (or an IoU-and-class quality).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor

from .._warnings import warn_once
from ..costs import ClassIoUQuality, Cost, CostSum, FocalClassCost, GIoUCost, IoUQuality, L1BoxCost, SoftmaxClassCost
from ..errors import ConfigurationError
from ..validation import NanPolicy, check_choice, check_probability, check_real, context
from .assigners import Groups, Hungarian, TopK
from .matcher import Matcher

__all__ = ["detr_cost", "HungarianMatcher", "OneToManyMatcher", "GroupMatcher", "TopKMatcher"]


def detr_cost(
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    *,
    class_cost: Literal["focal", "softmax"] | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> CostSum:
    """The DETR family's matching cost: ``cost_class * class + cost_bbox * L1 + cost_giou * (-GIoU)``.

    The defaults are Deformable-DETR's and H-DETR's (focal, 2 / 5 / 2); DETR's is
    ``detr_cost(1, 5, 2, class_cost="softmax")``.

    Which class cost a model needs follows from its classification loss (softmax
    cross-entropy with a no-object class: ``"softmax"``; sigmoid focal: ``"focal"``), not
    from the weights, and the wrong one matches differently without failing. So when
    ``class_cost`` is left out and ``cost_class`` is neither Deformable-DETR's 2 nor 0
    (DETR's settings are 1 / 5 / 2), the focal default is used with a warning (once) that says to
    pass ``class_cost``.

    Args:
        cost_class, cost_bbox, cost_giou (float): the weights, finite, not all 0.
        class_cost (str): ``"focal"`` (sigmoid logits, C = classes) or ``"softmax"``
            (C = classes + 1, no-object last); None (default): ``"focal"``, as above.
        focal_alpha, focal_gamma (float): the focal cost's settings.

    Returns:
        CostSum of :class:`~hybridmatch.costs.FocalClassCost` (or
        :class:`~hybridmatch.costs.SoftmaxClassCost`), :class:`~hybridmatch.costs.L1BoxCost`
        and :class:`~hybridmatch.costs.GIoUCost`.

    Example:
        >>> from hybridmatch.matchers import detr_cost
        >>> cost = detr_cost(1, 5, 2, class_cost="softmax")             # DETR's
        >>> [(weight, type(term).__name__) for weight, term in cost.terms]
        [(1.0, 'SoftmaxClassCost'), (5.0, 'L1BoxCost'), (2.0, 'GIoUCost')]
    """
    if class_cost is not None:
        check_choice(class_cost, "class_cost", ("focal", "softmax"))
    weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
    for name, weight in weights.items():
        check_real(weight, name)
    if class_cost is None:
        class_cost = "focal"
        if cost_class not in (0.0, 2.0):  # 0: no class term to get wrong
            warn_once(
                f"matchers.implicit_focal:{float(cost_class)}",
                f"the matching cost was built with cost_class={cost_class!r} but no class_cost, so it uses "
                f"the sigmoid focal class cost (Deformable-DETR's and H-DETR's, whose cost_class is 2). "
                f"DETR's matcher (weights 1/5/2) uses the softmax probability and matches differently: pass class_cost='softmax' for a softmax "
                f"criterion with a no-object class (or HungarianMatcher.detr()), class_cost='focal' to "
                f"keep focal",
            )
    if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
        raise ConfigurationError("all cost weights are 0: every assignment would cost the same")
    classes: Cost = FocalClassCost(focal_alpha, focal_gamma) if class_cost == "focal" else SoftmaxClassCost()
    return CostSum([(cost_class, classes), (cost_bbox, L1BoxCost()), (cost_giou, GIoUCost())])


class HungarianMatcher(Matcher):
    """DETR's matcher: ``Matcher(detr_cost(...), Hungarian(capacity))``.

    One-to-one (or capacity-K) minimum-cost matching of queries to ground truth. The
    default cost is Deformable-DETR's and H-DETR's: ``2 * focal class cost + 5 * L1 + 2 *
    (-GIoU)``. Unlike DETR's matcher it builds the cost per image on a padded ``(B, N,
    M_max)`` batch rather than one ``(B*N, sum M)`` matrix, validates its inputs and names
    the culprit when they are wrong.

    Args:
        cost_class (float): weight of the class cost. Default 2.
        cost_bbox (float): weight of the L1 box cost. Default 5.
        cost_giou (float): weight of the GIoU cost. Default 2.
        class_cost (str): ``"focal"`` (sigmoid logits, C = classes) or ``"softmax"``
            (DETR: C = classes + 1, no-object last). Left out, ``"focal"``, with a warning
            when ``cost_class`` is not 2 (see :func:`detr_cost`); :meth:`detr` and
            :meth:`deformable_detr` build the two conventions by name.
        focal_alpha, focal_gamma (float): focal cost settings (0.25, 2).
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

    assigner: Hungarian

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        *,
        class_cost: Literal["focal", "softmax"] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cost: Cost | None = None,
        capacity: int = 1,
        backend: str = "auto",
        nan_policy: NanPolicy = "raise",
    ) -> None:
        if cost is None:
            cost = detr_cost(
                cost_class, cost_bbox, cost_giou, class_cost=class_cost, focal_alpha=focal_alpha, focal_gamma=focal_gamma
            )
        elif not isinstance(cost, Cost):
            raise TypeError(f"cost must be a hybridmatch.costs.Cost, got {type(cost).__name__}")
        super().__init__(cost, Hungarian(capacity, backend=backend, nan_policy=nan_policy))

    @classmethod
    def detr(cls, **settings: Any) -> HungarianMatcher:
        """DETR's matcher: softmax class cost, weights 1 / 5 / 2 (``cost_class``, ``cost_bbox``, ``cost_giou``).

        For a criterion with softmax cross-entropy and a no-object class (``C = classes + 1``,
        DETR's ``eos_coef``). ``settings`` go to the constructor (``capacity``, ``backend``,
        a weight to override, ...; ``k`` for :class:`OneToManyMatcher`).

        Example:
            >>> from hybridmatch.costs import SoftmaxClassCost
            >>> matcher = HungarianMatcher.detr()
            >>> [(weight, type(term).__name__) for weight, term in matcher.cost.terms]
            [(1.0, 'SoftmaxClassCost'), (5.0, 'L1BoxCost'), (2.0, 'GIoUCost')]
        """
        return cls(**{"cost_class": 1.0, "cost_bbox": 5.0, "cost_giou": 2.0, "class_cost": "softmax", **settings})

    @classmethod
    def deformable_detr(cls, **settings: Any) -> HungarianMatcher:
        """Deformable-DETR's (and H-DETR's) matcher: focal class cost, weights 2 / 5 / 2.

        For a criterion with sigmoid focal classification (``C = classes``, Deformable-DETR's
        ``focal_alpha``). ``settings`` as in :meth:`detr`.

        Example:
            >>> matcher = OneToManyMatcher.deformable_detr(k=6)
            >>> matcher.k, [(weight, type(term).__name__) for weight, term in matcher.cost.terms]
            (6, [(2.0, 'FocalClassCost'), (5.0, 'L1BoxCost'), (2.0, 'GIoUCost')])
        """
        return cls(**{"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "class_cost": "focal", **settings})

    @property
    def capacity(self) -> int:
        """Queries one target may take (the assigner's capacity)."""
        return self.assigner.capacity

    @property
    def backend(self) -> str:
        """The solver backend."""
        return self.assigner.backend

    @property
    def nan_policy(self) -> NanPolicy:
        """What a NaN cost does, ``"raise"`` or ``"worst"``."""
        return self.assigner.nan_policy


class OneToManyMatcher(HungarianMatcher):
    """H-DETR's one-to-many matching: ``HungarianMatcher(capacity=k)``.

    The minimum-cost assignment in which every query takes at most one target and
    every target at most ``k`` queries; its total equals that of one-to-one matching
    against the ground truth repeated ``k`` times (:func:`~hybridmatch.targets.repeat_targets`),
    which is how H-DETR ("DETRs with Hybrid Matching", Jia et al., CVPR 2023) supervises
    its one-to-many branch, but the K copies are never built. ``min(N, k * M)`` queries
    are matched per image.

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

    def __init__(self, k: int = 6, **settings: Any) -> None:
        if "capacity" in settings:
            raise ConfigurationError("OneToManyMatcher takes k (the queries per target), not capacity")
        with context(f"OneToManyMatcher(k={k!r})", inner=["Hungarian"]):
            super().__init__(capacity=k, **settings)

    @property
    def k(self) -> int:
        """Queries per target, ``K`` (the solver's capacity)."""
        return self.capacity


class GroupMatcher(Matcher):
    """Group DETR: ``Matcher(cost, Groups(num_groups))``, G query groups each matched on its own.

    Queries ``[g * n, (g + 1) * n)`` form group ``g`` (``n = N / G``); every group is
    matched independently against the same, original targets (Group DETR, Chen et al.,
    ICCV 2023; also H-DETR's group-wise variant), so each target is matched once per
    group. The cost is computed once on the whole ``(B, N, M)`` batch and solved as
    ``B * G`` problems of ``n`` queries in one batched call; indices are into the full
    query set.

    Args:
        num_groups (int): G, >= 1; must divide the number of queries.
        matcher (HungarianMatcher, optional): its cost, capacity, backend and NaN policy
            apply to each group. Default ``HungarianMatcher()``.

    Example:
        >>> matcher = GroupMatcher(2)
        >>> outputs = {"pred_logits": torch.zeros(1, 4, 2),
        ...            "pred_boxes": torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
        ...                                         [0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.3, 0.3]]])}
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)
        [(tensor([0, 3]), tensor([0, 0]))]
    """

    assigner: Groups

    def __init__(self, num_groups: int, *, matcher: HungarianMatcher | None = None) -> None:
        if matcher is None:
            matcher = HungarianMatcher()
        elif not isinstance(matcher, HungarianMatcher):
            raise TypeError(
                f"GroupMatcher: matcher must be a HungarianMatcher (or OneToManyMatcher), got "
                f"{type(matcher).__name__}; its cost is split by group and solved in one batch"
            )
        hungarian = matcher.assigner
        with context("GroupMatcher", inner=["Groups", "Hungarian"]):
            groups = Groups(num_groups, hungarian.capacity, backend=hungarian.backend, nan_policy=hungarian.nan_policy)
        super().__init__(matcher.cost, groups)

    @property
    def num_groups(self) -> int:
        """G, the number of query groups."""
        return self.assigner.num_groups


class TopKMatcher(Matcher):
    """Each target takes its top-k queries by quality: ``Matcher(IoUQuality(), TopK(k, threshold))``.

    The IoU-based top-k assignment of DETA (Ouyang-Zhang et al., "NMS Strikes Back",
    2022) and, with ``quality="iou_class"``, the class-and-IoU matching score of the
    one-to-many branch of MS-DETR (Zhao et al., CVPR 2024) and of task-aligned assigners
    (TOOD, Feng et al., ICCV 2021). No solver is involved: see
    :func:`~hybridmatch.matchers.topk_assignment` for the rule (per target top-k,
    ``quality >= threshold`` and ``> 0``, conflicts to the highest quality, ties to the
    lower index). The quality of query n for target m:

    * ``"iou"``: ``iou = IoU(pred_boxes[n], boxes[m])`` (:class:`~hybridmatch.costs.IoUQuality`);
    * ``"iou_class"``: ``p ** alpha * iou ** (1 - alpha)`` with
      ``p = sigmoid(pred_logits[n, labels[m]])`` (:class:`~hybridmatch.costs.ClassIoUQuality`).

    Everything is computed in float32 on the predictions' device. A non-finite predicted
    or target box raises, naming it (or, with ``nan_policy="worst"``, is never assigned).

    Args:
        k (int): queries each target takes at most, >= 1.
        threshold (float): the least quality kept, in [0, 1].
        quality (str): ``"iou"`` or ``"iou_class"``.
        alpha (float): weight of the class probability in ``"iou_class"``, in [0, 1].
        nan_policy (str): ``"raise"`` (default) or ``"worst"`` (warned once).

    Example:
        >>> matcher = TopKMatcher(k=2, threshold=0.3)
        >>> outputs = {"pred_boxes": torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
        ...                                         [0.7, 0.7, 0.3, 0.3], [0.7, 0.7, 0.25, 0.2]]])}
        >>> targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)  # IoUs 1, 0, 0.44, 0.8: the top two
        [(tensor([0, 3]), tensor([0, 0]))]
    """

    assigner: TopK

    def __init__(
        self,
        k: int = 4,
        *,
        threshold: float = 0.0,
        quality: Literal["iou", "iou_class"] = "iou",
        alpha: float = 0.5,
        nan_policy: NanPolicy = "raise",
    ) -> None:
        with context("TopKMatcher", inner=["TopK", "ClassIoUQuality"]):
            check_choice(quality, "quality", ("iou", "iou_class"))
            assigner = TopK(k, threshold, nan_policy=nan_policy)
            score: Cost = ClassIoUQuality(alpha) if quality == "iou_class" else IoUQuality()
            # alpha is ClassIoUQuality's setting (checked there); with "iou" nothing else reads it.
            checked_alpha = score.alpha if isinstance(score, ClassIoUQuality) else check_probability(alpha, "alpha")
        super().__init__(score, assigner)
        self.quality = quality
        self.alpha = checked_alpha

    @property
    def k(self) -> int:
        return self.assigner.k

    @property
    def threshold(self) -> float:
        return self.assigner.threshold

    @property
    def nan_policy(self) -> NanPolicy:
        return self.assigner.nan_policy

    def quality_matrix(self, outputs: Mapping[str, Tensor], targets: Any) -> Tensor:
        """The quality of every query for every target, ``Tensor[B, N, M_max]`` float32.

        Padded target columns hold arbitrary values; mask them with ``targets.valid``.
        """
        return self.cost_matrix(outputs, targets)
