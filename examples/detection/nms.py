"""Non-maximum suppression, for evaluating the hybrid branch's one-to-many queries.

The one-to-many group of H-DETR's hybrid branch is trained against the ground truth
repeated K times, so several of its queries predict each object: its raw predictions
are full of duplicates and it needs NMS at inference, like a classic detector. Scoring
that group *with* NMS measures directly what the extra one-to-many supervision has
taught the shared encoder and decoder, separately from how well the NMS-free
one-to-one head has learned to keep one query per object.

Plain torch (torchvision is not a dependency): :func:`nms` is the greedy algorithm,
:func:`batched_nms` applies it per class, :func:`postprocess_one2many` turns the
model's ``*_one2many`` outputs into scored boxes per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridmatch import ShapeError
from hybridmatch.boxes import box_cxcywh_to_xyxy, pairwise_iou

__all__ = ["batched_nms", "nms", "postprocess_one2many"]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Visits the boxes by descending score (ties: lower index first) and keeps a box unless
    it overlaps an already kept box with IoU strictly above ``iou_threshold``.

    Args:
        boxes (Tensor[N, 4]): ``xyxy`` boxes, any float dtype.
        scores (Tensor[N]): their scores.
        iou_threshold (float): boxes overlapping a kept box by more than this are dropped.

    Returns:
        Tensor[k] int64: indices of the kept boxes, by descending score.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()   # IoU(0, 1) = 90/110
        [0, 2]
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ShapeError(
            f"nms: boxes must be (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = pairwise_iou(boxes[order].float(), boxes[order].float()).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if not suppressed[i]:
            suppressed[i + 1 :] |= iou[i, i + 1 :] > iou_threshold
    return order[~suppressed.to(order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` within each class: boxes of different labels never suppress each other.

    Args:
        boxes (Tensor[N, 4]): ``xyxy`` boxes. scores (Tensor[N]). labels (Tensor[N] int64).
        iou_threshold (float): as in :func:`nms`.

    Returns:
        Tensor[k] int64: indices of the kept boxes, by descending score.
    """
    if labels.shape != scores.shape:
        raise ShapeError(f"batched_nms: labels must be (N,) like scores, got {tuple(labels.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # Shift each class to its own region of the plane, then one NMS for all classes.
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes.float() + (labels.float() * span)[:, None]
    return nms(shifted, scores, iou_threshold)


@torch.no_grad()
def postprocess_one2many(outputs: dict, target_sizes: Tensor, top_k: int = 100, *,
                         iou_threshold: float = 0.5, candidates: int = 1000) -> list[dict[str, Tensor]]:
    """Scored boxes per image from the one-to-many queries, with class-wise NMS.

    Every (query, class) pair is a candidate with score ``sigmoid(logit)``; the best
    ``candidates`` per image go through :func:`batched_nms`, and the ``top_k`` best
    survivors are returned. Use it with a model run with ``one2many=True``.

    Args:
        outputs: the model's output with ``pred_logits_one2many`` (B, Q2, C) and
            ``pred_boxes_one2many`` (B, Q2, 4) cxcywh normalised.
        target_sizes (Tensor[B, 2]): (height, width) to scale each image's boxes to.
        top_k: detections kept per image after NMS.
        iou_threshold: of the NMS.
        candidates: (query, class) pairs per image that enter the NMS.

    Returns:
        list of B dicts: ``scores`` (Tensor[k] float32, descending), ``labels`` (Tensor[k]
        int64), ``boxes`` (Tensor[k, 4] float32, xyxy absolute), as
        :func:`examples.detection.model.postprocess`.

    Raises:
        ShapeError: the outputs hold no one-to-many predictions (a model without the hybrid
            branch, or not run with ``one2many=True``).
    """
    if "pred_logits_one2many" not in outputs:
        raise ShapeError(
            "postprocess_one2many: outputs have no pred_logits_one2many; run a model with "
            "num_queries_one2many > 0 as model(images, pixel_mask, one2many=True)"
        )
    logits, boxes = outputs["pred_logits_one2many"], outputs["pred_boxes_one2many"]
    batch, num_queries, num_classes = logits.shape
    scores = logits.float().sigmoid().flatten(1)
    k = min(candidates, num_queries * num_classes)
    top_scores, top_index = scores.topk(k, dim=1, sorted=True)
    query = torch.div(top_index, num_classes, rounding_mode="floor")
    labels = top_index % num_classes
    height, width = target_sizes.float().unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None, :]
    xyxy = torch.gather(box_cxcywh_to_xyxy(boxes.float()), 1, query[..., None].expand(-1, -1, 4)) * scale
    results = []
    for b in range(batch):
        keep = batched_nms(xyxy[b], top_scores[b], labels[b], iou_threshold)[:top_k]
        results.append({"scores": top_scores[b, keep], "labels": labels[b, keep], "boxes": xyxy[b, keep]})
    return results
