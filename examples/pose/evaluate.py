"""COCO keypoint evaluation (pycocotools, ``iouType="keypoints"``, OKS) of the keypoint DETR.

:func:`evaluate_keypoints` runs the model in eval mode over a loader, keeps the 20 best
poses per image (:func:`examples.pose.model.postprocess`; COCO's keypoint evaluation counts
20 per image), gathers every rank's results to rank 0 and runs ``COCOeval`` there with
``params.kpt_oks_sigmas`` set to the data set's sigmas, the ones the matching cost and the
OKS loss use. It returns the 10 standard numbers by name (:data:`STAT_NAMES`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from examples.common.coco import coco_api, coco_stats, gather_results, label_to_category, on_main_rank

__all__ = ["STAT_NAMES", "coco_keypoint_stats", "evaluate_keypoints", "predict_keypoints"]

#: The names of ``COCOeval.stats`` for keypoints, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


@torch.no_grad()
def predict_keypoints(model: nn.Module, loader: Iterable, dataset: Any, device: torch.device | str, *,
                      top_k: int = 20, one2many: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
    """This rank's poses in COCO result format and the ids of the images it saw.

    Returns:
        ``(results, image_ids)``; a result is ``{"image_id", "category_id", "keypoints": [x, y, 1] * J
        (absolute, original image), "score"}``.
    """
    from .model import postprocess

    was_training = model.training
    model.eval()
    category = int(label_to_category(dataset)[0])
    device = torch.device(device)
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    try:
        for images, pixel_mask, targets in loader:
            outputs = model(images.to(device), pixel_mask.to(device), **({"one2many": True} if one2many else {}))
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            ids = [int(t["image_id"].reshape(-1)[0]) for t in targets]
            image_ids.extend(ids)
            for image_id, found in zip(ids, postprocess(outputs, sizes, top_k=top_k)):
                for pose, score in zip(found["keypoints"].cpu().tolist(), found["scores"].cpu().tolist()):
                    flat = [round(v, 2) for x, y in pose for v in (x, y, 1.0)]
                    results.append({"image_id": image_id, "category_id": category, "keypoints": flat,
                                    "score": float(score)})
    finally:
        model.train(was_training)
    return results, image_ids


def coco_keypoint_stats(coco_gt: Any, results: list[dict[str, Any]], sigmas: Sequence[float],
                        image_ids: Sequence[int] | None = None, verbose: bool = False) -> dict[str, float]:
    """pycocotools' keypoint AP/AR of ``results`` against ``coco_gt`` with OKS ``sigmas``.

    Args:
        coco_gt: a pycocotools ``COCO`` with keypoint annotations.
        results: COCO keypoint results (``image_id``, ``category_id``, ``keypoints``, ``score``).
        sigmas: the J OKS constants (``params.kpt_oks_sigmas``).
        image_ids: evaluate only these images (default: all of ``coco_gt``).

    Returns:
        ``{name: value}`` for :data:`STAT_NAMES`; no results score 0 (-1 where there is no ground truth).
    """
    stats = coco_stats(coco_gt, results, "keypoints", image_ids, keypoint_sigmas=sigmas, verbose=verbose)
    return dict(zip(STAT_NAMES, stats))


def evaluate_keypoints(model: nn.Module, loader: Iterable, dataset: Any, sigmas: Sequence[float],
                       device: torch.device | str = "cpu", *, top_k: int = 20, one2many: bool = False,
                       verbose: bool = False) -> dict[str, float]:
    """COCO keypoint AP/AR of ``model`` on ``loader``'s images (every rank gets rank 0's numbers)."""
    results, image_ids = predict_keypoints(model, loader, dataset, device, top_k=top_k, one2many=one2many)
    results, image_ids = gather_results(results, image_ids)
    return on_main_rank(lambda: coco_keypoint_stats(coco_api(dataset), results, sigmas, image_ids, verbose),
                        dict.fromkeys(STAT_NAMES, 0.0))
