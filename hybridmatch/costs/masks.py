"""Mask costs for segmentation DETRs (Mask2Former, MaskDINO): dice and sigmoid cross-entropy.

Mask2Former matches on a few thousand points per image rather than on whole masks: one set
of ``P`` points, drawn uniformly in the image, is shared by every prediction and every target
of that image, and both are read there by bilinear interpolation. The cost then never holds
anything of the masks' resolution beyond the inputs themselves: memory is ``O(B (N + M) P)``
however large the masks are. ``num_points=None`` is the exact mode instead: every pixel of the
target resolution (predictions are resized to it bilinearly when the sizes differ), for small
masks.

Points are ``(x, y)`` in ``[0, 1]``, read as ``grid_sample(..., align_corners=False,
padding_mode="border")`` reads them: pixel ``i`` covers ``[i / W, (i + 1) / W)`` and points
within half a pixel of the border take the border pixel's value, so every pixel has the same
weight (with zero padding, Mask2Former's choice, border pixels count half).

With ``p = sigmoid(logit)`` at each point and ``t`` the target's value there (0 or 1 for
binary masks), the formulas are Mask2Former's:

* dice: ``1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)``, in [0, 1];
* sigmoid cross-entropy: ``mean over points of BCE(logit, t)``, >= 0.

Both are finite for empty target masks and for all-zero (or extreme) logits.

The input contract, checked by every function and cost here:

* layout: ``(B, N, H, W)`` floating logits and ``(B, M, H', W')`` target masks (bool,
  integer or floating), the same B on one device, ``H, W >= 1`` for a tensor that holds
  masks; points ``(B, P, 2)`` floating.
* target values in [0, 1] (bool, or 0/1 integers, or soft floats): a value outside, such
  as a uint8 mask stored as 0/255, raises :class:`~hybridmatch.errors.InvalidTargetError`
  naming the image and target (the values read at the points are scanned: one device
  sync per call).
* points finite and in [0, 1] (a :class:`~hybridmatch.errors.ShapeError` otherwise).
* logits: any finite values; a query whose logits are NaN or infinite at a point gets NaN
  cost against every target (its row), which the solver refuses and the matcher names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError
from ..validation import (
    Arg,
    ValueCheck,
    check_int,
    check_same_batch,
    check_tensor,
    check_values,
    nan_where_nonfinite,
)
from ._base import Cost, Shared, key_repr, read_output, read_target, shape_of, valid_mask

__all__ = [
    "DEFAULT_NUM_POINTS",
    "sample_points",
    "point_sample",
    "mask_points",
    "mask_dice_cost",
    "mask_bce_cost",
    "dice_cost_on_points",
    "bce_cost_on_points",
    "MaskDiceCost",
    "MaskBCECost",
]

#: Mask2Former's points per image for matching, 112 * 112.
DEFAULT_NUM_POINTS = 12544


def sample_points(
    batch: int,
    num_points: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``num_points`` uniform random points per image, ``Tensor[B, P, 2]`` float32 ``(x, y)`` in [0, 1).

    Args:
        batch (int): ``B``.
        num_points (int): ``P``.
        device: where the points live.
        generator (torch.Generator, optional): the random stream; the points are drawn on the
            generator's device and moved to ``device``.

    Example:
        >>> from hybridmatch.costs import sample_points
        >>> points = sample_points(2, 100, generator=torch.Generator().manual_seed(0))
        >>> points.shape, bool(((points >= 0) & (points <= 1)).all())
        (torch.Size([2, 100, 2]), True)
    """
    where = generator.device if generator is not None else torch.device(device)
    points = torch.rand(batch, num_points, 2, generator=generator, device=where)
    return points.to(device)


def point_sample(masks: Tensor, points: Tensor) -> Tensor:
    """Read ``masks`` at ``points`` by bilinear interpolation, in float32.

    Equal to ``F.grid_sample(masks.float(), 2 * points[:, None] - 1, align_corners=False,
    padding_mode="border")[:, :, 0]``, but gathers the four neighbours first and converts only
    those to float32, so no tensor of the masks' resolution is created (bool and uint8 masks
    stay as they are).

    Args:
        masks (Tensor[B, K, H, W]): any real dtype (bool, uint8, float16, float32, ...);
            ``H, W >= 1`` when ``K > 0``.
        points (Tensor[B, P, 2]): ``(x, y)``, finite and in [0, 1].

    Returns:
        Tensor[B, K, P] float32.

    Raises:
        ShapeError: a shape, dtype or device outside that, or a point that is not finite
            or not in [0, 1] (reads the points: one device sync).

    Example:
        >>> from hybridmatch.costs import point_sample
        >>> masks = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])          # (B, Q, H, W)
        >>> point_sample(masks, torch.tensor([[[0.25, 0.25], [0.75, 0.75]]]))   # (B, P, 2) x, y in [0, 1]
        tensor([[[0., 3.]]])
    """
    _check_points("point_sample", masks, points)
    return _point_sample(masks, points)


def _point_sample(masks: Tensor, points: Tensor) -> Tensor:
    batch, channels, height, width = masks.shape
    num_points = points.shape[1]
    if channels == 0:
        return torch.zeros(batch, 0, num_points, device=masks.device)
    x = (points[..., 0].float() * width - 0.5).clamp(0, width - 1)  # (B, P) pixel coordinates
    y = (points[..., 1].float() * height - 0.5).clamp(0, height - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    wx, wy = (x - x0)[:, None, :], (y - y0)[:, None, :]  # (B, 1, P)
    flat = masks.reshape(batch, channels, height * width)

    def corner(row: Tensor, column: Tensor) -> Tensor:
        index = (row * width + column)[:, None, :].expand(batch, channels, num_points)
        return flat.gather(2, index).float()

    top = corner(y0, x0) * (1 - wx) + corner(y0, x1) * wx
    bottom = corner(y1, x0) * (1 - wx) + corner(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def mask_points(
    pred_masks: Tensor,
    target_masks: Tensor,
    num_points: int | None = DEFAULT_NUM_POINTS,
    *,
    points: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Read predictions and targets at one shared point set per image.

    Args:
        pred_masks (Tensor[B, N, H, W]): mask logits.
        target_masks (Tensor[B, M, H', W']): target masks (bool, integer or float in [0, 1]).
        num_points (int or None): ``P`` points per image; ``None`` reads every pixel of the
            target resolution (the exact mode; predictions are resized to ``(H', W')``
            bilinearly when the sizes differ).
        points (Tensor[B, P, 2], optional): the points, ``(x, y)`` in [0, 1]; drawn
            uniformly when not given.
        generator (torch.Generator, optional): the random stream for drawing the points.

    Returns:
        ``(Tensor[B, N, P] float32 logits, Tensor[B, M, P] float32 target values)``.

    Raises:
        ShapeError: inputs outside the module's contract (layout, points).
        InvalidTargetError: a target value read at a point is outside [0, 1].

    Example:
        >>> from hybridmatch.costs import mask_points
        >>> pred, target = mask_points(torch.rand(2, 5, 16, 16), torch.rand(2, 3, 32, 32), num_points=100,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> pred.shape, target.shape                 # the same 100 points for both, per image
        (torch.Size([2, 5, 100]), torch.Size([2, 3, 100]))
    """
    _check_masks("mask_points", pred_masks, target_masks)
    if points is not None:
        _check_points("mask_points", target_masks, points)
    elif num_points is not None:
        check_int(num_points, "num_points", minimum=1, where="mask_points", hint="or None for every pixel")
    sampled = _sample(pred_masks, target_masks, num_points, points, generator)
    _check_sampled_targets("mask_points", sampled[1], Arg.target("target_masks"), None)
    return sampled


def _sample(
    pred_masks: Tensor,
    target_masks: Tensor,
    num_points: int | None,
    points: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """:func:`mask_points` on checked inputs."""
    batch = pred_masks.shape[0]
    if num_points is None and points is None:
        size = tuple(target_masks.shape[-2:])
        if size[0] * size[1] == 0:  # only when there are no target masks: nothing to read
            return pred_masks.new_zeros(batch, pred_masks.shape[1], 0).float(), target_masks.flatten(2).float()
        logits = pred_masks
        if tuple(logits.shape[-2:]) != size and logits.shape[1] > 0:
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        if tuple(logits.shape[-2:]) != size:  # no predictions to resize
            logits = logits.new_zeros(batch, 0, *size)
        return logits.flatten(2).float(), target_masks.flatten(2).float()
    if points is None:
        points = sample_points(batch, int(num_points), device=pred_masks.device, generator=generator)  # type: ignore[arg-type]
    points = points.to(pred_masks.device)
    return _point_sample(pred_masks, points), _point_sample(target_masks, points)


def dice_cost_on_points(pred_logits: Tensor, targets: Tensor) -> Tensor:
    """Mask2Former's dice cost on sampled values: ``Tensor[B, N, P]`` logits, ``Tensor[B, M, P]`` targets.

    Args:
        pred_logits (Tensor[B, N, P]): floating logits at the points.
        targets (Tensor[B, M, P]): target values at the same points, in [0, 1].

    Returns:
        Tensor[B, N, M] float32 in [0, 1]: ``1 - (2 * p.t + 1) / (sum p + sum t + 1)``;
        NaN in the rows of queries with a non-finite logit.

    Raises:
        ShapeError: the shapes do not fit. InvalidTargetError: a target value outside [0, 1].

    Example:
        >>> from hybridmatch.costs import dice_cost_on_points
        >>> pred = torch.tensor([[[10.0, -10.0]]])
        >>> target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> dice_cost_on_points(pred, target).round(decimals=2)   # 1 - (2 * 0 + 1) / (1 + 1 + 1)
        tensor([[[0.0000, 0.6700]]])
    """
    _check_sampled("dice_cost_on_points", pred_logits, targets)
    return _dice(pred_logits, targets)


def _dice(pred_logits: Tensor, targets: Tensor) -> Tensor:
    probs = pred_logits.float().sigmoid()
    targets = targets.float()
    numerator = 2 * torch.bmm(probs, targets.transpose(1, 2))
    denominator = probs.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
    return nan_where_nonfinite(1 - (numerator + 1) / (denominator + 1), pred_logits)


def bce_cost_on_points(pred_logits: Tensor, targets: Tensor) -> Tensor:
    """Mask2Former's sigmoid cross-entropy cost on sampled values, averaged over the ``P`` points.

    Args:
        pred_logits (Tensor[B, N, P]): floating logits at the points.
        targets (Tensor[B, M, P]): target values at the same points, in [0, 1].

    Returns:
        Tensor[B, N, M] float32, finite and >= 0; NaN in the rows of queries with a
        non-finite logit.

    Raises:
        ShapeError: the shapes do not fit. InvalidTargetError: a target value outside [0, 1].

    Example:
        >>> from hybridmatch.costs import bce_cost_on_points
        >>> pred = torch.tensor([[[10.0, -10.0]]])             # (B, N, P) logits at P points
        >>> target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B, M, P) target values
        >>> bce_cost_on_points(pred, target).round(decimals=3)   # mean BCE over the points
        tensor([[[ 0., 10.]]])
    """
    _check_sampled("bce_cost_on_points", pred_logits, targets)
    return _bce(pred_logits, targets)


def _bce(pred_logits: Tensor, targets: Tensor) -> Tensor:
    logits = pred_logits.float()
    targets = targets.float()
    positive = F.softplus(-logits)  # BCE against 1
    negative = F.softplus(logits)  # BCE against 0
    total = torch.bmm(positive, targets.transpose(1, 2)) + torch.bmm(negative, (1 - targets).transpose(1, 2))
    return nan_where_nonfinite(total / max(logits.shape[-1], 1), pred_logits)


def mask_dice_cost(
    pred_masks: Tensor,
    target_masks: Tensor,
    num_points: int | None = DEFAULT_NUM_POINTS,
    *,
    points: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dice cost between every predicted and every target mask, on shared sampled points.

    See the module docstring for the formula and :func:`mask_points` for the arguments.

    Returns:
        Tensor[B, N, M] float32 in [0, 1].

    Example:
        >>> pred = torch.full((1, 1, 4, 4), -20.0); pred[0, 0, :2] = 20.0   # top half
        >>> target = torch.zeros(1, 2, 4, 4, dtype=torch.bool); target[0, 0, :2] = True
        >>> mask_dice_cost(pred, target, num_points=None)  # exact: 1 - 17/17 and 1 - 1/9
        tensor([[[0.0000, 0.8889]]])
    """
    return _dice(*mask_points(pred_masks, target_masks, num_points, points=points, generator=generator))


def mask_bce_cost(
    pred_masks: Tensor,
    target_masks: Tensor,
    num_points: int | None = DEFAULT_NUM_POINTS,
    *,
    points: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sigmoid cross-entropy cost between every predicted and every target mask, on shared points.

    See the module docstring for the formula and :func:`mask_points` for the arguments.

    Returns:
        Tensor[B, N, M] float32, >= 0.

    Example:
        >>> from hybridmatch.costs import mask_bce_cost
        >>> masks = torch.zeros(1, 2, 8, 8); masks[0, 0, :, :4] = 1; masks[0, 1, :, 4:] = 1
        >>> cost = mask_bce_cost((masks * 2 - 1) * 10, masks, num_points=None)
        >>> cost.shape, bool(cost[0, 1, 1] < cost[0, 1, 0])
        (torch.Size([1, 2, 2]), True)
    """
    return _bce(*mask_points(pred_masks, target_masks, num_points, points=points, generator=generator))


class _MaskCost(Cost):
    def __init__(self, num_points: int | None, seed: int | None, key: str, target_key: str) -> None:
        if num_points is not None:
            num_points = check_int(num_points, "num_points", minimum=1, where=type(self).__name__, hint="or None for every pixel")
        self.num_points = num_points
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0, where=type(self).__name__)
        self._generator = None if seed is None else torch.Generator().manual_seed(self.seed)
        self.key = key
        self.target_key = target_key
        self.output_keys = (key,)
        self.target_keys = (target_key,)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        pred = read_output(outputs, self.key, self)
        target = read_target(targets, self.target_key, self)
        _check_masks(type(self).__name__, pred, target)

    def _points(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> tuple[Tensor, Tensor]:
        # Every mask cost of one call with the same inputs and num_points reads the same points:
        # the first draws them (from its generator), the others reuse the samples.
        slot = ("mask_points", self.key, self.target_key, self.num_points)
        if slot not in shared:
            target = read_target(targets, self.target_key, self)
            sampled = _sample(outputs[self.key], target, self.num_points, None, self._generator)
            arg = Arg.target(self.target_key, key=self.target_key)
            _check_sampled_targets(type(self).__name__, sampled[1], arg, valid_mask(targets, target))
            shared[slot] = sampled
        return shared[slot]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        parts = [
            "" if self.num_points == DEFAULT_NUM_POINTS else f"num_points={self.num_points!r}",
            "" if self.seed is None else f"seed={self.seed}",
            key_repr(self.key, "pred_masks"),
            key_repr(self.target_key, "masks", "target_key"),
        ]
        return f"{type(self).__name__}({', '.join(p for p in parts if p)})"


class MaskDiceCost(_MaskCost):
    """Dice cost on ``outputs[key]`` mask logits and the targets' masks; see :func:`mask_dice_cost`.

    Args:
        num_points (int or None): points per image (Mask2Former: 12544); ``None`` for every pixel.
        seed (int, optional): seeds this cost's own point stream (it advances call by call);
            without it the points come from torch's global generator on the masks' device.
        key (str): the outputs entry with the mask logits ``(B, N, H, W)`` (default ``pred_masks``).
        target_key (str): the target entry with the masks ``(M, H', W')`` (default ``masks``).

    Example:
        >>> from hybridmatch import MaskDiceCost
        >>> masks = torch.zeros(1, 2, 8, 8); masks[0, 0, :, :4] = 1; masks[0, 1, :, 4:] = 1
        >>> logits = (masks * 2 - 1) * 10
        >>> MaskDiceCost(num_points=None)({"pred_masks": logits}, {"masks": masks}).round(decimals=2)
        tensor([[[0.0000, 0.9800],
                 [0.9800, 0.0000]]])
    """

    def __init__(
        self,
        num_points: int | None = DEFAULT_NUM_POINTS,
        *,
        seed: int | None = None,
        key: str = "pred_masks",
        target_key: str = "masks",
    ) -> None:
        super().__init__(num_points, seed, key, target_key)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        return _dice(*self._points(outputs, targets, shared))


class MaskBCECost(_MaskCost):
    """Sigmoid cross-entropy cost on ``outputs[key]`` and the targets' masks; see :func:`mask_bce_cost`.

    Args: as :class:`MaskDiceCost`.

    Example:
        >>> from hybridmatch import MaskBCECost
        >>> masks = torch.zeros(1, 2, 8, 8); masks[0, 0, :, :4] = 1; masks[0, 1, :, 4:] = 1
        >>> logits = (masks * 2 - 1) * 10                                       # confident, correct
        >>> cost = MaskBCECost(num_points=None)({"pred_masks": logits}, {"masks": masks})  # every pixel
        >>> cost.shape, bool(cost[0, 0, 0] < cost[0, 0, 1])
        (torch.Size([1, 2, 2]), True)
    """

    def __init__(
        self,
        num_points: int | None = DEFAULT_NUM_POINTS,
        *,
        seed: int | None = None,
        key: str = "pred_masks",
        target_key: str = "masks",
    ) -> None:
        super().__init__(num_points, seed, key, target_key)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        return _bce(*self._points(outputs, targets, shared))


def _check_masks(function: str, pred: Tensor, target: Tensor) -> None:
    check_tensor(pred, "predicted masks", ndim=4, layout="(B, N, H, W) logits", dtype="floating", where=function)
    check_tensor(
        target, "target masks", ndim=4, layout="(B, M, H, W) once padded ((M, H, W) per image)",
        dtype="real", where=function,
    )
    check_same_batch(function, "predicted masks", pred, "target masks", target)
    _check_not_empty(function, "predicted masks", pred)
    _check_not_empty(function, "target masks", target)


def _check_not_empty(function: str, name: str, masks: Tensor) -> None:
    if masks.shape[1] > 0 and masks.shape[2] * masks.shape[3] == 0:
        raise ShapeError(
            f"{function}: {name} of shape {shape_of(masks)} have no pixels (H or W is 0); give "
            "every mask at least one pixel"
        )


def _check_points(function: str, masks: Tensor, points: Tensor) -> None:
    """Metadata of ``masks (B, K, H, W)`` and ``points (B, P, 2)``, and the points' values."""
    check_tensor(masks, "masks", ndim=4, layout="(B, K, H, W)", dtype="real", where=function)
    check_tensor(points, "points", ndim=3, last=2, layout="(B, P, 2)", dtype="floating", where=function)
    check_same_batch(function, "masks", masks, "points", points)
    _check_not_empty(function, "masks", masks)
    check_values(
        ValueCheck(points, Arg("points"), "finite (x, y) in [0, 1]", minimum=0.0, maximum=1.0),
        where=function,
    )


def _check_sampled(function: str, pred_logits: Tensor, targets: Tensor) -> None:
    check_tensor(pred_logits, "pred_logits", ndim=3, layout="(B, N, P)", dtype="floating", where=function)
    check_tensor(targets, "targets", ndim=3, layout="(B, M, P)", dtype="real", where=function)
    check_same_batch(function, "pred_logits", pred_logits, "targets", targets)
    if pred_logits.shape[2] != targets.shape[2]:
        raise ShapeError(
            f"{function}: pred_logits {shape_of(pred_logits)} and targets {shape_of(targets)} hold "
            "different numbers of points P; read both at the same points (mask_points)"
        )
    _check_sampled_targets(function, targets, Arg.target("targets"), None)


def _check_sampled_targets(function: str, values: Tensor, arg: Arg, valid: Tensor | None) -> None:
    """Target values read at the points must be in [0, 1]; names the image and target."""
    check_values(
        ValueCheck(
            values, arg, "in [0, 1] (bool, 0/1 integers or soft floats)", minimum=0.0, maximum=1.0,
            valid=valid, index_dims=2, fix="a uint8 mask stored as 0/255 needs masks > 0 (or / 255)",
        ),
        where=function,
    )
