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


def pairwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), cxcywh; (N, M)."""
    n, m = len(a), len(b)
    return giou_pairs(a[:, None].expand(n, m, 4).reshape(-1, 4), b[None].expand(n, m, 4).reshape(-1, 4)).reshape(n, m)


class DetrMatcher(torch.nn.Module):
    """DETR's matcher written the way DETR's code base has it: softmax class cost, scipy.

    Not a hybridmatch matcher: only its ``cost_class`` / ``cost_bbox`` / ``cost_giou``
    weights can be read.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def forward(self, outputs, targets):
        from scipy.optimize import linear_sum_assignment

        indices = []
        for b, t in enumerate(targets):
            prob = outputs["pred_logits"][b].double().softmax(-1)
            boxes = outputs["pred_boxes"][b].double()
            tgt_boxes = t["boxes"].double()
            cost = (self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                    - self.cost_class * prob[:, t["labels"]]
                    - self.cost_giou * pairwise_giou(boxes, tgt_boxes))
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


class DetrCriterion(torch.nn.Module):
    """DETR's SetCriterion: softmax cross-entropy with a down-weighted no-object class.

    Returns DETR's logging keys beside the losses: ``class_error`` for the final layer only
    and ``cardinality_error`` for every layer, neither of which has a weight.
    """

    def __init__(self, num_classes: int, matcher=None, eos_coef: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(1.0, 5.0, 2.0, class_cost="softmax")
        self.eos_coef = eos_coef
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _losses(self, outputs, targets, num_boxes: float, log: bool) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64)
        classes[batch_idx, query_idx] = matched_labels
        losses = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight)}
        if log:
            correct = (logits[batch_idx, query_idx].argmax(-1) == matched_labels).float()
            accuracy = correct.mean() * 100 if len(correct) else torch.tensor(100.0)
            losses["class_error"] = 100 - accuracy
        predicted = (logits.argmax(-1) != self.num_classes).sum(1).float()
        lengths = torch.tensor([float(len(t["labels"])) for t in targets])
        losses["cardinality_error"] = F.l1_loss(predicted, lengths)
        src = boxes[batch_idx, query_idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        losses["loss_bbox"] = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        losses["loss_giou"] = (1 - giou_pairs(src, tgt)).sum() / num_boxes
        return losses

    def forward(self, outputs, targets):
        num_boxes = global_num_boxes(targets)
        losses = self._losses(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes, log=False).items()})
        return losses
