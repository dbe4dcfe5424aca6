"""Bad input never passes silently: one property test per public cost.

Each cost states a contract per input (range, dtype, layout) in its docstring. For every
declared input, hypothesis breaks one entry or the whole tensor in one way (NaN, +-inf, a
negative value, another dtype, another layout, no objects) and the test asserts one of:

* a :class:`~hybridmatch.errors.HybridMatchError`;
* for a NaN or infinite entry of a prediction (target), NaN in that query's row (target's
  column) of the cost: the solver refuses NaN and the matcher names the input. Entries a
  cost documents as not read (the ``x, y`` of an unlabelled keypoint) may instead leave a
  finite cost;
* every other entry of the cost finite and inside the documented range.

The reference is the documented range, stated here once per cost, not the code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridmatch import (
    ClassIoUQuality,
    FocalClassCost,
    GIoUCost,
    HybridMatchError,
    IoUQuality,
    KeypointL1Cost,
    L1BoxCost,
    MaskBCECost,
    MaskDiceCost,
    OKSCost,
    SoftmaxClassCost,
)
from hybridmatch.costs import (
    bce_cost_on_points,
    dice_cost_on_points,
    focal_class_cost,
    giou_cost,
    keypoint_l1_cost,
    l1_box_cost,
    mask_bce_cost,
    mask_dice_cost,
    oks_cost,
    softmax_class_cost,
)

Inputs = dict[str, torch.Tensor]
# -log(1e-8): the largest focal term (classes.py's eps).
FOCAL_BOUND = -math.log(1e-8) + 1e-3
J, C, SIDE, P = 3, 3, 5, 7  # keypoints, classes, mask side, points


def _boxes(generator: torch.Generator, batch: int, count: int) -> torch.Tensor:
    centre = torch.rand(batch, count, 2, generator=generator)
    size = 0.05 + 0.5 * torch.rand(batch, count, 2, generator=generator)
    return torch.cat([centre, size], dim=-1)


def _keypoints(generator: torch.Generator, batch: int, count: int) -> torch.Tensor:
    xy = torch.rand(batch, count, J, 2, generator=generator)
    visibility = torch.randint(0, 3, (batch, count, J, 1), generator=generator).float()
    return torch.cat([xy, visibility], dim=-1)


def _valid(generator: torch.Generator, batch: int, queries: int, targets: int) -> dict[str, torch.Tensor]:
    """One valid value of every input any cost here reads; (B, N, ...) or (B, M, ...)."""
    return {
        "pred_boxes": _boxes(generator, batch, queries),
        "boxes": _boxes(generator, batch, targets),
        "pred_logits": torch.randn(batch, queries, C, generator=generator),
        "labels": torch.randint(0, C - 1, (batch, targets), generator=generator),  # softmax: C - 1 classes
        "pred_keypoints": torch.rand(batch, queries, J, 2, generator=generator),
        "keypoints": _keypoints(generator, batch, targets),
        "area": 0.01 + torch.rand(batch, targets, generator=generator),
        "pred_masks": 4 * torch.randn(batch, queries, SIDE, SIDE, generator=generator),
        "masks": torch.rand(batch, targets, SIDE, SIDE, generator=generator) > 0.5,
        "point_logits": 4 * torch.randn(batch, queries, P, generator=generator),
        "point_targets": (torch.rand(batch, targets, P, generator=generator) > 0.5).float(),
    }


def _unread_keypoint(inputs: Inputs, name: str, index: tuple[int, ...]) -> bool:
    """The x or y of an unlabelled target keypoint, which the keypoint costs never read."""
    return name == "keypoints" and len(index) == 4 and index[3] < 2 and float(inputs["keypoints"][index[:3] + (2,)]) <= 0


@dataclass
class Spec:
    """A public cost: the inputs it declares, how it is called, its documented range."""

    name: str
    predictions: tuple[str, ...]
    targets: tuple[str, ...]
    call: Callable[[Inputs], torch.Tensor]
    low: float
    high: float
    not_read: Callable[[Inputs, str, tuple[int, ...]], bool] = field(default=lambda inputs, name, index: False)


def _cost_call(cost, targets: tuple[str, ...]) -> Callable[[Inputs], torch.Tensor]:
    def call(inputs: Inputs) -> torch.Tensor:
        outputs = {key: inputs[key] for key in cost.output_keys}
        return cost(outputs, {key: inputs[key] for key in targets})

    return call


def _class(cost, predictions: tuple[str, ...], targets: tuple[str, ...], low: float, high: float, **extra) -> Spec:
    return Spec(type(cost).__name__, predictions, targets, _cost_call(cost, targets), low, high, **extra)


SPECS = [
    # boxes: any finite values (negative sizes are degenerate boxes).
    Spec("l1_box_cost", ("pred_boxes",), ("boxes",), lambda x: l1_box_cost(x["pred_boxes"], x["boxes"]), 0.0, math.inf),
    Spec("giou_cost", ("pred_boxes",), ("boxes",), lambda x: giou_cost(x["pred_boxes"], x["boxes"]), -1.0, 1.0),
    _class(L1BoxCost(), ("pred_boxes",), ("boxes",), 0.0, math.inf),
    _class(GIoUCost(), ("pred_boxes",), ("boxes",), -1.0, 1.0),
    # classes: labels outside [0, C) read the nearest class in the functions, raise in the costs.
    Spec(
        "softmax_class_cost", ("pred_logits",), ("labels",),
        lambda x: softmax_class_cost(x["pred_logits"], x["labels"]), -1.0, 0.0,
    ),
    Spec(
        "focal_class_cost", ("pred_logits",), ("labels",),
        lambda x: focal_class_cost(x["pred_logits"], x["labels"]), -0.75 * FOCAL_BOUND, 0.25 * FOCAL_BOUND,
    ),
    _class(SoftmaxClassCost(), ("pred_logits",), ("labels",), -1.0, 0.0),
    _class(FocalClassCost(), ("pred_logits",), ("labels",), -0.75 * FOCAL_BOUND, 0.25 * FOCAL_BOUND),
    # keypoints
    Spec(
        "oks_cost", ("pred_keypoints",), ("keypoints", "area"),
        lambda x: oks_cost(x["pred_keypoints"], x["keypoints"], x["area"], sigmas=[0.1] * J), 0.0, 1.0,
        not_read=_unread_keypoint,
    ),
    Spec(
        "keypoint_l1_cost", ("pred_keypoints",), ("keypoints",),
        lambda x: keypoint_l1_cost(x["pred_keypoints"], x["keypoints"]), 0.0, math.inf, not_read=_unread_keypoint,
    ),
    _class(OKSCost(sigmas=[0.1] * J), ("pred_keypoints",), ("keypoints", "area"), 0.0, 1.0, not_read=_unread_keypoint),
    _class(KeypointL1Cost(), ("pred_keypoints",), ("keypoints",), 0.0, math.inf, not_read=_unread_keypoint),
    # masks, in the exact mode (every pixel read) and on points
    Spec(
        "mask_dice_cost", ("pred_masks",), ("masks",),
        lambda x: mask_dice_cost(x["pred_masks"], x["masks"], num_points=None), 0.0, 1.0,
    ),
    Spec(
        "mask_bce_cost", ("pred_masks",), ("masks",),
        lambda x: mask_bce_cost(x["pred_masks"], x["masks"], num_points=None), 0.0, math.inf,
    ),
    _class(MaskDiceCost(num_points=None), ("pred_masks",), ("masks",), 0.0, 1.0),
    _class(MaskBCECost(num_points=None), ("pred_masks",), ("masks",), 0.0, math.inf),
    Spec(
        "dice_cost_on_points", ("point_logits",), ("point_targets",),
        lambda x: dice_cost_on_points(x["point_logits"], x["point_targets"]), 0.0, 1.0,
    ),
    Spec(
        "bce_cost_on_points", ("point_logits",), ("point_targets",),
        lambda x: bce_cost_on_points(x["point_logits"], x["point_targets"]), 0.0, math.inf,
    ),
    # qualities (higher is better)
    _class(IoUQuality(), ("pred_boxes",), ("boxes",), 0.0, 1.0),
    _class(ClassIoUQuality(), ("pred_boxes", "pred_logits"), ("boxes", "labels"), 0.0, 1.0),
]

KINDS = ["nan", "inf", "-inf", "negative", "dtype", "layout", "empty"]
LAYOUTS = ["drop_last_column", "add_dimension", "drop_batch", "swap_last_two"]
DTYPES = [torch.bool, torch.int64, torch.float16, torch.complex64]


def _corrupt(data: st.DataObject, tensor: torch.Tensor, kind: str) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """``tensor`` broken one way; the index of the entry set to a non-finite value, if one was."""
    if kind == "dtype":
        return tensor.to(data.draw(st.sampled_from(DTYPES), label="dtype")), None
    if kind == "layout":
        layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
        if layout == "drop_last_column":
            return tensor[..., :-1], None
        if layout == "add_dimension":
            return tensor.unsqueeze(-1), None
        if layout == "drop_batch":
            return tensor[0], None
        return tensor.transpose(-1, -2), None
    if kind == "empty":
        return tensor[:, :0], None
    index = tuple(data.draw(st.integers(0, size - 1), label="index") for size in tensor.shape)
    broken = tensor.clone() if tensor.is_floating_point() else tensor.float()
    if kind == "negative":
        if not tensor.is_floating_point() and tensor.dtype != torch.bool:
            broken = tensor.clone()  # integer labels: a negative class id
            broken[index] = -data.draw(st.integers(1, 5), label="negative")
            return broken, None
        broken[index] = -data.draw(st.floats(1e-6, 1e6), label="negative")
        return broken, None
    broken[index] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind]
    return broken, index


def _check(spec: Spec, inputs: Inputs, name: str, nonfinite_at: tuple[int, ...] | None) -> None:
    try:
        cost = spec.call(inputs)
    except HybridMatchError:
        return  # a library error, naming the input
    assert isinstance(cost, torch.Tensor) and cost.dtype == torch.float32 and cost.ndim == 3, (spec.name, cost)
    # Where the broken entry must show: its query's row or its target's column.
    expected = torch.zeros(cost.shape, dtype=torch.bool)
    if nonfinite_at is not None and not spec.not_read(inputs, name, nonfinite_at):
        image, item = nonfinite_at[0], nonfinite_at[1]
        if name in spec.predictions:
            expected[image, item, :] = True
        else:
            expected[image, :, item] = True
        assert cost[expected].isnan().all(), f"{spec.name}: {name}{list(nonfinite_at)} is not finite but its cost is {cost[expected]}"
    rest = cost[~expected]
    assert not rest.isnan().any(), f"{spec.name}: NaN cost away from the broken input {name}: {cost}"
    assert ((rest >= spec.low) & (rest <= spec.high)).all(), (
        f"{spec.name}: cost outside the documented [{spec.low}, {spec.high}]: {rest.min()}..{rest.max()}"
    )


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
@settings(max_examples=30)
@given(data=st.data())
def test_bad_input_never_passes_silently(spec: Spec, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**16), label="seed")
    batch, queries, targets = (data.draw(st.integers(1, 3), label=label) for label in ("B", "N", "M"))
    inputs = _valid(torch.Generator().manual_seed(seed), batch, queries, targets)
    name = data.draw(st.sampled_from(spec.predictions + spec.targets), label="input")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    broken, nonfinite_at = _corrupt(data, inputs[name], kind)
    _check(spec, {**inputs, name: broken}, name, nonfinite_at)


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_valid_input_is_inside_the_documented_range(spec: Spec) -> None:
    # The reference for the property above: unbroken inputs give a finite cost in range.
    inputs = _valid(torch.Generator().manual_seed(0), 2, 3, 2)
    cost = spec.call(inputs)
    assert cost.shape == (2, 3, 2) and torch.isfinite(cost).all()
    assert ((cost >= spec.low) & (cost <= spec.high)).all()
