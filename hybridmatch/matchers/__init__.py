"""Matchers: ``(outputs, targets) -> indices``, a cost and an assigner.

A matcher is ``Matcher(cost, assigner)``: the cost
(:class:`~hybridmatch.costs.Cost`) maps the outputs and the padded targets to
``Tensor[B, N, M]``; the assigner maps that to ``Tensor[B, N]``, the target of each query
or -1. It returns DETR's list of ``(pred_idx, tgt_idx)`` pairs. Assigners:

* :class:`Hungarian`: one-to-one, or each target taking up to ``capacity`` queries;
* :class:`Groups`: Group DETR, G query groups each matched on their own;
* :class:`TopK`: each target's top-k queries by a quality (DETA, MS-DETR).

The familiar names are constructors of such matchers: :class:`HungarianMatcher` (DETR's
matcher, a drop-in), :class:`OneToManyMatcher` (H-DETR's one-to-many branch),
:class:`GroupMatcher` and :class:`TopKMatcher`.
"""

from __future__ import annotations

from .assigners import Assigner, Groups, Hungarian, TopK, topk_assignment
from .matcher import Matcher, Matches, assignment_to_repeated
from .presets import GroupMatcher, HungarianMatcher, OneToManyMatcher, TopKMatcher, detr_cost

__all__ = [
    "Matcher",
    "Matches",
    "Assigner",
    "Hungarian",
    "Groups",
    "TopK",
    "detr_cost",
    "HungarianMatcher",
    "OneToManyMatcher",
    "GroupMatcher",
    "TopKMatcher",
    "assignment_to_repeated",
    "topk_assignment",
]
