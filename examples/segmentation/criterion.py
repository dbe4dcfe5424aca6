"""Losses of the segmentation DETR: Mask2Former's point-sampled mask losses, hybrid-wrapped.

:class:`MaskSetCriterion` extends :class:`examples.common.criterion.SetCriterion` (DETR's loop
over layers, focal class loss, optional L1 + GIoU box losses) with Mask2Former's mask losses
per decoder layer, for the final layer and every ``aux_outputs[i]`` (suffix ``_{i}``); the
two-stage ``enc_outputs`` (``_enc``) get class and box losses only:

* **matching** on one point sample per image: ``P`` uniform points are drawn per image
  (torch's global stream, so a resumed run draws the same ones); every predicted mask and
  every target mask of the image is read there (bilinear, border padding, as
  :func:`hybridmatch.costs.point_sample`), and the matcher
  ``Matcher(w_cls * FocalClassCost() + w_ce * PointBCECost() + w_dice * PointDiceCost(),
  Hungarian())`` sees only those ``(N, P)`` / ``(M, P)`` values. The target masks reach the
  costs through the matcher (as the ``mask_points`` target key), and the matching step never
  holds anything of the masks' resolution: memory ``O(B (N + M) P)``;
* ``loss_mask`` (sigmoid cross-entropy) and ``loss_dice`` on the matched pairs, on
  Mask2Former's importance-sampled points: ``3 P'`` uniform candidates, the ``0.75 P'``
  most uncertain under the prediction (``-|logit|``) plus ``0.25 P'`` uniform ones; cross-
  entropy averaged over the points, both summed over pairs and divided by ``num_masks``
  (the batch's object count over ranks).

Repeated targets without copying masks: :func:`build_criterion` wraps the criterion in
:class:`hybridmatch.HybridCriterion` with ``per_object_keys=["boxes"]``, so
:func:`hybridmatch.repeat_targets` tiles labels and boxes ``K`` times but passes each image's
``masks`` (Tensor[M, H, W]) on as the same tensor (no copy), and with
``one2many_matcher="derive"`` (capacity-K Hungarian on the original objects). This
criterion reads a repeated index ``r`` as mask ``r % M`` (:func:`read_masks_at` gathers
from the un-repeated masks), so the K copies cost no mask memory: ``K * M * H * W`` bytes
(bool) saved per image, e.g. 6 x 8 x 64 x 64 = 196 KiB at the demo's size, 6 x 20 x 800 x
1216 = 111 MiB on a COCO-sized image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hybridmatch
from hybridmatch import Cost, FocalClassCost, GIoUCost, Hungarian, L1BoxCost, Matcher
from hybridmatch.costs import bce_cost_on_points, dice_cost_on_points, point_sample, sample_points

from examples.common.criterion import (
    Matches,
    SetCriterion,
    flat_indices,
    hybrid_criterion,
    layer_weight_dict,
    scheme_for,
)

__all__ = [
    "ENCODER_WEIGHTS",
    "MaskSetCriterion",
    "PointBCECost",
    "PointDiceCost",
    "build_criterion",
    "layer_weights",
    "read_masks_at",
]



class PointDiceCost(Cost):
    """Mask2Former's dice cost on values already read at shared points (``(B, N, P)`` / ``(B, M, P)``)."""

    output_keys = ("pred_mask_points",)
    target_keys = ("mask_points",)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: dict) -> Tensor:
        return dice_cost_on_points(outputs["pred_mask_points"], targets["mask_points"])


class PointBCECost(Cost):
    """Mask2Former's sigmoid cross-entropy cost on values already read at shared points."""

    output_keys = ("pred_mask_points",)
    target_keys = ("mask_points",)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: dict) -> Tensor:
        return bce_cost_on_points(outputs["pred_mask_points"], targets["mask_points"])


def read_masks_at(masks: Tensor, index: Tensor, points: Tensor) -> Tensor:
    """Masks ``masks[index[i]]`` read at ``points[i]``, bilinearly, without copying any mask.

    The convention of :func:`hybridmatch.costs.point_sample`: ``(x, y)`` in [0, 1], pixel
    ``i`` covers ``[i / W, (i + 1) / W)``, border padding. Only the ``4 n P`` pixels read
    are gathered, so ``index`` may repeat an object any number of times for free.

    Args:
        masks (Tensor[M, H, W]): bool or float masks of one image.
        index (Tensor[n] int64): the mask of each row, in ``[0, M)``.
        points (Tensor[n, P, 2]): the points of each row.

    Returns:
        Tensor[n, P] float32.
    """
    height, width = masks.shape[-2:]
    flat = masks.reshape(masks.shape[0], height * width)
    x = (points[..., 0].float() * width - 0.5).clamp(0, width - 1)
    y = (points[..., 1].float() * height - 0.5).clamp(0, height - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    wx, wy = x - x0, y - y0
    rows = index.to(flat.device)[:, None]

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat[rows, yy * width + xx].float()

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _mask_rows(target: Mapping[str, Tensor]) -> Tensor:
    """Index of each (possibly repeated) object's mask: ``r % M`` with M the masks' count."""
    count = len(target["labels"])
    masks = target["masks"].shape[0]
    if masks == 0 or count % masks:
        raise ValueError(f"targets: {count} labels but {masks} masks; masks must be the M objects' own or "
                         f"their K copies")
    return torch.arange(count, device=target["masks"].device) % masks


class MaskSetCriterion(SetCriterion):
    """The one-to-one set criterion of the segmentation DETR (see the module docstring).

    Args:
        num_classes (int): ``C``.
        cost_class, cost_mask, cost_dice (float): the matching cost's weights
            (Mask2Former: 2, 5, 5).
        cost_bbox, cost_giou (float): box terms in the matching cost (0: none, the default).
        box_loss (bool): add ``loss_bbox`` / ``loss_giou`` (the two-stage decoder refines
            boxes, so the example trains them).
        num_points (int): ``P``, matching points per image.
        num_loss_points (int): ``P'``, loss points per matched pair.
        oversample_ratio, importance_sample_ratio (float): Mask2Former's 3 and 0.75.
        weight_dict (dict[str, float]): the loss weights (:func:`layer_weights` per layer).
    """

    output_keys = ("pred_logits", "pred_boxes", "pred_masks")

    def __init__(self, num_classes: int, *, cost_class: float = 2.0, cost_mask: float = 5.0,
                 cost_dice: float = 5.0, cost_bbox: float = 0.0, cost_giou: float = 0.0,
                 box_loss: bool = True, num_points: int = 256, num_loss_points: int = 256,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 weight_dict: Mapping[str, float] | None = None) -> None:
        cost: Any = cost_class * FocalClassCost() + cost_mask * PointBCECost() + cost_dice * PointDiceCost()
        if cost_bbox:
            cost = cost + cost_bbox * L1BoxCost()
        if cost_giou:
            cost = cost + cost_giou * GIoUCost()
        # The encoder proposals have no masks: matched on class and boxes.
        super().__init__(num_classes, Matcher(cost, Hungarian()),
                         encoder_matcher=hybridmatch.HungarianMatcher(2.0, 5.0, 2.0), weight_dict=weight_dict)
        self.match_boxes = bool(cost_bbox or cost_giou)
        self.box_loss = box_loss
        self.num_points = num_points
        self.num_loss_points = num_loss_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def match(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Matches:
        """Match on one shared point sample per image; memory independent of the masks' size.

        Args:
            outputs: ``pred_logits (Tensor[B, N, C])``, ``pred_masks (Tensor[B, N, h, w])`` and
                ``pred_boxes`` when the cost has box terms.
            targets: B dicts with ``labels (Tensor[L])``, ``masks (Tensor[M, H, W])`` (``L = M``,
                or ``L = K M`` for repeated labels over un-repeated masks) and ``boxes``.

        Returns:
            DETR's list of ``(pred_idx, tgt_idx)``, indices into the labels.
        """
        pred = outputs["pred_masks"]
        points = sample_points(pred.shape[0], self.num_points, device=pred.device)  # (B, P, 2)
        matching_outputs = {"pred_logits": outputs["pred_logits"], "pred_mask_points": point_sample(pred, points)}
        if self.match_boxes:
            matching_outputs["pred_boxes"] = outputs["pred_boxes"]
        matching_targets = []
        for b, target in enumerate(targets):
            rows = _mask_rows(target) if len(target["labels"]) else target["labels"].new_zeros(0)
            at = points[b].to(target["masks"].device).expand(len(rows), -1, -1)
            values = read_masks_at(target["masks"], rows, at).to(pred.device)  # (L, P)
            entry = {"labels": target["labels"], "mask_points": values}
            if self.match_boxes:
                entry["boxes"] = target["boxes"]
            matching_targets.append(entry)
        return self.matcher(matching_outputs, matching_targets)

    def loss_masks(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                   indices: Matches, num_masks: float) -> dict[str, Tensor]:
        """``loss_mask`` and ``loss_dice`` of the matched pairs on importance-sampled points, / ``num_masks``."""
        pred = outputs["pred_masks"]
        batch_idx, query_idx = flat_indices(indices, pred.device)
        matched = pred[batch_idx, query_idx][:, None].float()  # (n, 1, h, w); n = 0 keeps the graph
        count, keep = len(batch_idx), self.num_loss_points
        important = int(self.importance_sample_ratio * keep)
        with torch.no_grad():
            candidates = sample_points(count, int(self.oversample_ratio * keep), device=pred.device)
            uncertainty = -point_sample(matched.detach(), candidates)[:, 0].abs()
            top = uncertainty.topk(important, dim=1).indices
            points = torch.cat((candidates.gather(1, top[..., None].expand(-1, -1, 2)),
                                sample_points(count, keep - important, device=pred.device)), dim=1)
            wanted = [read_masks_at(t["masks"], _mask_rows(t)[j.to(t["masks"].device)],
                                    points[int(start):int(start) + len(j)].to(t["masks"].device))
                      for t, (_, j), start in zip(targets, indices, _starts(indices))]
            wanted_values = (torch.cat(wanted).to(pred.device) if count
                             else matched.new_zeros(0, keep))
        logits = point_sample(matched, points)[:, 0]  # (n, P')
        loss_mask = F.binary_cross_entropy_with_logits(logits, wanted_values, reduction="none").mean(1).sum()
        probs = logits.sigmoid()
        dice = 1 - (2 * (probs * wanted_values).sum(1) + 1) / (probs.sum(1) + wanted_values.sum(1) + 1)
        return {"loss_mask": loss_mask / num_masks, "loss_dice": dice.sum() / num_masks}

    def layer_losses(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                     num_boxes: float) -> dict[str, Tensor]:
        """The losses of one decoder layer: class, masks (and boxes) of the pairs :meth:`match` makes."""
        indices = self.match(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices, num_boxes)}
        losses.update(self.loss_masks(outputs, targets, indices, num_boxes))
        if self.box_loss:
            losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return losses


def _starts(indices: Matches) -> list[int]:
    starts, total = [], 0
    for src, _ in indices:
        starts.append(total)
        total += len(src)
    return starts


def layer_weights(*, box_loss: bool = True, ce: float = 2.0, mask: float = 5.0, dice: float = 5.0, bbox: float = 5.0,
            giou: float = 2.0) -> dict[str, float]:
    """Loss weights of one decoder layer (Mask2Former: ce 2, mask 5, dice 5; boxes 5 and 2).

    Example:
        >>> layer_weights(box_loss=False)
        {'loss_ce': 2.0, 'loss_mask': 5.0, 'loss_dice': 5.0}
    """
    base = {"loss_ce": ce, "loss_mask": mask, "loss_dice": dice}
    if box_loss:
        base.update({"loss_bbox": bbox, "loss_giou": giou})
    return base


#: Loss weights of the two-stage proposals (class and boxes only).
ENCODER_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def build_criterion(scheme: str, cfg: Any, *, copy_masks: bool = False, num_points: int = 256,
                    box_loss: bool = True, **settings: Any) -> tuple[nn.Module, Any, dict[str, float]]:
    """The criterion, the scheme object (None for ``one2one``) and the loss weights of a run.

    Args:
        scheme: one of :data:`examples.common.criterion.SCHEMES`.
        cfg: the model's :class:`~examples.detection.config.ModelConfig`.
        copy_masks: repeat the masks K times with the other per-object keys and match the
            copies explicitly (the library's default path), instead of the default: masks
            not repeated (``per_object_keys=["boxes"]``), capacity-K matching
            (``one2many_matcher="derive"``).
        num_points: matching and loss points per image / pair.
        box_loss: train the boxes too.
        settings: the scheme's (``k``, ``lambda_one2many``, ``epochs``, ``one2many_fraction``,
            ``num_one2many_layers``; :func:`examples.common.criterion.build_scheme`).

    Returns:
        ``(criterion, scheme_object, weight_dict)``.
    """
    weight_dict = layer_weight_dict(layer_weights(box_loss=box_loss), cfg.dec_layers,
                                    encoder=ENCODER_WEIGHTS if cfg.two_stage else None)
    base = MaskSetCriterion(cfg.num_classes, num_points=num_points, num_loss_points=num_points, box_loss=box_loss,
                            weight_dict=weight_dict)
    return hybrid_criterion(base, scheme_for(scheme, cfg, **settings), weight_dict,
                            one2many_matcher=None if copy_masks else "derive",
                            per_object_keys=["boxes", "masks"] if copy_masks else ["boxes"])
