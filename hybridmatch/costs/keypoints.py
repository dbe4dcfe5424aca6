"""Keypoint costs for pose DETRs (PETR, ED-Pose): 1 - OKS and visibility-masked L1.

Keypoints follow COCO: a target holds ``J`` triples ``(x, y, v)`` with ``v = 0`` not
labelled, ``1`` labelled but occluded, ``2`` visible; a keypoint *counts* when ``v > 0``.
Predictions hold ``(x, y)`` per keypoint. Coordinates and the target's ``area`` must be in the
same units (pixels and pixels², or normalised and normalised²); the costs never convert.

The input contract, checked by both costs:

* layout: batched only, ``(B, N, J, 2)`` predictions and ``(B, M, J, 3)`` targets, or COCO's
  flat ``(B, N, 2 * J)`` and ``(B, M, 3 * J)`` with ``J >= 2``. A 3-D tensor whose last
  dimension is 2 (predictions) or 3 (targets) is refused: it could be the flat layout of one
  keypoint or one image's ``(N, J, 2)`` / ``(M, J, 3)`` without the batch dimension (add it
  with ``[None]``). Any floating or integer dtype; computed in float32.
* target values: ``v`` finite and ``>= 0``; ``x, y`` finite where ``v > 0`` (unlabelled
  keypoints may hold anything); ``area`` finite and ``>= 0``. Otherwise an
  :class:`~hybridmatch.errors.InvalidTargetError` names the entry (reading the targets'
  values: one device sync per call).
* predictions: any finite values; a prediction holding NaN or an infinity gets NaN cost
  against every target (its row), which the solver refuses and the matcher names.

Memory: both build a ``(B, N, M, J)`` float32 intermediate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import ConfigurationError, ShapeError
from ..validation import Arg, ValueCheck, check_reals, check_same_batch, check_tensor, check_values, nan_where_nonfinite
from ._base import Cost, Shared, key_repr, read_output, read_target, shape_of, valid_mask

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
        pred_keypoints (Tensor[B, N, J, 2] or Tensor[B, N, 2 * J]): predicted ``(x, y)``,
            finite; a ``(B, N, J, 3)`` tensor is read as ``(x, y, score)``.
        target_keypoints (Tensor[B, M, J, 3] or Tensor[B, M, 3 * J]): target ``(x, y, v)``,
            ``v`` finite and >= 0, ``x, y`` finite where ``v > 0``.
        area (Tensor[B, M]): target areas, in the coordinates' units squared; finite, >= 0.
        sigmas (sequence of J floats or Tensor[J], optional): per-keypoint constants, finite
            and > 0; default :data:`COCO_KEYPOINT_SIGMAS` (J must then be 17).

    Returns:
        Tensor[B, N, M] float32 in [0, 1]; NaN in the rows of predictions holding NaN or inf.

    Raises:
        ShapeError: a layout outside the module's contract (see above).
        InvalidTargetError: a target value outside it (negative or non-finite area, NaN
            visibility, a labelled keypoint at NaN).
        ConfigurationError: ``sigmas`` are not J finite numbers > 0.

    Example:
        >>> target = torch.tensor([[[[10.0, 10.0, 2.0], [20.0, 10.0, 0.0]]]])  # (1, 1, 2, 3)
        >>> pred = torch.tensor([[[[10.0, 10.0], [99.0, 99.0]]]])              # (1, 1, 2, 2)
        >>> oks_cost(pred, target, torch.tensor([[100.0]]), sigmas=[0.1, 0.1])  # exact on the labelled one
        tensor([[[0.]]])
    """
    pred, target = _check_keypoints("oks_cost", pred_keypoints, target_keypoints, _FUNCTION_ARGS)
    _check_area("oks_cost", area, target_keypoints, "area")
    values = _sigmas("oks_cost", sigmas, target.shape[2])
    _check_target_values("oks_cost", target_keypoints, target, area, _FUNCTION_ARGS, None)
    return _oks(pred, target, area, values)


def _oks(pred: Tensor, target: Tensor, area: Tensor, sigmas: Sequence[float]) -> Tensor:
    """1 - OKS of checked ``(B, N, J, 2)`` and ``(B, M, J, 3)`` float32 keypoints."""
    variances = (2.0 * torch.tensor(sigmas, dtype=torch.float32, device=pred.device)) ** 2  # (J,)
    squared = _squared_distances(pred, target)  # (B, N, M, J)
    scale = variances * (area.to(pred.device).float()[:, None, :, None] + _AREA_EPS) * 2.0
    labelled = (target[..., 2] > 0)[:, None]  # (B, 1, M, J)
    similarity = torch.where(labelled, torch.exp(-squared / scale), 0.0).sum(dim=-1)
    count = labelled.sum(dim=-1)
    return nan_where_nonfinite(1.0 - similarity / count.clamp(min=1), pred)


def keypoint_l1_cost(pred_keypoints: Tensor, target_keypoints: Tensor) -> Tensor:
    """Mean L1 distance over each target's labelled keypoints.

    ``cost[b, n, m] = sum_j [v_j > 0] (|x_nj - x_mj| + |y_nj - y_mj|) / max(1, #labelled)``;
    a target with no labelled keypoint costs 0 against every prediction.

    Args:
        pred_keypoints (Tensor[B, N, J, 2] or Tensor[B, N, 2 * J]): predicted ``(x, y)``, finite.
        target_keypoints (Tensor[B, M, J, 3] or Tensor[B, M, 3 * J]): target ``(x, y, v)``,
            ``v`` finite and >= 0, ``x, y`` finite where ``v > 0``.

    Returns:
        Tensor[B, N, M] float32, finite and >= 0; NaN in the rows of predictions holding
        NaN or inf.

    Raises:
        ShapeError, InvalidTargetError: as :func:`oks_cost`.

    Example:
        >>> target = torch.tensor([[[[1.0, 1.0, 2.0], [5.0, 5.0, 1.0], [9.0, 9.0, 0.0]]]])
        >>> pred = torch.tensor([[[[1.5, 1.0], [5.0, 4.0], [0.0, 0.0]]]])
        >>> keypoint_l1_cost(pred, target)  # (0.5 + 1.0) / 2 labelled keypoints
        tensor([[[0.7500]]])
    """
    pred, target = _check_keypoints("keypoint_l1_cost", pred_keypoints, target_keypoints, _FUNCTION_ARGS)
    _check_target_values("keypoint_l1_cost", target_keypoints, target, None, _FUNCTION_ARGS, None)
    return _keypoint_l1(pred, target)


def _keypoint_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean L1 of checked ``(B, N, J, 2)`` and ``(B, M, J, 3)`` float32 keypoints."""
    diff = (pred[:, :, None, :, :2] - target[:, None, :, :, :2]).abs().sum(dim=-1)  # (B, N, M, J)
    labelled = (target[..., 2] > 0)[:, None]
    total = torch.where(labelled, diff, 0.0).sum(dim=-1)
    return nan_where_nonfinite(total / labelled.sum(dim=-1).clamp(min=1), pred)


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

    images_independent = True

    def __init__(
        self,
        sigmas: Sequence[float] | None = None,
        *,
        key: str = "pred_keypoints",
        target_key: str = "keypoints",
        area_key: str | None = "area",
    ) -> None:
        self.sigmas = None if sigmas is None else _sigmas("OKSCost", sigmas, None)
        self.key = key
        self.target_key = target_key
        self.area_key = area_key
        self.output_keys = (key,)
        self.target_keys = (target_key, area_key if area_key is not None else "boxes")

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        super().check(outputs, targets)
        raw = read_target(targets, self.target_key, self)
        args = _KeypointArgs.of(self.key, self.target_key)
        pred, target = _check_keypoints("OKSCost", read_output(outputs, self.key, self), raw, args)
        area_name = f"each targets[b][{self.area_key!r}]" if self.area_key is not None else "the boxes' w * h"
        area = self._area(targets)
        _check_area("OKSCost", area, raw, area_name)
        _sigmas("OKSCost", self.sigmas, target.shape[2])
        area_arg = Arg.target("area", key=self.area_key) if self.area_key is not None else Arg.target("boxes' w * h")
        _check_target_values("OKSCost", raw, target, area, args._replace(area=area_arg), valid_mask(targets, raw))

    def _area(self, targets: Any) -> Tensor:
        if self.area_key is None:
            boxes = read_target(targets, "boxes", self)
            return boxes[..., 2] * boxes[..., 3]
        return read_target(targets, self.area_key, self)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        args = _KeypointArgs.of(self.key, self.target_key)
        pred, target = _check_keypoints("OKSCost", outputs[self.key], read_target(targets, self.target_key, self), args)
        return _oks(pred, target, self._area(targets), _sigmas("OKSCost", self.sigmas, target.shape[2]))

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

    images_independent = True

    def __init__(self, *, key: str = "pred_keypoints", target_key: str = "keypoints") -> None:
        self.key = key
        self.target_key = target_key
        self.output_keys = (key,)
        self.target_keys = (target_key,)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        super().check(outputs, targets)
        raw = read_target(targets, self.target_key, self)
        args = _KeypointArgs.of(self.key, self.target_key)
        pred, target = _check_keypoints("KeypointL1Cost", read_output(outputs, self.key, self), raw, args)
        _check_target_values("KeypointL1Cost", raw, target, None, args, valid_mask(targets, raw))

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        args = _KeypointArgs.of(self.key, self.target_key)
        pred, target = _check_keypoints(
            "KeypointL1Cost", outputs[self.key], read_target(targets, self.target_key, self), args
        )
        return _keypoint_l1(pred, target)

    def __repr__(self) -> str:
        parts = [key_repr(self.key, "pred_keypoints"), key_repr(self.target_key, "keypoints", "target_key")]
        return f"KeypointL1Cost({', '.join(p for p in parts if p)})"


class _KeypointArgs(NamedTuple):
    """How messages name the inputs: the functions' arguments, or the dict entries a cost reads."""

    pred: Arg
    target: Arg
    area: Arg

    @classmethod
    def of(cls, key: str, target_key: str) -> _KeypointArgs:
        return cls(Arg.prediction(key, key=key), Arg.target(target_key, key=target_key), Arg.target("area", key="area"))


_FUNCTION_ARGS = _KeypointArgs(Arg.prediction("pred_keypoints"), Arg.target("target_keypoints"), Arg.target("area"))


def _check_keypoints(function: str, pred: Tensor, target: Tensor, args: _KeypointArgs) -> tuple[Tensor, Tensor]:
    """The layouts of the module's contract as float32 ``(B, N, J, 2)`` and ``(B, M, J, 3)``.

    Every message names the shapes as passed.
    """
    check_tensor(pred, str(args.pred), ndim=(3, 4), layout="(B, N, J, 2) or (B, N, 2 * J)", dtype="real", where=function)
    check_tensor(target, str(args.target), ndim=(3, 4), layout="(B, M, J, 3) or (B, M, 3 * J)", dtype="real", where=function)
    for tensor, arg, width, name in ((target, args.target, 3, "(M, J, 3)"), (pred, args.pred, 2, "(N, J, 2)")):
        if tensor.ndim == 3 and tensor.shape[-1] == width:
            raise ShapeError(
                f"{function}: {arg} of shape {shape_of(tensor)} is ambiguous: one image's {name} "
                f"without the batch dimension, or the flat layout of a single keypoint; pass the "
                f"batched 4-D layout, e.g. {arg.name}[None] for one image"
            )
    if target.ndim == 3 and target.shape[-1] % 3:
        raise ShapeError(
            f"{function}: {args.target} must have shape (B, M, J, 3) (x, y, visibility) or COCO's "
            f"flat (B, M, 3 * J), got {shape_of(target)}"
        )
    if target.ndim == 4 and target.shape[-1] != 3:
        raise ShapeError(
            f"{function}: {args.target} must have shape (B, M, J, 3) (x, y, visibility), got {shape_of(target)}"
        )
    num_joints = target.shape[-1] // 3 if target.ndim == 3 else target.shape[2]
    pred_joints = pred.shape[-1] // 2 if pred.ndim == 3 else pred.shape[2]
    if (pred.ndim == 3 and pred.shape[-1] % 2) or (pred.ndim == 4 and pred.shape[-1] not in (2, 3)):
        raise ShapeError(
            f"{function}: {args.pred} must have shape (B, N, J, 2) or (B, N, 2 * J), got {shape_of(pred)}"
        )
    if pred_joints != num_joints:
        raise ShapeError(
            f"{function}: {args.pred} {shape_of(pred)} hold J = {pred_joints} keypoints but "
            f"{args.target} {shape_of(target)} hold J = {num_joints}; both must use one keypoint layout"
        )
    check_same_batch(function, str(args.pred), pred, str(args.target), target)
    # Explicit sizes: a flat tensor with no objects (M = 0) reshapes too.
    target = target.reshape(target.shape[0], target.shape[1], num_joints, 3)
    pred = pred.reshape(pred.shape[0], pred.shape[1], num_joints, pred.shape[-1] if pred.ndim == 4 else 2)
    return pred[..., :2].float(), target.float()


def _check_area(function: str, area: object, target: Tensor, name: str) -> None:
    want = tuple(target.shape[:2])
    check_tensor(area, name, ndim=2, layout=f"(B, M) = {want}", dtype="real", where=function)
    if tuple(area.shape) != want:  # type: ignore[union-attr]
        raise ShapeError(
            f"{function}: {name} must have shape (B, M) = {want} to match the target keypoints "
            f"{shape_of(target)}, got {shape_of(area)}"  # type: ignore[arg-type]
        )
    if area.device != target.device:  # type: ignore[union-attr]
        raise ShapeError(f"{function}: {name} is on {area.device} but the keypoints on {target.device}")  # type: ignore[union-attr]


def _check_target_values(
    function: str, raw: Tensor, target: Tensor, area: Tensor | None, args: _KeypointArgs, valid: Tensor | None
) -> None:
    """One scan of the targets' values (module contract); names entries in the layout passed."""
    visibility = target[..., 2]
    bad = torch.zeros_like(target, dtype=torch.bool)
    bad[..., 2] = ~torch.isfinite(visibility) | (visibility < 0)
    bad[..., :2] = ~torch.isfinite(target[..., :2]) & (visibility > 0)[..., None]
    checks = [
        ValueCheck(
            raw, args.target, "(x, y, v) with v finite and >= 0 (0 = not labelled) and x, y finite where v > 0",
            mask=bad.reshape(raw.shape), valid=valid,
            fix="check the dataset and its augmentations (NaN from a division, a flip of unlabelled points)",
        )
    ]
    if area is not None:
        checks.append(
            ValueCheck(
                area, args.area, "finite and >= 0 (the object's area in the keypoints' units squared)",
                minimum=0.0, valid=valid,
                fix="a negative area usually comes from a box with x2 < x1, inf from float16 overflow",
            )
        )
    check_values(*checks, where=function)


def _squared_distances(pred: Tensor, target: Tensor) -> Tensor:
    """``(B, N, J, 2)`` and ``(B, M, J, 3)`` -> squared distances ``(B, N, M, J)``."""
    diff = pred[:, :, None, :, :] - target[:, None, :, :, :2]
    return diff.square().sum(dim=-1)


def _sigmas(owner: str, sigmas: Sequence[float] | Tensor | None, num_joints: int | None) -> tuple[float, ...]:
    if sigmas is None:
        if num_joints is not None and num_joints != len(COCO_KEYPOINT_SIGMAS):
            raise ConfigurationError(
                f"{owner}: the targets have J = {num_joints} keypoints but the default sigmas are "
                f"COCO's 17; pass sigmas= with {num_joints} values (one per keypoint)"
            )
        return COCO_KEYPOINT_SIGMAS
    values = check_reals(sigmas, "sigmas", positive=True, where=owner, hint="one OKS constant per keypoint")
    if num_joints is not None and len(values) != num_joints:
        raise ConfigurationError(
            f"{owner}: sigmas has {len(values)} values but the keypoints have J = {num_joints}; "
            f"pass one sigma per keypoint"
        )
    return values
