"""Losses of the keypoint DETR: a DETR-convention set criterion and the hybrid wrappers.

:class:`PoseCriterion` extends :class:`examples.common.criterion.SetCriterion` (DETR's loop
over layers, focal class loss, L1 + GIoU box losses) with two keypoint losses per decoder
layer on the matched pairs:

* ``loss_keypoints``: per matched pair the mean L1 distance (x plus y, normalised
  coordinates) over the target's labelled keypoints (``v > 0``), summed, / ``num_boxes``;
* ``loss_oks``: per matched pair ``1 - OKS`` (COCO's object keypoint similarity with the
  layout's sigmas and the target's normalised ``area``), summed, / ``num_boxes``.

Its matcher is ``Matcher(w_c FocalClassCost + w_k KeypointL1Cost + w_o OKSCost(sigmas),
Hungarian())`` (:func:`pose_matcher`): the targets' ``keypoints`` and ``area`` reach the
costs through the matcher, which pads exactly the keys the costs declare. The two-stage
encoder proposals have no keypoints; they are matched on class and boxes
(``enc_matcher``) and trained with class and box losses, as in the detector.

:func:`build_criterion` wraps it with :class:`hybridmatch.HybridCriterion` and one of the
schemes (``branch``, ``epoch``, ``layer``; ``one2one`` is the bare criterion) with
:mod:`examples.common.criterion`; the K copies of a target carry its keypoints and area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import hybridmatch
from examples.common.criterion import SetCriterion, flat_indices, hybrid_criterion, layer_weight_dict, scheme_for

__all__ = ["PER_OBJECT_KEYS", "WEIGHTS", "PoseCriterion", "build_criterion", "pair_oks", "pose_matcher"]

#: The per-object target keys the hybrid schemes repeat K times.
PER_OBJECT_KEYS = ("labels", "boxes", "keypoints", "area")

#: Loss weights of a decoder layer. The box weights are lower than the detector's, since the
#: boxes only seed the keypoints' references here; the encoder's are ``loss_ce``, ``loss_bbox``
#: and ``loss_giou`` of these.
WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 1.0, "loss_giou": 1.0, "loss_keypoints": 10.0, "loss_oks": 4.0}


def pose_matcher(sigmas: Sequence[float], *, cost_class: float = 2.0, cost_keypoints: float = 5.0,
                 cost_oks: float = 2.0, capacity: int = 1) -> hybridmatch.Matcher:
    """``Matcher(cost_class * FocalClassCost() + cost_keypoints * KeypointL1Cost() + cost_oks *
    OKSCost(sigmas), Hungarian(capacity))``."""
    cost = (cost_class * hybridmatch.FocalClassCost() + cost_keypoints * hybridmatch.KeypointL1Cost()
            + cost_oks * hybridmatch.OKSCost(sigmas=list(sigmas)))
    return hybridmatch.Matcher(cost, hybridmatch.Hungarian(capacity))


def pair_oks(pred: Tensor, target: Tensor, area: Tensor, sigmas: Tensor) -> Tensor:
    """COCO's object keypoint similarity of P matched pairs.

    Args:
        pred (Tensor[P, J, 2]): predicted keypoints.
        target (Tensor[P, J, 3]): target keypoints with visibility (``v > 0``: labelled).
        area (Tensor[P]): the targets' areas, in the keypoints' units squared.
        sigmas (Tensor[J]): the OKS constants.

    Returns:
        Tensor[P]: the mean over labelled joints of ``exp(-d^2 / (2 (area + eps) (2 sigma)^2))``,
        as COCO computes it; 0 for a target without labelled joints.
    """
    variances = (2.0 * sigmas) ** 2
    squared = (pred - target[..., :2]).square().sum(-1)  # (P, J)
    labelled = target[..., 2] > 0
    similarity = torch.exp(-squared / (variances * (area[:, None] + 2.220446049250313e-16) * 2.0))
    similarity = torch.where(labelled, similarity, 0.0).sum(-1)
    return similarity / labelled.sum(-1).clamp(min=1)


class PoseCriterion(SetCriterion):
    """The one-to-one set criterion of the keypoint DETR (see the module docstring).

    Args:
        num_classes (int): C (1 for people).
        matcher: the pose matcher (:func:`pose_matcher`); :class:`hybridmatch.HybridCriterion`
            uses it on the K copies of the targets.
        sigmas (sequence of J floats): the OKS constants (the data set's layout).
        enc_matcher: matcher of the two-stage proposals (class and box costs); default
            :class:`hybridmatch.HungarianMatcher` ``(2, 5, 2)``.
        weight_dict, focal_alpha, focal_gamma: as :class:`~examples.common.criterion.SetCriterion`.

    Returns (``forward``): unweighted scalar losses ``loss_ce``, ``loss_bbox``, ``loss_giou``,
    ``loss_keypoints``, ``loss_oks`` (and ``_{i}`` / ``_enc`` copies; the encoder's without
    keypoint losses).
    """

    output_keys = ("pred_logits", "pred_boxes", "pred_keypoints")

    def __init__(self, num_classes: int, matcher: Any, sigmas: Sequence[float], *, enc_matcher: Any = None,
                 weight_dict: Mapping[str, float] | None = None, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0) -> None:
        super().__init__(num_classes, matcher, weight_dict, focal_alpha, focal_gamma,
                         encoder_matcher=enc_matcher if enc_matcher is not None
                         else hybridmatch.HungarianMatcher(2.0, 5.0, 2.0))
        self.register_buffer("sigmas", torch.as_tensor(list(sigmas), dtype=torch.float32), persistent=False)

    def loss_keypoints(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                       indices: list[tuple[Tensor, Tensor]], num_boxes: float) -> dict[str, Tensor]:
        """``loss_keypoints`` (masked mean L1 per pair) and ``loss_oks`` (1 - OKS per pair), / ``num_boxes``."""
        pred = outputs["pred_keypoints"]
        batch_idx, query_idx = flat_indices(indices, pred.device)
        matched = pred[batch_idx, query_idx].float()  # (P, J, 2)
        joints = pred.shape[-2]
        if batch_idx.numel():
            wanted = torch.cat([t["keypoints"][j] for t, (_, j) in zip(targets, indices)]).to(pred.device).float()
            area = torch.cat([t["area"][j] for t, (_, j) in zip(targets, indices)]).to(pred.device).float()
        else:
            wanted = matched.detach().new_zeros((0, joints, 3))
            area = matched.detach().new_zeros((0,))
        labelled = wanted[..., 2] > 0
        l1 = torch.where(labelled, (matched - wanted[..., :2]).abs().sum(-1), 0.0).sum(-1)
        l1 = l1 / labelled.sum(-1).clamp(min=1)
        oks = pair_oks(matched, wanted, area, self.sigmas.to(pred.device))
        return {"loss_keypoints": l1.sum() / num_boxes, "loss_oks": (1.0 - oks).sum() / num_boxes}

    def layer_losses(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                     num_boxes: float) -> dict[str, Tensor]:
        """The losses of one decoder layer: class, boxes and keypoints of the matched pairs."""
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        losses.update(self.loss_keypoints(outputs, targets, indices, num_boxes))
        return losses


def build_criterion(scheme: str, cfg: Any, sigmas: Sequence[float],
                    **settings: Any) -> tuple[nn.Module, Any, dict[str, float]]:
    """The criterion, the scheme object (None for ``one2one``) and the loss weights of a run.

    Args:
        scheme: ``one2one``, ``branch``, ``epoch`` or ``layer``.
        cfg: the :class:`~examples.detection.config.ModelConfig` (``num_classes``, ``dec_layers``,
            ``two_stage``, the query counts).
        sigmas: the OKS constants of the data's keypoint layout.
        settings: the scheme's (``k``, ``lambda_one2many``, ``epochs``, ``one2many_fraction``,
            ``num_one2many_layers``; :func:`examples.common.criterion.build_scheme`).

    Returns:
        ``(criterion, scheme_object, weight_dict)``.
    """
    encoder = {key: WEIGHTS[key] for key in ("loss_ce", "loss_bbox", "loss_giou")} if cfg.two_stage else None
    weights = layer_weight_dict(WEIGHTS, cfg.dec_layers, encoder=encoder)
    base = PoseCriterion(cfg.num_classes, pose_matcher(sigmas), sigmas, weight_dict=weights)
    return hybrid_criterion(base, scheme_for(scheme, cfg, **settings), weights, per_object_keys=PER_OBJECT_KEYS)
