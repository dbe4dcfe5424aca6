"""COCO-format helpers every task's data and evaluation use (pycocotools, imported on use).

* :func:`load_coco`: a pycocotools ``COCO`` from an annotation file, without its stdout chatter;
* :func:`coco_api` / :func:`label_to_category`: the ``COCO`` object and the contiguous label
  -> category id map of a data set, also through a ``torch.utils.data.Subset``;
* :func:`gather_results`: every rank's COCO results on rank 0, each image once;
* :func:`coco_stats`: ``COCOeval`` of a result list (``bbox``, ``segm`` or ``keypoints``),
  scoring an empty result list as 0 instead of failing;
* :func:`on_main_rank`: compute on rank 0, broadcast to the others.

Example:
    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "gt.json"
    >>> _ = path.write_text(json.dumps({
    ...     "images": [{"id": 1, "height": 10, "width": 10}],
    ...     "categories": [{"id": 3, "name": "circle"}],
    ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4],
    ...                      "area": 16, "iscrowd": 0}]}))
    >>> gt = load_coco(path)
    >>> exact = [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "score": 0.9}]
    >>> round(coco_stats(gt, exact, "bbox")[0], 6), coco_stats(gt, [], "bbox")[0]
    (1.0, 0.0)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist

__all__ = [
    "BOX_STAT_NAMES",
    "coco_api",
    "coco_stats",
    "gather_results",
    "label_to_category",
    "load_coco",
    "on_main_rank",
]

#: The names of ``COCOeval.stats`` for ``bbox`` and ``segm``, in its order.
BOX_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

T = TypeVar("T")


def load_coco(annotation_file: str | Path) -> Any:
    """A pycocotools ``COCO`` of ``annotation_file``; its progress lines are kept off stdout.

    Raises:
        ImportError: pycocotools is missing (the message says what to install).
    """
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError("the examples read COCO files with pycocotools: "
                          "pip install 'hybridmatch[examples]'") from None
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotation_file))


def _owners(dataset: Any) -> tuple[Any, ...]:
    # A torch Subset (--train-limit / --val-limit) wraps the data set that knows its file.
    return (dataset, getattr(dataset, "dataset", None))


def coco_api(dataset: Any) -> Any:
    """The pycocotools ``COCO`` object of a data set (``dataset.coco``, or its Subset's).

    Raises:
        TypeError: neither the data set nor the one it wraps has a ``coco`` attribute.
    """
    for owner in _owners(dataset):
        if owner is not None and getattr(owner, "coco", None) is not None:
            return owner.coco
    raise TypeError(f"COCO evaluation needs a data set with a pycocotools COCO object as .coco "
                    f"(e.g. examples.detection.data.CocoDetection), got {type(dataset).__name__}")


def label_to_category(dataset: Any) -> Mapping[int, int]:
    """The data set's contiguous label -> COCO category id map (``dataset.label_to_category``).

    Raises:
        TypeError: neither the data set nor the one it wraps has the map.
    """
    for owner in _owners(dataset):
        mapping = getattr(owner, "label_to_category", None)
        if mapping is not None:
            return mapping
    raise TypeError(f"{type(dataset).__name__} has no label_to_category mapping (contiguous label -> category id)")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_results(results: list[dict[str, Any]], image_ids: list[int]) -> tuple[list[dict[str, Any]], list[int]]:
    """Every rank's COCO results and image ids on rank 0 (empty lists on the others).

    A collective under ``torch.distributed`` (every rank calls it); alone, the identity. A
    ``DistributedSampler`` pads the last ranks with repeated images, so each image id is
    kept once, with the results of the first rank that saw it.

    Args:
        results: this rank's COCO results, each with an ``image_id``.
        image_ids: the images this rank evaluated.

    Returns:
        ``(results, image_ids)`` of the whole data set on rank 0.
    """
    if not _distributed():
        return results, image_ids
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (results, image_ids))
    if dist.get_rank() != 0:
        return [], []
    merged: list[dict[str, Any]] = []
    seen: set[int] = set()
    all_ids: list[int] = []
    for rank_results, rank_ids in gathered:
        fresh = set(rank_ids) - seen
        merged.extend(r for r in rank_results if r["image_id"] in fresh)
        seen |= fresh
        all_ids.extend(i for i in rank_ids if i in fresh)
    return merged, all_ids


def on_main_rank(compute: Callable[[], T], default: T) -> T:
    """``compute()`` on rank 0, broadcast to every rank; alone, just ``compute()``.

    ``default`` is the other ranks' placeholder before the broadcast (same type as the result).
    """
    if not _distributed():
        return compute()
    value = compute() if dist.get_rank() == 0 else default
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def coco_stats(coco_gt: Any, results: Sequence[Mapping[str, Any]], iou_type: str,
               image_ids: Sequence[int] | None = None, *, keypoint_sigmas: Sequence[float] | None = None,
               verbose: bool = False) -> list[float]:
    """``COCOeval(coco_gt, results, iou_type)``'s ``stats`` after evaluate / accumulate / summarize.

    Args:
        coco_gt: the ground truth (pycocotools ``COCO``).
        results: COCO results of ``iou_type`` (``bbox``, ``segmentation`` RLE or ``keypoints``);
            an empty list scores 0 wherever there is ground truth (``loadRes`` cannot take it).
        iou_type: ``"bbox"``, ``"segm"`` or ``"keypoints"``.
        image_ids: evaluate only these images (default: all of ``coco_gt``).
        keypoint_sigmas: the J OKS constants (``params.kpt_oks_sigmas``) for ``"keypoints"``.
        verbose: print pycocotools' own summary.

    Returns:
        the 12 (``bbox``, ``segm``) or 10 (``keypoints``) numbers of ``COCOeval.stats``, in
        its order (-1 where there is no ground truth in that range).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        if results:
            found = coco_gt.loadRes([dict(r) for r in results])
        else:
            found = COCO()
            found.dataset = {"images": list(coco_gt.dataset["images"]),
                             "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
            found.createIndex()
        evaluator = COCOeval(coco_gt, found, iouType=iou_type)
        if keypoint_sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(keypoint_sigmas, dtype=np.float64)
        if image_ids:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]
