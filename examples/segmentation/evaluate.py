"""COCO ``segm`` AP of the segmentation DETR with pycocotools, on RLE-encoded masks.

:func:`postprocess` turns the one-to-one outputs into scored instance masks at each image's
original size; :func:`predict` runs a loader and encodes them as COCO results (RLE);
:func:`coco_segm_stats` scores results against a ``COCO`` ground truth; :func:`evaluate_segm`
is the three together (results gathered over ranks, scored on rank 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from examples.common.coco import BOX_STAT_NAMES as STAT_NAMES
from examples.common.coco import coco_stats, gather_results, label_to_category

__all__ = ["coco_segm_stats", "encode_mask", "evaluate_segm", "postprocess", "predict"]


def encode_mask(mask: Tensor | np.ndarray) -> dict[str, Any]:
    """COCO RLE of a binary mask ``(H, W)``, ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    array = mask.cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


@torch.no_grad()
def postprocess(outputs: Mapping[str, Tensor], sizes: Tensor, orig_sizes: Tensor, top_k: int = 50,
                threshold: float = 0.5, stride: int = 4) -> list[dict[str, Tensor]]:
    """Scored instance masks per image from the one-to-one outputs.

    Every (query, class) pair is a candidate with score ``sigmoid(logit)`` times the
    query's mean mask probability inside its mask (Mask2Former's score); the ``top_k``
    best are kept. Mask logits (over the padded canvas) are cropped to the image's valid
    part, resized to its original size (bilinear) and thresholded at ``threshold``.

    Args:
        outputs: ``pred_logits (Tensor[B, Q, C])``, ``pred_masks (Tensor[B, Q, h, w])``.
        sizes (Tensor[B, 2]): each image's ``(h, w)`` as fed to the model (before padding).
        orig_sizes (Tensor[B, 2]): each image's original ``(H, W)``.
        top_k (int): candidates per image.
        threshold (float): mask probability threshold.
        stride (int): the mask logits' stride (the model's ``mask_stride``).

    Returns:
        list of B dicts: ``scores (Tensor[k])``, ``labels (Tensor[k] int64)``, ``masks
        (Tensor[k, H, W] bool)``.
    """
    logits, masks = outputs["pred_logits"].float(), outputs["pred_masks"].float()
    batch, num_queries, num_classes = logits.shape
    canvas = masks.shape[-2:]
    results = []
    for b in range(batch):
        height, width = (int(v) for v in sizes[b])
        # The mask logits cover the padded canvas: crop the image's part first.
        crop = masks[b, :, : min(canvas[0], -(-height // stride)), : min(canvas[1], -(-width // stride))]
        full = F.interpolate(crop[None], size=tuple(int(v) for v in orig_sizes[b]), mode="bilinear",
                             align_corners=False)[0]
        probs = full.sigmoid()
        binary = probs > threshold
        mask_score = (probs * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
        scores = (logits[b].sigmoid() * mask_score[:, None]).flatten()
        k = min(top_k, scores.numel())
        top_scores, top_index = scores.topk(k)
        query = torch.div(top_index, num_classes, rounding_mode="floor")
        results.append({"scores": top_scores, "labels": top_index % num_classes, "masks": binary[query]})
    return results


def predict(model: nn.Module, loader: Iterable, dataset: Any, device: torch.device | str,
            *, top_k: int = 50) -> tuple[list[dict[str, Any]], list[int]]:
    """This rank's instance masks in COCO result format (RLE) and the ids of the images it saw."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    categories = label_to_category(dataset)
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    try:
        for images, pixel_mask, targets in loader:
            outputs = model(images.to(device), pixel_mask.to(device))
            stride = max(1, round(images.shape[-2] / outputs["pred_masks"].shape[-2]))
            sizes = torch.stack([t["size"] for t in targets])
            orig = torch.stack([t["orig_size"] for t in targets])
            for target, found in zip(targets, postprocess(outputs, sizes, orig, top_k=top_k, stride=stride)):
                image_id = int(target["image_id"].reshape(-1)[0])
                image_ids.append(image_id)
                for score, label, mask in zip(found["scores"].tolist(), found["labels"].tolist(), found["masks"]):
                    results.append({"image_id": image_id, "category_id": int(categories[label]),
                                    "segmentation": encode_mask(mask), "score": float(score)})
    finally:
        model.train(was_training)
    return results, image_ids


def coco_segm_stats(coco_gt: Any, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int] | None = None,
                    verbose: bool = False) -> dict[str, float]:
    """pycocotools' ``segm`` evaluation of ``results`` (RLE masks) against ``coco_gt``.

    Returns:
        ``{"AP": ..., "AP50": ..., ...}``, the 12 numbers of ``COCOeval.stats`` (fractions;
        -1 where undefined); every AP is 0 without results.
    """
    return dict(zip(STAT_NAMES, coco_stats(coco_gt, results, "segm", image_ids, verbose=verbose)))


def evaluate_segm(model: nn.Module, loader: Iterable, dataset: Any, device: torch.device | str) -> dict[str, Any]:
    """``{"segm": stats}`` on rank 0 (``{}`` on the others) for the images of ``loader``."""
    results, image_ids = gather_results(*predict(model, loader, dataset, device))
    if not image_ids:
        return {}
    return {"segm": coco_segm_stats(dataset.coco, results, image_ids)}
