"""Losses of (H-)Deformable-DETR: the set criterion and its hybrid wrappers.

The criterion is Deformable-DETR's one-to-one set criterion (Zhu et al., ICLR 2021):
a sigmoid focal classification loss and L1 + GIoU box losses on the matched pairs, for
the final decoder layer, every earlier layer (``aux_outputs``, keys suffixed ``_{i}``)
and the two-stage encoder proposals (``enc_outputs``, keys suffixed ``_enc``). That is
exactly :class:`examples.common.criterion.SetCriterion` (which the pose and segmentation
examples extend with their own per-layer losses), so detection adds nothing to it. It
returns *unweighted* losses; :data:`WEIGHTS` are the official weights.

:func:`build_criterion` wraps it with :class:`hybridmatch.HybridCriterion` and one of
H-DETR's schemes (Jia et al., CVPR 2023): ``branch``, ``epoch`` or ``layer``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import hybridmatch
from examples.common.criterion import (
    SCHEMES,
    SetCriterion,
    hybrid_criterion,
    hybrid_weights,
    layer_weight_dict,
    scheme_for,
    sigmoid_focal_loss,
    total_loss,
)

__all__ = ["SCHEMES", "WEIGHTS", "SetCriterion", "build_criterion", "sigmoid_focal_loss", "total_loss"]

#: Deformable-DETR / H-DETR's loss weights, the same for every layer and the encoder.
WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def build_criterion(scheme: str, cfg: Any, *, one2many_matcher: bool = False,
                    **settings: Any) -> tuple[nn.Module, Any, dict[str, float]]:
    """The criterion, the scheme object (None for ``one2one``) and the loss weights of a run.

    Args:
        scheme (str): ``one2one`` (Deformable-DETR), ``branch``, ``epoch`` or ``layer``.
        cfg: a :class:`~examples.detection.config.ModelConfig` (reads ``num_classes``,
            ``dec_layers``, ``two_stage``, ``num_queries_one2one``, ``num_queries_one2many``).
        one2many_matcher (bool): match the one-to-many groups with
            :class:`hybridmatch.OneToManyMatcher` (capacity K, no K copies matched) instead of the
            Hungarian matcher on repeated targets; the losses are the same.
        settings: the scheme's ``k`` (default 6 for branch, 10 for epoch / layer),
            ``lambda_one2many``, ``epochs``, ``one2many_fraction``, ``num_one2many_layers``
            (:func:`examples.common.criterion.build_scheme` says what each does and needs).

    Returns:
        ``(criterion, scheme_object, weight_dict)``; ``criterion(outputs, targets)`` returns the
        dict of unweighted losses (one-to-many ones already times lambda).
    """
    scheme_object = scheme_for(scheme, cfg, **settings)
    weights = layer_weight_dict(WEIGHTS, cfg.dec_layers, encoder=WEIGHTS if cfg.two_stage else None)
    base = SetCriterion(cfg.num_classes, hybridmatch.HungarianMatcher(2.0, 5.0, 2.0),
                        hybrid_weights(weights, scheme_object))
    options: dict[str, Any] = {}
    if one2many_matcher and scheme_object is not None:
        options["one2many_matcher"] = hybridmatch.OneToManyMatcher(scheme_object.k)
    return hybrid_criterion(base, scheme_object, weights, **options)
