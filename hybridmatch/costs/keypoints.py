"""Keypoint costs for pose DETRs (PETR, ED-Pose): 1 - OKS and visibility-masked L1.

Keypoints follow COCO: a target holds ``J`` triples ``(x, y, v)`` with ``v = 0`` not
labelled, ``1`` labelled but occluded, ``2`` visible; a keypoint *counts* when ``v > 0``.
Predictions hold ``(x, y)`` per keypoint. Coordinates and the target's ``area`` must be in the
same units (pixels and pixels², or normalised and normalised²); the costs never convert.
Both accept COCO's flat layout too: ``(..., 3 * J)`` targets and ``(..., 2 * J)`` predictions.

Memory: both build a ``(B, N, M, J)`` float32 intermediate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigurationError, ShapeError
from ..validation import check_same_batch
from ._base import Cost, Shared, key_repr, read_output, read_target, shape_of

__all__ = [
    "COCO_KEYPOINT_SIGMAS",
    "oks_cost",
    "keypoint_l1_cost",
    "OKSCost",
    "KeypointL1Cost",
]

#: The per-keypoint OKS constants of COCO's 17 person keypoints (nose, eyes, ears, shoulders,
#: elbows, wrists, hips, knees, ankles), as pycocotools' ``COCOeval`` defines them.
COCO_KEYPOINT_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

# pycocotools adds numpy's spacing(1) to the area, so a zero area divides safely.
_AREA_EPS = 2.220446049250313e-16


def oks_cost(
    pred_keypoints: Tensor,
    target_keypoints: Tensor,
    area: Tensor,
    sigmas: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """``1 - OKS`` between every predicted and every target pose (COCO's object keypoint similarity).

    For a prediction ``d`` and a target ``g`` with area ``a``, over the target's labelled
    keypoints ``j`` (``v_j > 0``)::

        e_j = ((x_dj - x_gj)**2 + (y_dj - y_gj)**2) / (2 * sigma_j)**2 / (a + eps) / 2
        OKS = mean_j exp(-e_j)

    as pycocotools' ``COCOeval.computeOks`` computes it (``eps = 2.2e-16``). A target with
    no labelled keypoint has OKS 0 against every prediction, so its cost is 1 for all of
    them: the other terms of the cost decide its match. (pycocotools instead scores such a
    target by the distance to its box; a matching cost has no use for that.)

    Args:
        pred_keypoints (Tensor[B, N, J, 2] or Tensor[B, N, 2 * J]): predicted ``(x, y)``;
            a ``(B, N, J, 3)`` tensor is read as ``(x, y, score)``.
        target_keypoints (Tensor[B, M, J, 3] or Tensor[B, M, 3 * J]): target ``(x, y, v)``.
        area (Tensor[B, M]): target areas, in the coordinates' units squared.
        sigmas (sequence of J floats or Tensor[J], optional): per-keypoint constants;
            default :data:`COCO_KEYPOINT_SIGMAS` (J must then be 17).

    Returns:
        Tensor[B, N, M] float32 in [0, 1].

    Example:
        >>> target = torch.tensor([[[[10.0, 10.0, 2.0], [20.0, 10.0, 0.0]]]])  # (1, 1, 2, 3)
        >>> pred = torch.tensor([[[[10.0, 10.0], [99.0, 99.0]]]])              # (1, 1, 2, 2)
        >>> oks_cost(pred, target, torch.tensor([[100.0]]), sigmas=[0.1, 0.1])  # exact on the labelled one
        tensor([[[0.]]])
    """
    pred, target = _check_keypoints("oks_cost", pred_keypoints, target_keypoints)
    num_joints = target.shape[2]
    if area.ndim != 2 or tuple(area.shape) != tuple(target.shape[:2]):
        raise ShapeError(
            f"oks_cost: area must have shape (B, M) = {tuple(target.shape[:2])} to match the "
            f"target keypoints, got {shape_of(area)}"
        )
    variances = (2.0 * _sigmas("oks_cost", sigmas, num_joints, pred.device)) ** 2  # (J,)
    squared = _squared_distances(pred, target)  # (B, N, M, J)
    scale = variances * (area.to(pred.device).float()[:, None, :, None] + _AREA_EPS) * 2.0
    labelled = (target[..., 2] > 0)[:, None]  # (B, 1, M, J)
    similarity = torch.where(labelled, torch.exp(-squared / scale), 0.0).sum(dim=-1)
    count = labelled.sum(dim=-1)
    return 1.0 - similarity / count.clamp(min=1)


def keypoint_l1_cost(pred_keypoints: Tensor, target_keypoints: Tensor) -> Tensor:
    """Mean L1 distance over each target's labelled keypoints.

    ``cost[b, n, m] = sum_j [v_j > 0] (|x_nj - x_mj| + |y_nj - y_mj|) / max(1, #labelled)``;
    a target with no labelled keypoint costs 0 against every prediction.

    Args:
        pred_keypoints (Tensor[B, N, J, 2] or Tensor[B, N, 2 * J]): predicted ``(x, y)``.
        target_keypoints (Tensor[B, M, J, 3] or Tensor[B, M, 3 * J]): target ``(x, y, v)``.

    Returns:
        Tensor[B, N, M] float32, >= 0.

    Example:
        >>> target = torch.tensor([[[[1.0, 1.0, 2.0], [5.0, 5.0, 1.0], [9.0, 9.0, 0.0]]]])
        >>> pred = torch.tensor([[[[1.5, 1.0], [5.0, 4.0], [0.0, 0.0]]]])
        >>> keypoint_l1_cost(pred, target)  # (0.5 + 1.0) / 2 labelled keypoints
        tensor([[[0.7500]]])
    """
    pred, target = _check_keypoints("keypoint_l1_cost", pred_keypoints, target_keypoints)
    diff = (pred[:, :, None, :, :2] - target[:, None, :, :, :2]).abs().sum(dim=-1)  # (B, N, M, J)
    labelled = (target[..., 2] > 0)[:, None]
    total = torch.where(labelled, diff, 0.0).sum(dim=-1)
    return total / labelled.sum(dim=-1).clamp(min=1)


class OKSCost(Cost):
    """``1 - OKS`` on ``outputs[key]`` and the targets' keypoints; see :func:`oks_cost`.

    Args:
        sigmas (sequence of J floats, optional): per-keypoint constants; default COCO's 17.
        key (str): the outputs entry with the predicted keypoints (default ``pred_keypoints``).
        target_key (str): the target entry with ``(x, y, v)`` keypoints (default ``keypoints``).
        area_key (str or None): the target entry with the areas (default ``area``); ``None``
            uses the area of the target box, ``w * h`` of ``boxes`` (cxcywh), which is in the
            keypoints' units only when both are normalised (or both in pixels).

    Example:
        >>> from hybridmatch import OKSCost
        >>> target = torch.rand(1, 1, 17, 2)
        >>> keypoints = torch.cat([target, torch.full((1, 1, 17, 1), 2.0)], dim=-1)   # all visible
        >>> OKSCost()({"pred_keypoints": target}, {"keypoints": keypoints, "area": torch.tensor([[0.1]])})  # 1 - OKS
        tensor([[[0.]]])
    """

    def __init__(
        self,
        sigmas: Sequence[float] | None = None,
        *,
        key: str = "pred_keypoints",
        target_key: str = "keypoints",
        area_key: str | None = "area",
    ) -> None:
        self.sigmas = None if sigmas is None else tuple(float(s) for s in _sigmas("OKSCost", sigmas, None, "cpu"))
        self.key = key
        self.target_key = target_key
        self.area_key = area_key
        self.output_keys = (key,)
        self.target_keys = (target_key, area_key if area_key is not None else "boxes")

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        super().check(outputs, targets)
        pred, target = _check_keypoints(
            "OKSCost", read_output(outputs, self.key, self), read_target(targets, self.target_key, self)
        )
        _sigmas("OKSCost", self.sigmas, target.shape[2], "cpu")

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        if self.area_key is None:
            boxes = read_target(targets, "boxes", self)
            area = boxes[..., 2] * boxes[..., 3]
        else:
            area = read_target(targets, self.area_key, self)
        return oks_cost(outputs[self.key], read_target(targets, self.target_key, self), area, self.sigmas)

    def __repr__(self) -> str:
        parts = [f"sigmas={self.sigmas!r}"] if self.sigmas is not None else []
        parts += [
            key_repr(self.key, "pred_keypoints"),
            key_repr(self.target_key, "keypoints", "target_key"),
            "" if self.area_key == "area" else f"area_key={self.area_key!r}",
        ]
        return f"OKSCost({', '.join(p for p in parts if p)})"


class KeypointL1Cost(Cost):
    """Visibility-masked mean L1 on ``outputs[key]``; see :func:`keypoint_l1_cost`.

    Args:
        key (str): the outputs entry with the predicted keypoints (default ``pred_keypoints``).
        target_key (str): the target entry with ``(x, y, v)`` keypoints (default ``keypoints``).

    Example:
        >>> from hybridmatch import KeypointL1Cost
        >>> pred = torch.tensor([[[[0.5, 0.5], [0.6, 0.6]]]])                    # (B, N, J, 2)
        >>> target = torch.tensor([[[[0.5, 0.5, 2.0], [0.7, 0.6, 2.0]]]])        # (B, M, J, 3): x, y, visibility
        >>> KeypointL1Cost()({"pred_keypoints": pred}, {"keypoints": target})
        tensor([[[0.0500]]])
    """

    def __init__(self, *, key: str = "pred_keypoints", target_key: str = "keypoints") -> None:
        self.key = key
        self.target_key = target_key
        self.output_keys = (key,)
        self.target_keys = (target_key,)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        return keypoint_l1_cost(outputs[self.key], read_target(targets, self.target_key, self))

    def __repr__(self) -> str:
        parts = [key_repr(self.key, "pred_keypoints"), key_repr(self.target_key, "keypoints", "target_key")]
        return f"KeypointL1Cost({', '.join(p for p in parts if p)})"


def _check_keypoints(function: str, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Reshape flat COCO layouts and return float32 ``(B, N, J, 2)`` and ``(B, M, J, 3)``."""
    if target.ndim == 3 and target.shape[-1] % 3 == 0:
        target = target.reshape(*target.shape[:2], -1, 3)
    if target.ndim != 4 or target.shape[-1] != 3:
        raise ShapeError(
            f"{function}: target keypoints must have shape (B, M, J, 3) (x, y, visibility) or "
            f"COCO's flat (B, M, 3 * J), got {shape_of(target)}"
        )
    num_joints = target.shape[2]
    if pred.ndim == 3 and pred.shape[-1] == 2 * num_joints:
        pred = pred.reshape(*pred.shape[:2], num_joints, 2)
    if pred.ndim != 4 or pred.shape[-1] not in (2, 3):
        raise ShapeError(
            f"{function}: predicted keypoints must have shape (B, N, J, 2) or (B, N, 2 * J), got "
            f"{shape_of(pred)}"
        )
    if pred.shape[2] != num_joints:
        raise ShapeError(
            f"{function}: predictions have J = {pred.shape[2]} keypoints but the targets have "
            f"J = {num_joints}; both must use one keypoint layout"
        )
    check_same_batch(function, "predicted keypoints", pred, "target keypoints", target)
    return pred[..., :2].float(), target.float()


def _squared_distances(pred: Tensor, target: Tensor) -> Tensor:
    """``(B, N, J, 2)`` and ``(B, M, J, 3)`` -> squared distances ``(B, N, M, J)``."""
    diff = pred[:, :, None, :, :] - target[:, None, :, :, :2]
    return diff.square().sum(dim=-1)


def _sigmas(
    owner: str, sigmas: Sequence[float] | Tensor | None, num_joints: int | None, device: Any
) -> Tensor:
    if sigmas is None:
        if num_joints is not None and num_joints != len(COCO_KEYPOINT_SIGMAS):
            raise ConfigurationError(
                f"{owner}: the targets have J = {num_joints} keypoints but the default sigmas are "
                f"COCO's 17; pass sigmas= with {num_joints} values (one per keypoint)"
            )
        sigmas = COCO_KEYPOINT_SIGMAS
    values = torch.as_tensor(sigmas, dtype=torch.float32, device=device).flatten()
    if num_joints is not None and values.numel() != num_joints:
        raise ConfigurationError(
            f"{owner}: sigmas has {values.numel()} values but the keypoints have J = {num_joints}; "
            f"pass one sigma per keypoint"
        )
    if not bool(torch.isfinite(values).all()) or bool((values <= 0).any()):
        raise ConfigurationError(f"{owner}: sigmas must be finite and > 0, got {values.tolist()}")
    return values
