"""COCO box evaluation (pycocotools) of a DETR-style detector, and AP tables.

:func:`evaluate_coco` runs the model in eval mode over a loader, turns the one-to-one
queries into detections with ``model.postprocess`` (no NMS), maps contiguous labels back to
the data set's category ids, gathers every rank's detections to rank 0 and runs
``COCOeval`` there. It returns the 12 standard numbers by name (:data:`STAT_NAMES`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from examples.common.coco import BOX_STAT_NAMES, coco_api, coco_stats, gather_results, label_to_category, on_main_rank
from examples.common.distributed import unwrap

__all__ = ["STAT_NAMES", "evaluate_coco", "evaluate_heads", "format_ap_table", "format_side_by_side", "predict"]

#: The names of ``COCOeval.stats``, in its order.
STAT_NAMES = BOX_STAT_NAMES

_DESCRIPTIONS = {
    "AP": "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP50": "AP @[IoU=0.50      | area=all | maxDets=100]",
    "AP75": "AP @[IoU=0.75      | area=all | maxDets=100]",
    "APs": "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "APm": "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR1": "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR10": "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "ARs": "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "ARm": "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
}


Postprocess = Callable[..., list]


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, dataset: Any, device: torch.device | str,
            *, top_k: int = 100, amp: bool = False, heads: Mapping[str, Postprocess] | None = None,
            one2many: bool = False) -> tuple[dict[str, list[dict[str, Any]]], list[int]]:
    """This rank's detections in COCO result format, per head, and the ids of the images it saw.

    Args:
        heads: ``{name: postprocess(outputs, target_sizes, top_k=...)}``; default
            ``{"coco": model.postprocess or examples.detection.model.postprocess}``. One forward
            pass per batch serves every head.
        one2many: run the model with ``one2many=True`` (needed by
            :func:`examples.detection.nms.postprocess_one2many`).

    Returns:
        ``(results, image_ids)``: results maps each head's name to a list of ``{"image_id": int,
        "category_id": int, "bbox": [x, y, w, h] (absolute, in the original image), "score": float}``.
    """
    was_training = model.training
    model.eval()
    categories = label_to_category(dataset)
    if heads is None:
        postprocess = getattr(unwrap(model), "postprocess", None)
        if postprocess is None:  # the example's detector exposes it as a module function
            from .model import postprocess
        heads = {"coco": postprocess}
    device = torch.device(device)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in heads}
    image_ids: list[int] = []
    extra = {"one2many": True} if one2many else {}
    try:
        for images, pixel_mask, targets in loader:
            images, pixel_mask = images.to(device), pixel_mask.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                outputs = model(images, pixel_mask, **extra)
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            ids = [int(target["image_id"].reshape(-1)[0]) for target in targets]
            image_ids.extend(ids)
            for name, postprocess in heads.items():
                for image_id, found in zip(ids, postprocess(outputs, sizes, top_k=top_k)):
                    boxes = found["boxes"].float().cpu()
                    boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                    for box, score, label in zip(boxes.tolist(), found["scores"].float().cpu().tolist(),
                                                 found["labels"].cpu().tolist()):
                        results[name].append({"image_id": image_id,
                                              "category_id": int(categories[int(label)]),
                                              "bbox": [round(v, 3) for v in box], "score": float(score)})
    finally:
        model.train(was_training)
    return results, image_ids


def evaluate_heads(model: nn.Module, loader: Iterable, dataset: Any, heads: Mapping[str, Postprocess],
                   device: torch.device | str = "cpu", *, top_k: int = 100, amp: bool = False,
                   one2many: bool = False, verbose: bool = False) -> dict[str, dict[str, float]]:
    """COCO box AP/AR of several ways of reading the model's outputs, from one pass.

    Args:
        heads: ``{name: postprocess}``, e.g. ``{"coco": model.postprocess,
            "coco_one2many_nms": nms.postprocess_one2many}``.
        one2many: run the model with ``one2many=True``.
        model, loader, dataset, device, top_k, amp, verbose: as in :func:`evaluate_coco`.

    Returns:
        ``{name: stats}``, each stats as :func:`evaluate_coco` returns.
    """
    try:
        import pycocotools  # noqa: F401
    except ImportError as error:  # pragma: no cover - the example's requirements include it
        raise ImportError("evaluate_coco needs pycocotools: pip install 'hybridmatch[examples]'") from error

    per_head, image_ids = predict(model, loader, dataset, device, top_k=top_k, amp=amp, heads=heads,
                                  one2many=one2many)
    out: dict[str, dict[str, float]] = {}
    for name, results in per_head.items():
        results, ids = gather_results(results, image_ids)
        score = functools.partial(coco_stats, coco_api(dataset), results, "bbox", ids, verbose=verbose)
        stats = on_main_rank(score, [0.0] * len(STAT_NAMES))
        out[name] = dict(zip(STAT_NAMES, stats))
    return out


def evaluate_coco(model: nn.Module, loader: Iterable, dataset: Any, device: torch.device | str = "cpu",
                  *, top_k: int = 100, amp: bool = False, verbose: bool = False) -> dict[str, float]:
    """COCO box AP/AR of ``model`` on ``loader``'s images.

    Args:
        model: a detector with ``forward(images, pixel_mask)`` and
            ``postprocess(outputs, target_sizes (Tensor[B, 2] (h, w)), top_k)`` (possibly
            wrapped in ``DistributedDataParallel``).
        loader: yields ``(images (Tensor[B, 3, H, W]), pixel_mask (Tensor[B, H, W] bool),
            targets)``, each target with ``image_id`` and ``orig_size`` (h, w).
        dataset: the loader's data set, with ``coco`` (pycocotools) and ``label_to_category``.
        device: where the model runs.
        top_k (int): detections kept per image (COCO counts at most 100).
        verbose (bool): print pycocotools' own summary.

    Returns:
        dict[str, float]: the 12 numbers of ``COCOeval.stats`` by :data:`STAT_NAMES`, each in
        [-1, 1] (-1: no ground truth in that area range). With no detections at all, AP and AR
        are 0 wherever there is ground truth. Under ``torch.distributed`` every rank must call
        it; all ranks get the same numbers (computed on rank 0, broadcast).
    """
    postprocess = getattr(unwrap(model), "postprocess", None)
    if postprocess is None:
        from .model import postprocess
    return evaluate_heads(model, loader, dataset, {"coco": postprocess}, device, top_k=top_k, amp=amp,
                          verbose=verbose)["coco"]


def format_ap_table(stats: Mapping[str, float], title: str | None = None) -> str:
    """A COCO summary table, one row per number (percent, one decimal; -1 shown as ``n/a``)."""
    lines = [title] if title else []
    for name in STAT_NAMES:
        value = stats.get(name, float("nan"))
        shown = "n/a" if value < 0 else f"{100 * value:5.1f}"
        lines.append(f"{name:<6} {_DESCRIPTIONS[name]:<48} {shown:>6}")
    return "\n".join(lines)


def format_side_by_side(runs: Mapping[str, Mapping[str, float]]) -> str:
    """One row per COCO number, one column per run (percent), plus the difference of two runs.

    Example:
        >>> print(format_side_by_side({"one2one": {"AP": 0.1}, "branch": {"AP": 0.15}}).splitlines()[2])
        AP     AP @[IoU=0.50:0.95 | area=all | maxDets=100]        10.0     15.0   +5.0
    """
    names = list(runs)
    width = max([8] + [len(n) for n in names])
    header = f"{'':<6} {'':<48} " + " ".join(f"{n:>{width}}" for n in names)
    if len(names) == 2:
        header += f" {'diff':>6}"
    lines = [header, "-" * len(header)]
    for stat in STAT_NAMES:
        values = [runs[n].get(stat, float("nan")) for n in names]
        cells = " ".join(f"{'n/a' if v < 0 else f'{100 * v:.1f}':>{width}}" for v in values)
        row = f"{stat:<6} {_DESCRIPTIONS[stat]:<48} {cells}"
        if len(names) == 2 and min(values) >= 0:
            row += f" {100 * (values[1] - values[0]):+6.1f}"
        lines.append(row)
    return "\n".join(lines)
