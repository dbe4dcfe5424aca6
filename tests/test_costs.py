"""Tests of hybridmatch.costs against float64 formulas written here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybridmatch.costs import (
    Cost,
    CostSum,
    FocalClassCost,
    GIoUCost,
    L1BoxCost,
    SoftmaxClassCost,
    TargetBatch,
    focal_class_cost,
    giou_cost,
    l1_box_cost,
    softmax_class_cost,
)
from hybridmatch.errors import InvalidPredictionError, InvalidTargetError, ShapeError

from .conftest import cpu_and_cuda


@dataclass(frozen=True)
class Targets:
    """Stands in for hybridmatch.targets.PaddedTargets: anything with labels and boxes."""

    labels: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor | None = None


# ---------------------------------------------------------------- float64 references


def reference_softmax_cost(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    logits64 = logits.double().numpy()
    batch, queries, _ = logits64.shape
    cost = np.zeros((batch, queries, labels.shape[1]))
    for b in range(batch):
        for n in range(queries):
            exp = np.exp(logits64[b, n] - logits64[b, n].max())
            probs = exp / exp.sum()
            for m, label in enumerate(labels[b].tolist()):
                cost[b, n, m] = -probs[label]
    return cost


def reference_focal_cost(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> np.ndarray:
    """Deformable-DETR's formula evaluated in float64, pair by pair."""
    logits64 = logits.double().numpy()
    batch, queries, _ = logits64.shape
    cost = np.zeros((batch, queries, labels.shape[1]))
    for b in range(batch):
        for n in range(queries):
            for m, label in enumerate(labels[b].tolist()):
                p = 1.0 / (1.0 + math.exp(-logits64[b, n, label]))
                pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
                neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
                cost[b, n, m] = pos - neg
    return cost


def reference_l1_cost(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    pred64, target64 = pred.double().numpy(), target.double().numpy()
    return np.abs(pred64[:, :, None, :] - target64[:, None, :, :]).sum(-1)


def reference_giou(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes with positive extents, in python floats."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(min(ax1, bx1) - max(ax0, bx0), 0) * max(min(ay1, by1) - max(ay0, by0), 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (enclosing - union) / enclosing


def reference_giou_cost(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    cost = np.zeros((pred.shape[0], pred.shape[1], target.shape[1]))
    for b in range(pred.shape[0]):
        for n, p in enumerate(pred[b].double().tolist()):
            for m, t in enumerate(target[b].double().tolist()):
                cost[b, n, m] = -reference_giou(p, t)
    return cost


# ---------------------------------------------------------------- inputs


def random_cxcywh(generator: torch.Generator, *shape: int) -> torch.Tensor:
    centres = torch.rand(*shape, 2, generator=generator)
    sizes = torch.rand(*shape, 2, generator=generator) * 0.5 + 0.05
    return torch.cat([centres, sizes], dim=-1)


def make_batch(
    seed: int = 0, batch: int = 2, queries: int = 6, targets: int = 4, classes: int = 5
) -> tuple[dict[str, torch.Tensor], Targets]:
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes, generator=generator) * 3,
        "pred_boxes": random_cxcywh(generator, batch, queries),
    }
    # Below classes - 1, so that the labels are real classes for the softmax layout too.
    labels = torch.randint(0, classes - 1, (batch, targets), generator=generator)
    return outputs, Targets(labels=labels, boxes=random_cxcywh(generator, batch, targets))


# ---------------------------------------------------------------- functions vs references


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_softmax_class_cost_matches_reference(device: str) -> None:
    outputs, targets = make_batch(seed=1)
    cost = softmax_class_cost(outputs["pred_logits"].to(device), targets.labels.to(device))
    assert cost.shape == (2, 6, 4) and cost.dtype == torch.float32
    expected = reference_softmax_cost(outputs["pred_logits"], targets.labels)
    np.testing.assert_allclose(cost.cpu().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_focal_class_cost_matches_float64_formula(device: str) -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.rand(2, 50, 3, generator=generator) * 20 - 10
    # The ends of the promised range, where 1 - p loses digits if computed naively.
    logits[0, 0] = torch.tensor([-10.0, 10.0, 0.0])
    labels = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])
    cost = focal_class_cost(logits.to(device), labels.to(device))
    assert cost.shape == (2, 50, 4) and cost.dtype == torch.float32
    np.testing.assert_allclose(
        cost.cpu().numpy(), reference_focal_cost(logits, labels), rtol=0, atol=1e-5
    )


def test_focal_class_cost_settings() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 5, 4, generator=generator) * 4
    labels = torch.tensor([[3, 0, 2]])
    cost = focal_class_cost(logits, labels, alpha=0.5, gamma=1.5)
    expected = reference_focal_cost(logits, labels, alpha=0.5, gamma=1.5)
    np.testing.assert_allclose(cost.numpy(), expected, rtol=0, atol=1e-5)


def test_focal_class_cost_known_value() -> None:
    # logit 0: p = 1/2, so pos = 0.25 * 0.25 * ln 2 and neg = 0.75 * 0.25 * ln 2 (eps aside):
    # cost = -0.125 * ln 2.
    cost = focal_class_cost(torch.zeros(1, 1, 2), torch.tensor([[1]]))
    assert cost.item() == pytest.approx(-0.125 * math.log(2), abs=1e-6)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_l1_box_cost_matches_reference(device: str) -> None:
    outputs, targets = make_batch(seed=4)
    cost = l1_box_cost(outputs["pred_boxes"].to(device), targets.boxes.to(device))
    assert cost.shape == (2, 6, 4) and cost.dtype == torch.float32
    expected = reference_l1_cost(outputs["pred_boxes"], targets.boxes)
    np.testing.assert_allclose(cost.cpu().numpy(), expected, atol=1e-6)
    # torch.cdist(p=1) in float32 is an independent second reference.
    torch.testing.assert_close(cost.cpu(), torch.cdist(outputs["pred_boxes"], targets.boxes, p=1))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_giou_cost_matches_reference(device: str) -> None:
    outputs, targets = make_batch(seed=5)
    cost = giou_cost(outputs["pred_boxes"].to(device), targets.boxes.to(device))
    assert cost.shape == (2, 6, 4) and cost.dtype == torch.float32
    expected = reference_giou_cost(outputs["pred_boxes"], targets.boxes)
    np.testing.assert_allclose(cost.cpu().numpy(), expected, atol=1e-6)


def test_giou_cost_known_value() -> None:
    # Two unit squares centred 2 apart on a diagonal: GIoU -7/9 (union 2, enclosing 3 x 3).
    pred = torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])
    target = torch.tensor([[[2.5, 2.5, 1.0, 1.0]]])
    assert giou_cost(pred, target).item() == pytest.approx(7 / 9, abs=1e-6)


def test_giou_cost_degenerate_boxes_are_finite() -> None:
    # Zero and negative widths/heights, e.g. from an untrained box head.
    pred = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, -0.2, 0.3], [0.2, 0.2, 0.1, 0.0]]])
    target = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.4, 0.4, 0.2, 0.2]]])
    cost = giou_cost(pred, target)
    assert torch.isfinite(cost).all()
    assert ((cost >= -1) & (cost <= 1)).all()


def test_empty_targets_and_queries() -> None:
    logits, boxes = torch.randn(2, 3, 5), torch.rand(2, 3, 4)
    no_labels, no_boxes = torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, 4)
    for cost in (
        softmax_class_cost(logits, no_labels),
        focal_class_cost(logits, no_labels),
        l1_box_cost(boxes, no_boxes),
        giou_cost(boxes, no_boxes),
    ):
        assert cost.shape == (2, 3, 0) and cost.dtype == torch.float32
    assert focal_class_cost(torch.randn(2, 0, 5), torch.zeros(2, 3, dtype=torch.int64)).shape == (
        2,
        0,
        3,
    )
    assert l1_box_cost(torch.zeros(2, 0, 4), torch.rand(2, 3, 4)).shape == (2, 0, 3)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_cost_is_float32_and_close_to_float32_inputs(dtype: torch.dtype) -> None:
    outputs, targets = make_batch(seed=6)
    logits, pred_boxes, target_boxes = outputs["pred_logits"], outputs["pred_boxes"], targets.boxes
    cases = [
        (softmax_class_cost, logits, targets.labels),
        (focal_class_cost, logits, targets.labels),
        (l1_box_cost, pred_boxes, target_boxes),
        (giou_cost, pred_boxes, target_boxes),
    ]
    tolerance = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-6}[dtype]
    for function, first, second in cases:
        low = function(first.to(dtype), second.to(dtype) if second.is_floating_point() else second)
        assert low.dtype == torch.float32, function.__name__
        assert torch.isfinite(low).all(), function.__name__
        torch.testing.assert_close(low, function(first, second), rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_extreme_logits_stay_finite(dtype: torch.dtype) -> None:
    # Saturated logits as AMP produces them: p rounds to 0 or 1 in low precision.
    logits = torch.tensor([[[30.0, -30.0, 0.0], [-30.0, 30.0, 60000.0], [-60000.0, 8.0, -8.0]]])
    logits = logits.to(dtype)
    labels = torch.tensor([[0, 1, 2]])
    for function in (softmax_class_cost, focal_class_cost):
        cost = function(logits, labels)
        assert cost.dtype == torch.float32
        assert torch.isfinite(cost).all(), function.__name__
    # The eps of the formula bounds each log term by -log(1e-8) = 18.42.
    focal = focal_class_cost(logits, labels)
    assert focal.abs().max() <= 0.75 * 18.43
    # logit +30 for the label: p ~ 1, cost = -(1 - alpha) * -log(1e-8) ~ -13.8.
    assert focal[0, 0, 0].item() == pytest.approx(-0.75 * -math.log(1e-8), rel=1e-3)


def test_focal_float16_matches_reference_at_large_logits() -> None:
    logits = torch.tensor([[[-30.0, -12.0, 12.0, 30.0]]], dtype=torch.float16)
    labels = torch.tensor([[0, 1, 2, 3]])
    cost = focal_class_cost(logits, labels)
    np.testing.assert_allclose(
        cost.numpy(), reference_focal_cost(logits.float(), labels), rtol=0, atol=1e-5
    )


# ---------------------------------------------------------------- padded columns


@pytest.mark.parametrize("padding_label", [-1, 5, 1000])
def test_padded_labels_do_not_crash(padding_label: int) -> None:
    outputs, targets = make_batch(seed=7, classes=5)
    labels = targets.labels.clone()
    labels[0, 2:] = padding_label  # image 0 has 2 real targets, image 1 has 4
    for function in (softmax_class_cost, focal_class_cost):
        cost = function(outputs["pred_logits"], labels)
        assert torch.isfinite(cost).all()
        torch.testing.assert_close(
            cost[:, :, :2], function(outputs["pred_logits"], targets.labels)[:, :, :2]
        )


def test_real_columns_do_not_depend_on_padded_columns() -> None:
    outputs, targets = make_batch(seed=8, targets=5)
    cost = 2.0 * FocalClassCost() + SoftmaxClassCost() + 5.0 * L1BoxCost() + 2.0 * GIoUCost()
    num_real = 3
    labels, boxes = targets.labels.clone(), targets.boxes.clone()
    labels[:, num_real:] = torch.tensor([-1, 10_000])
    boxes[:, num_real:] = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, -3.0, -1.0, 0.0]])
    valid = torch.arange(5)[None, :].expand(2, 5) < num_real
    changed = cost(outputs, Targets(labels=labels, boxes=boxes, valid=valid))
    original = cost(outputs, targets)
    assert torch.isfinite(changed).all()
    assert torch.equal(changed[:, :, :num_real], original[:, :, :num_real])


# ---------------------------------------------------------------- cost objects


def test_cost_objects_call_the_functions() -> None:
    outputs, targets = make_batch(seed=9)
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    torch.testing.assert_close(
        SoftmaxClassCost()(outputs, targets), softmax_class_cost(logits, targets.labels)
    )
    torch.testing.assert_close(
        FocalClassCost(alpha=0.4, gamma=1.0)(outputs, targets),
        focal_class_cost(logits, targets.labels, alpha=0.4, gamma=1.0),
    )
    torch.testing.assert_close(L1BoxCost()(outputs, targets), l1_box_cost(boxes, targets.boxes))
    torch.testing.assert_close(GIoUCost()(outputs, targets), giou_cost(boxes, targets.boxes))


def test_cost_sum_equals_weighted_sum_of_functions() -> None:
    outputs, targets = make_batch(seed=10)
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    cost = 2.0 * FocalClassCost() + 5.0 * L1BoxCost() + 2.0 * GIoUCost()
    expected = (
        2.0 * focal_class_cost(logits, targets.labels)
        + 5.0 * l1_box_cost(boxes, targets.boxes)
        + 2.0 * giou_cost(boxes, targets.boxes)
    )
    result = cost(outputs, targets)
    assert result.shape == (2, 6, 4) and result.dtype == torch.float32
    torch.testing.assert_close(result, expected)
    # And against the float64 references, independent of the library's functions.
    reference = (
        2.0 * reference_focal_cost(logits, targets.labels)
        + 5.0 * reference_l1_cost(boxes, targets.boxes)
        + 2.0 * reference_giou_cost(boxes, targets.boxes)
    )
    np.testing.assert_allclose(result.numpy(), reference, atol=1e-4)


def test_composition_flattens_and_multiplies_weights() -> None:
    focal, l1, giou = FocalClassCost(), L1BoxCost(), GIoUCost()
    assert (focal + l1).terms == ((1.0, focal), (1.0, l1))
    assert (3 * focal).terms == ((3.0, focal),)
    assert (focal * 0.5).terms == ((0.5, focal),)
    nested = 2.0 * (focal + 3.0 * l1) + giou
    assert nested.terms == ((2.0, focal), (6.0, l1), (1.0, giou))
    assert all(not isinstance(cost, CostSum) for _, cost in nested.terms)
    explicit = CostSum([(2.0, CostSum([(1.0, focal), (3.0, l1)])), (1.0, giou)])
    assert explicit.terms == nested.terms
    # sum() starts from 0.
    assert sum([2.0 * focal, 5.0 * l1]).terms == ((2.0, focal), (5.0, l1))
    assert isinstance(nested, Cost)


def test_negative_and_zero_weights_are_allowed() -> None:
    outputs, targets = make_batch(seed=11)
    l1 = L1BoxCost()
    torch.testing.assert_close((-1.0 * l1)(outputs, targets), -l1(outputs, targets))
    assert torch.equal((0 * l1)(outputs, targets), torch.zeros(2, 6, 4))


def test_repr() -> None:
    cost = 2.0 * FocalClassCost() + 5.0 * L1BoxCost() + 2.0 * GIoUCost()
    assert (
        repr(cost)
        == "CostSum(2.0*FocalClassCost(alpha=0.25, gamma=2.0) + 5.0*L1BoxCost() + 2.0*GIoUCost())"
    )
    assert repr(SoftmaxClassCost()) == "SoftmaxClassCost()"
    assert repr(L1BoxCost(key="pred_boxes_one2many")) == "L1BoxCost(key='pred_boxes_one2many')"
    assert (
        repr(FocalClassCost(0.5, 1, key="logits"))
        == "FocalClassCost(alpha=0.5, gamma=1.0, key='logits')"
    )


def test_custom_keys() -> None:
    outputs, targets = make_batch(seed=12)
    renamed = {
        "pred_logits_one2many": outputs["pred_logits"],
        "pred_boxes_one2many": outputs["pred_boxes"],
    }
    for default, custom in (
        (FocalClassCost(), FocalClassCost(key="pred_logits_one2many")),
        (SoftmaxClassCost(), SoftmaxClassCost(key="pred_logits_one2many")),
        (L1BoxCost(), L1BoxCost(key="pred_boxes_one2many")),
        (GIoUCost(), GIoUCost(key="pred_boxes_one2many")),
    ):
        torch.testing.assert_close(custom(renamed, targets), default(outputs, targets))


def test_targets_protocol() -> None:
    _, targets = make_batch()
    assert isinstance(targets, TargetBatch)
    assert not isinstance(object(), TargetBatch)


# ---------------------------------------------------------------- errors


def test_missing_output_key_names_key_and_keys_present() -> None:
    outputs, targets = make_batch()
    del outputs["pred_logits"]
    with pytest.raises(
        InvalidPredictionError,
        match=r"FocalClassCost reads outputs\['pred_logits'\].*\['pred_boxes'\]",
    ):
        FocalClassCost()(outputs, targets)
    with pytest.raises(InvalidPredictionError, match=r"outputs\['boxes_o2m'\], which is missing"):
        (L1BoxCost() + GIoUCost(key="boxes_o2m"))(outputs, targets)


def test_missing_target_attribute() -> None:
    outputs, _ = make_batch()
    with pytest.raises(InvalidTargetError, match=r"L1BoxCost reads targets.boxes"):
        L1BoxCost()(outputs, object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (
            torch.zeros(6, 5),
            torch.zeros(1, 4, dtype=torch.int64),
            r"logits must have shape \(B, N, C\), got \(6, 5\)",
        ),
        (
            torch.zeros(1, 6, 5),
            torch.zeros(4, dtype=torch.int64),
            r"labels must have shape \(B, M\), got \(4,\)",
        ),
        (
            torch.zeros(2, 6, 5),
            torch.zeros(3, 4, dtype=torch.int64),
            r"logits \(2, 6, 5\) and labels \(3, 4\) have different batch sizes",
        ),
        (
            torch.zeros(1, 6, 5),
            torch.zeros(1, 4),
            r"labels must be an integer tensor .* got torch.float32",
        ),
        (torch.zeros(1, 6, 0), torch.zeros(1, 4, dtype=torch.int64), r"at least one class"),
    ],
)
def test_class_cost_shape_errors(logits: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    for function in (softmax_class_cost, focal_class_cost):
        with pytest.raises(ShapeError, match=message):
            function(logits, labels)


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (
            torch.zeros(6, 4),
            torch.zeros(1, 3, 4),
            r"pred_boxes must have shape \(B, N, 4\), got \(6, 4\)",
        ),
        (
            torch.zeros(1, 6, 4),
            torch.zeros(1, 3, 2),
            r"target_boxes must have shape \(B, M, 4\), got \(1, 3, 2\)",
        ),
        (
            torch.zeros(2, 6, 4),
            torch.zeros(1, 3, 4),
            r"pred_boxes \(2, 6, 4\) and target_boxes \(1, 3, 4\)",
        ),
    ],
)
def test_box_cost_shape_errors(pred: torch.Tensor, target: torch.Tensor, message: str) -> None:
    for function in (l1_box_cost, giou_cost):
        with pytest.raises(ShapeError, match=rf"{function.__name__}: {message}"):
            function(pred, target)


def test_shape_error_through_a_cost_object() -> None:
    outputs, targets = make_batch()
    outputs["pred_boxes"] = outputs["pred_boxes"][..., :2]
    with pytest.raises(
        ShapeError, match=r"pred_boxes must have shape \(B, N, 4\), got \(2, 6, 2\)"
    ):
        (FocalClassCost() + L1BoxCost())(outputs, targets)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, "2.0", None, True])
def test_weights_must_be_finite_reals(weight: object) -> None:
    with pytest.raises(ValueError, match="cost weight must be a finite real number"):
        CostSum([(weight, L1BoxCost())])  # type: ignore[list-item]


def test_operators_reject_non_numbers() -> None:
    with pytest.raises(ValueError, match="finite real"):
        math.inf * L1BoxCost()
    with pytest.raises(TypeError):
        L1BoxCost() * "2"  # type: ignore[operator]
    with pytest.raises(TypeError):
        L1BoxCost() + 1.0  # type: ignore[operator]
    with pytest.raises(TypeError):
        L1BoxCost() * GIoUCost()  # type: ignore[operator]


def test_cost_sum_rejects_bad_terms() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CostSum([])
    with pytest.raises(TypeError, match="got a function as cost"):
        CostSum([(1.0, l1_box_cost)])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("alpha", "gamma"), [(-0.1, 2.0), (1.5, 2.0), (math.nan, 2.0), (0.25, -1.0), (0.25, math.inf)]
)
def test_focal_settings_are_validated(alpha: float, gamma: float) -> None:
    with pytest.raises(ValueError, match="alpha|gamma"):
        FocalClassCost(alpha=alpha, gamma=gamma)
    with pytest.raises(ValueError, match="alpha|gamma"):
        focal_class_cost(
            torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.int64), alpha=alpha, gamma=gamma
        )


# ---------------------------------------------------------------- properties

logit = st.floats(-10.0, 10.0, allow_nan=False, width=32)


@given(st.lists(logit, min_size=3, max_size=3), st.lists(st.integers(0, 2), min_size=1, max_size=4))
def test_property_focal_matches_reference(row: list[float], labels: list[int]) -> None:
    logits = torch.tensor([[row]])
    label_tensor = torch.tensor([labels])
    cost = focal_class_cost(logits, label_tensor)
    np.testing.assert_allclose(
        cost.numpy(), reference_focal_cost(logits, label_tensor), rtol=0, atol=1e-5
    )


@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=16), min_size=3, max_size=3))
def test_property_float16_class_costs_are_finite(row: list[float]) -> None:
    logits = torch.tensor([[row]], dtype=torch.float16)
    labels = torch.tensor([[0, 1, 2, -1]])
    assert torch.isfinite(focal_class_cost(logits, labels)).all()
    softmax = softmax_class_cost(logits, labels)
    assert torch.isfinite(softmax).all() and ((softmax >= -1) & (softmax <= 0)).all()
