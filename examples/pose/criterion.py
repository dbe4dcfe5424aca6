"""Losses of the keypoint DETR: a DETR-convention set criterion and the hybrid wrappers.

:class:`PoseCriterion` extends :class:`examples.detection.criterion.SetCriterion` (focal
class loss, optional L1 + GIoU box losses) with two keypoint losses on the matched pairs:

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
schemes (``branch``, ``epoch``, ``layer``; ``one2one`` is the bare criterion), exactly as
the detection example does; the K copies of a target carry its keypoints and area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import hybridmatch
from examples.detection.criterion import DEFAULT_K, SCHEMES, SetCriterion, _flat_indices, total_loss

__all__ = ["PER_OBJECT_KEYS", "PoseCriterion", "build_criterion", "make_weight_dict", "pose_matcher", "total_loss"]

#: The per-object target keys the hybrid schemes repeat K times.
PER_OBJECT_KEYS = ("labels", "boxes", "keypoints", "area")


def pose_matcher(sigmas: Sequence[float], *, cost_class: float = 2.0, cost_keypoints: float = 5.0,
                 cost_oks: float = 2.0, capacity: int = 1) -> hybridmatch.Matcher:
    """``Matcher(cost_class * FocalClassCost() + cost_keypoints * KeypointL1Cost() + cost_oks *
    OKSCost(sigmas), Hungarian(capacity))``."""
    cost = (cost_class * hybridmatch.FocalClassCost() + cost_keypoints * hybridmatch.KeypointL1Cost()
            + cost_oks * hybridmatch.OKSCost(sigmas=list(sigmas)))
    return hybridmatch.Matcher(cost, hybridmatch.Hungarian(capacity))


def _pair_oks(pred: Tensor, target: Tensor, area: Tensor, sigmas: Tensor) -> Tensor:
    """OKS (Tensor[P]) of P predicted (P, J, 2) and target (P, J, 3) poses with areas (P,); 0 if none labelled."""
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
        weight_dict, focal_alpha, focal_gamma: as :class:`~examples.detection.criterion.SetCriterion`.

    Returns (``forward``): unweighted scalar losses ``loss_ce``, ``loss_bbox``, ``loss_giou``,
    ``loss_keypoints``, ``loss_oks`` (and ``_{i}`` / ``_enc`` copies; the encoder's without
    keypoint losses).
    """

    def __init__(self, num_classes: int, matcher: Any, sigmas: Sequence[float], *, enc_matcher: Any = None,
                 weight_dict: Mapping[str, float] | None = None, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0) -> None:
        super().__init__(num_classes, matcher, weight_dict, focal_alpha, focal_gamma)
        self.register_buffer("sigmas", torch.as_tensor(list(sigmas), dtype=torch.float32), persistent=False)
        self.enc_matcher = enc_matcher if enc_matcher is not None else hybridmatch.HungarianMatcher(2.0, 5.0, 2.0)

    def loss_keypoints(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                       indices: list[tuple[Tensor, Tensor]], num_boxes: float) -> dict[str, Tensor]:
        """``loss_keypoints`` (masked mean L1 per pair) and ``loss_oks`` (1 - OKS per pair), / ``num_boxes``."""
        pred = outputs["pred_keypoints"]
        batch_idx, query_idx = _flat_indices(indices, pred.device)
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
        oks = _pair_oks(matched, wanted, area, self.sigmas.to(pred.device))
        return {"loss_keypoints": l1.sum() / num_boxes, "loss_oks": (1.0 - oks).sum() / num_boxes}

    def single(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
               num_boxes: float) -> dict[str, Tensor]:
        """The losses of one output dict: with keypoints (a decoder layer) or without (the encoder)."""
        if "pred_keypoints" not in outputs:  # the two-stage proposals
            indices = self.enc_matcher(outputs, targets)
            losses = {"loss_ce": self.loss_labels(outputs, targets, indices, num_boxes)}
            losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
            return losses
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        losses.update(self.loss_keypoints(outputs, targets, indices, num_boxes))
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """As :meth:`SetCriterion.forward`, the final output's ``pred_keypoints`` included.

        Args:
            outputs: ``pred_logits``, ``pred_boxes``, ``pred_keypoints (Tensor[B, N, J, 2])``,
                ``aux_outputs`` (dicts with the same three) and optionally ``enc_outputs``.
            targets: B dicts with ``labels``, ``boxes``, ``keypoints (Tensor[M, J, 3])`` and
                ``area (Tensor[M])`` (normalised).
        """
        num_boxes = hybridmatch.global_num_boxes(targets)
        final = {key: outputs[key] for key in ("pred_logits", "pred_boxes", "pred_keypoints")}
        losses = self.single(final, targets, num_boxes)
        for i, layer in enumerate(outputs.get("aux_outputs") or []):
            for key, value in self.single(layer, targets, num_boxes).items():
                losses[f"{key}_{i}"] = value
        enc = outputs.get("enc_outputs")
        if enc is not None:
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            for key, value in self.single(enc, agnostic, num_boxes).items():
                losses[f"{key}_enc"] = value
        return losses


def make_weight_dict(num_decoder_layers: int, *, two_stage: bool = True, one2many: bool = False,
                     ce: float = 2.0, bbox: float = 1.0, giou: float = 1.0, keypoints: float = 10.0,
                     oks: float = 4.0) -> dict[str, float]:
    """Loss weights for every key :class:`PoseCriterion` returns (``_{i}``, ``_enc``, ``_one2many`` copies).

    The encoder keys have no keypoint terms; the box weights are lower than the detector's,
    since the boxes only seed the keypoints' references here.
    """
    base = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou, "loss_keypoints": keypoints, "loss_oks": oks}
    weights = dict(base)
    for i in range(num_decoder_layers - 1):
        weights.update({f"{key}_{i}": value for key, value in base.items()})
    if two_stage:
        weights.update({f"{key}_enc": base[key] for key in ("loss_ce", "loss_bbox", "loss_giou")})
    if one2many:
        weights.update({f"{key}_one2many": value for key, value in list(weights.items()) if not key.endswith("_enc")})
    return weights


def build_criterion(scheme: str, cfg: Any, sigmas: Sequence[float], *, k: int | None = None,
                    lambda_one2many: float = 1.0, epochs: int = 12, one2many_fraction: float = 2 / 3,
                    num_one2many_layers: int | None = None) -> tuple[nn.Module, Any, dict[str, float]]:
    """The criterion, the scheme object (None for ``one2one``) and the loss weights of a run.

    Args:
        scheme: ``one2one``, ``branch``, ``epoch`` or ``layer`` (as
            :func:`examples.detection.criterion.build_criterion`).
        cfg: the :class:`~examples.detection.config.ModelConfig` (``num_classes``, ``dec_layers``,
            ``two_stage``, the query counts).
        sigmas: the OKS constants of the data's keypoint layout.
        k, lambda_one2many, epochs, one2many_fraction, num_one2many_layers: the scheme's settings.

    Returns:
        ``(criterion, scheme_object, weight_dict)``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    weight_dict = make_weight_dict(cfg.dec_layers, two_stage=cfg.two_stage, one2many=scheme == "branch")
    base = PoseCriterion(cfg.num_classes, pose_matcher(sigmas), sigmas, weight_dict=weight_dict)
    if scheme == "one2one":
        if cfg.num_queries_one2many:
            raise ValueError(f"scheme 'one2one' trains without one-to-many queries, but cfg.num_queries_one2many="
                             f"{cfg.num_queries_one2many}; set it to 0")
        return base, None, weight_dict
    k = DEFAULT_K[scheme] if k is None else k
    scheme_object: Any
    if scheme == "branch":
        if not cfg.num_queries_one2many:
            raise ValueError("scheme 'branch' needs cfg.num_queries_one2many > 0")
        scheme_object = hybridmatch.HybridBranch(cfg.num_queries_one2one, cfg.num_queries_one2many, k=k,
                                                 weight=lambda_one2many)
    elif cfg.num_queries_one2many:
        raise ValueError(f"scheme {scheme!r} uses one group of queries; set cfg.num_queries_one2many=0")
    elif scheme == "epoch":
        scheme_object = hybridmatch.HybridEpoch(k, one2many_fraction, epochs, num_queries=cfg.num_queries_one2one)
    else:
        layers = max(cfg.dec_layers - 2, 1) if num_one2many_layers is None else num_one2many_layers
        scheme_object = hybridmatch.HybridLayer(k, layers, num_queries=cfg.num_queries_one2one)
    criterion = hybridmatch.HybridCriterion(base, scheme_object, per_object_keys=PER_OBJECT_KEYS)
    return criterion, scheme_object, weight_dict
