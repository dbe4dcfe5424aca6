"""A small DETR-convention criterion, written the way a user's code base has one.

Focal classification, L1 and GIoU box losses, auxiliary decoder layers
(``_{i}`` suffix), a two-stage encoder loss (``_enc``), normalised by the
globally all-reduced number of boxes. It uses hybridmatch's matcher as the
examples do; the losses themselves are plain torch written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridmatch import HungarianMatcher
from hybridmatch.distributed import global_num_boxes


def _xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def giou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matched pairs of cxcywh boxes with positive sizes."""
    a, b = _xyxy(a), _xyxy(b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(-1)
    return inter / union - (hull - union) / hull


class SetCriterion(torch.nn.Module):
    def __init__(self, num_classes: int, matcher=None, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.alpha, self.gamma = alpha, gamma
        self.calls = []  # (num_queries, num_boxes) per call, for tests

    def _losses(self, outputs, targets, num_boxes: float) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        onehot = torch.zeros_like(logits)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        onehot[batch_idx, query_idx, matched_labels] = 1.0
        prob = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        p_t = prob * onehot + (1 - prob) * (1 - onehot)
        focal = ce * (1 - p_t) ** self.gamma
        focal = (self.alpha * onehot + (1 - self.alpha) * (1 - onehot)) * focal
        loss_ce = focal.mean(1).sum() / num_boxes * logits.shape[1]
        src = boxes[batch_idx, query_idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        loss_giou = (1 - giou_pairs(src, tgt)).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs, targets):
        num_boxes = global_num_boxes(targets)
        self.calls.append((outputs["pred_logits"].shape[1], num_boxes))
        losses = self._losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes).items()})
        if "enc_outputs" in outputs:
            enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update({f"{k}_enc": v for k, v in self._losses(outputs["enc_outputs"], enc_targets, num_boxes).items()})
        return losses


def random_outputs(seed: int, batch: int, num_queries: int, num_classes: int, num_aux: int,
                   enc: bool = False, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)

    def layer():
        boxes = torch.cat([0.2 + 0.6 * torch.rand(batch, num_queries, 2, generator=g),
                           0.05 + 0.3 * torch.rand(batch, num_queries, 2, generator=g)], dim=-1)
        logits = torch.randn(batch, num_queries, num_classes, generator=g)
        if requires_grad:
            boxes.requires_grad_(True)
            logits.requires_grad_(True)
        return {"pred_logits": logits, "pred_boxes": boxes}

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(num_aux)]
    if enc:
        outputs["enc_outputs"] = layer()
    return outputs


def random_targets(seed: int, counts: list[int], num_classes: int, extras: bool = False):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for b, m in enumerate(counts):
        t = {
            "labels": torch.randint(0, num_classes, (m,), generator=g),
            "boxes": torch.cat([0.2 + 0.6 * torch.rand(m, 2, generator=g), 0.05 + 0.3 * torch.rand(m, 2, generator=g)], -1),
            "image_id": torch.tensor([b]),
            "size": torch.tensor([480, 640]),
        }
        if extras:
            t["area"] = torch.rand(m, generator=g)
            t["keypoints"] = torch.rand(m, 17, 3, generator=g)
            t["masks"] = torch.rand(m, 8, 8, generator=g) > 0.5
        targets.append(t)
    return targets
