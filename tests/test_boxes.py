"""Tests of hybridmatch.boxes against float64 references written here, pair by pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybridmatch.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_giou,
    pairwise_giou,
    pairwise_iou,
)
from hybridmatch.errors import ShapeError

from .conftest import cpu_and_cuda

# ---------------------------------------------------------------- references


def reference_iou_giou(a: list[float], b: list[float]) -> tuple[float, float]:
    """IoU and GIoU of two xyxy boxes in python floats, with the documented rules."""
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    inter_w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    inter_h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    enclosing_w = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0)
    enclosing_h = max(max(a[3], b[3]) - min(a[1], b[1]), 0.0)
    enclosing = enclosing_w * enclosing_h
    giou = iou - (enclosing - union) / enclosing if enclosing > 0 else iou
    return iou, giou


def reference_pairwise(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) x (M, 4) -> IoU (N, M), GIoU (N, M) in float64 by a loop over pairs."""
    rows1, rows2 = boxes1.double().tolist(), boxes2.double().tolist()
    iou = np.zeros((len(rows1), len(rows2)))
    giou = np.zeros((len(rows1), len(rows2)))
    for i, a in enumerate(rows1):
        for j, b in enumerate(rows2):
            iou[i, j], giou[i, j] = reference_iou_giou(a, b)
    return iou, giou


# ---------------------------------------------------------------- strategies

unit = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False, width=32)
# Extents may be negative: degenerate and inverted boxes are part of the contract.
extent = st.floats(-0.5, 1.0, allow_nan=False, allow_infinity=False, width=32)
positive_extent = st.floats(2**-10, 1.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def xyxy_boxes(draw: st.DrawFn, count: int | None = None, degenerate: bool = True) -> torch.Tensor:
    """Tensor[count, 4] xyxy boxes with corners in [0, 1] (plus extent)."""
    n = count if count is not None else draw(st.integers(0, 5))
    size = extent if degenerate else positive_extent
    rows = []
    for _ in range(n):
        x0, y0, w, h = draw(unit), draw(unit), draw(size), draw(size)
        rows.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(rows, dtype=torch.float32).reshape(n, 4)


def random_xyxy(generator: torch.Generator, *shape: int) -> torch.Tensor:
    corners = torch.rand(*shape, 2, generator=generator)
    sizes = torch.rand(*shape, 2, generator=generator) * 0.6
    return torch.cat([corners, corners + sizes], dim=-1)


# ---------------------------------------------------------------- known answers

# (box a, box b, IoU, GIoU), all xyxy.
KNOWN = [
    # identical unit squares: IoU 1, GIoU 1
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0, 1.0),
    # two adjacent unit squares: IoU 0; they fill their 2 x 1 enclosing box: GIoU 0
    ([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 0.0),
    # unit square inside a 2 x 2 square (4x the area): IoU 0.25, enclosing = big box: GIoU 0.25
    ([0, 0, 1, 1], [0, 0, 2, 2], 0.25, 0.25),
    # 2 x 1 boxes overlapping by half: inter 1, union 3, enclosing 3 x 1: IoU = GIoU = 1/3
    ([0, 0, 2, 1], [1, 0, 3, 1], 1 / 3, 1 / 3),
    # diagonal unit squares one apart: union 2, enclosing 3 x 3 = 9: GIoU = -(9 - 2) / 9
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9),
    # two points at opposite corners of a unit square: union 0, enclosing 1: GIoU -1
    ([0, 0, 0, 0], [1, 1, 1, 1], 0.0, -1.0),
    # the same point twice: union 0 -> IoU 0; enclosing 0 -> GIoU = IoU = 0
    ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 0.0, 0.0),
    # a zero-width line inside a unit square: zero area, so IoU 0; enclosing = square,
    # union = 1: GIoU 0
    ([0.5, 0, 0.5, 1], [0, 0, 1, 1], 0.0, 0.0),
    # an inverted box (x1 < x0, y1 < y0) has zero area; with the unit square the
    # enclosing box (min x0, min y0, max x1, max y1) is the square, union 1: IoU 0, GIoU 0
    ([1, 1, 0, 0], [0, 0, 1, 1], 0.0, 0.0),
    # a box with y1 < y0 spanning x in [1, 3] beside the unit square: zero area; the
    # enclosing box (min x0, min y0, max x1, max y1) is 3 x 1, union 1: GIoU -2/3
    ([1, 1, 3, 0], [0, 0, 1, 1], 0.0, -2 / 3),
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(("box_a", "box_b", "iou", "giou"), KNOWN)
def test_known_answers(device: str, box_a: list, box_b: list, iou: float, giou: float) -> None:
    a = torch.tensor([box_a], dtype=torch.float32, device=device)
    b = torch.tensor([box_b], dtype=torch.float32, device=device)
    for first, second in ((a, b), (b, a)):
        assert pairwise_iou(first, second).item() == pytest.approx(iou, abs=1e-6)
        assert pairwise_giou(first, second).item() == pytest.approx(giou, abs=1e-6)
        assert elementwise_giou(first, second).item() == pytest.approx(giou, abs=1e-6)


def test_box_area_known_answers() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 2.0, 3.0],  # 2 x 3
            [1.0, 1.0, 1.0, 5.0],  # zero width
            [2.0, 0.0, 1.0, 4.0],  # negative width -> 0
            [0.0, 2.0, 4.0, 1.0],  # negative height -> 0, not -4
        ]
    )
    torch.testing.assert_close(box_area(boxes), torch.tensor([6.0, 0.0, 0.0, 0.0]))


def test_conversions_known_answers() -> None:
    # centre (1, 2), width 4, height 6 -> corners (-1, -1) and (3, 5)
    cxcywh = torch.tensor([1.0, 2.0, 4.0, 6.0])
    xyxy = torch.tensor([-1.0, -1.0, 3.0, 5.0])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_conversions_keep_leading_dims_and_dtype() -> None:
    boxes = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    assert box_cxcywh_to_xyxy(boxes).shape == (2, 3, 5, 4)
    assert box_xyxy_to_cxcywh(boxes).dtype == torch.float64
    assert box_cxcywh_to_xyxy(boxes.half()).dtype == torch.float16


# ---------------------------------------------------------------- against the reference


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_batched_matches_reference_per_image(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    boxes1 = random_xyxy(generator, 3, 7)
    boxes2 = random_xyxy(generator, 3, 5)
    # Make some pairs degenerate: an inverted box and a point.
    boxes1[0, 0] = torch.tensor([0.6, 0.6, 0.2, 0.3])
    boxes2[1, 2] = torch.tensor([0.4, 0.4, 0.4, 0.4])
    iou = pairwise_iou(boxes1.to(device), boxes2.to(device)).cpu()
    giou = pairwise_giou(boxes1.to(device), boxes2.to(device)).cpu()
    assert iou.shape == giou.shape == (3, 7, 5)
    for b in range(3):
        expected_iou, expected_giou = reference_pairwise(boxes1[b], boxes2[b])
        np.testing.assert_allclose(iou[b].numpy(), expected_iou, atol=1e-6)
        np.testing.assert_allclose(giou[b].numpy(), expected_giou, atol=1e-6)


def test_unbatched_equals_batched() -> None:
    generator = torch.Generator().manual_seed(1)
    boxes1 = random_xyxy(generator, 6)
    boxes2 = random_xyxy(generator, 4)
    torch.testing.assert_close(
        pairwise_iou(boxes1, boxes2), pairwise_iou(boxes1[None], boxes2[None])[0]
    )
    torch.testing.assert_close(
        pairwise_giou(boxes1, boxes2), pairwise_giou(boxes1[None], boxes2[None])[0]
    )
    assert pairwise_giou(boxes1, boxes2).shape == (6, 4)


def test_elementwise_giou_is_the_diagonal_of_pairwise() -> None:
    generator = torch.Generator().manual_seed(2)
    boxes1 = random_xyxy(generator, 2, 6)
    boxes2 = random_xyxy(generator, 2, 6)
    diagonal = pairwise_giou(boxes1, boxes2).diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(elementwise_giou(boxes1, boxes2), diagonal)


def test_empty_inputs() -> None:
    assert pairwise_iou(torch.zeros(2, 0, 4), torch.rand(2, 3, 4)).shape == (2, 0, 3)
    assert pairwise_giou(torch.rand(2, 3, 4), torch.zeros(2, 0, 4)).shape == (2, 3, 0)
    assert pairwise_giou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 0)
    assert elementwise_giou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    boxes1 = random_xyxy(generator, 2, 5).to(dtype)
    boxes2 = random_xyxy(generator, 2, 4).to(dtype)
    for function in (pairwise_iou, pairwise_giou):
        result = function(boxes1, boxes2)
        assert result.dtype == torch.float32
        # Same values as float32 arithmetic on the same (rounded) boxes.
        torch.testing.assert_close(result, function(boxes1.float(), boxes2.float()), rtol=0, atol=0)
    assert elementwise_giou(boxes1[:, :4], boxes2).dtype == torch.float32
    assert box_area(boxes1).dtype == torch.float32


def test_float16_pixel_boxes_do_not_overflow() -> None:
    # 1000 x 1000 pixel boxes: areas of 1e6 overflow float16 (max 65504).
    big = torch.tensor([[0.0, 0.0, 1000.0, 1000.0]], dtype=torch.float16)
    half_overlap = torch.tensor([[500.0, 0.0, 1500.0, 1000.0]], dtype=torch.float16)
    assert pairwise_iou(big, half_overlap).item() == pytest.approx(1 / 3, abs=1e-6)
    assert pairwise_giou(big, half_overlap).item() == pytest.approx(1 / 3, abs=1e-6)


def test_float64_stays_float64() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert pairwise_iou(boxes, boxes).dtype == torch.float64
    assert pairwise_giou(boxes, boxes).dtype == torch.float64
    assert box_area(boxes).dtype == torch.float64


def test_gradients_are_finite_for_degenerate_boxes() -> None:
    # The same point twice (union and enclosing box both 0), a zero-width line twice,
    # and an inverted box against a square.
    boxes1 = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [0.2, 0.0, 0.2, 1.0], [1.0, 1.0, 0.0, 0.0]], requires_grad=True
    )
    boxes2 = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [0.2, 0.0, 0.2, 1.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True
    )
    elementwise_giou(boxes1, boxes2).sum().backward()
    assert torch.isfinite(boxes1.grad).all() and torch.isfinite(boxes2.grad).all()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("boxes1", "boxes2", "message"),
    [
        (
            torch.zeros(3, 5),
            torch.zeros(2, 4),
            r"boxes1 must have shape \(B, N, 4\) or \(N, 4\), got \(3, 5\)",
        ),
        (torch.zeros(3, 4), torch.zeros(4), r"boxes2 must have shape .* got \(4,\)"),
        (torch.zeros(1, 3, 4), torch.zeros(2, 4), r"both be batched .* or both unbatched"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 2, 4), r"boxes1 has batch size 2 but boxes2 has 3"),
    ],
)
def test_pairwise_shape_errors(boxes1: torch.Tensor, boxes2: torch.Tensor, message: str) -> None:
    for function in (pairwise_iou, pairwise_giou):
        with pytest.raises(ShapeError, match=message):
            function(boxes1, boxes2)


def test_other_shape_errors() -> None:
    with pytest.raises(ShapeError, match=r"boxes must have shape \(\.\.\., 4\), got \(2, 3\)"):
        box_area(torch.zeros(2, 3))
    with pytest.raises(ShapeError, match=r"boxes must have shape \(\.\.\., 4\), got \(\)"):
        box_cxcywh_to_xyxy(torch.tensor(1.0))
    with pytest.raises(ShapeError, match=r"same shape .* boxes1 \(2, 4\) and boxes2 \(3, 4\)"):
        elementwise_giou(torch.zeros(2, 4), torch.zeros(3, 4))
    # ShapeError is a ValueError, so existing `except ValueError` code keeps working.
    with pytest.raises(ValueError):
        pairwise_iou(torch.zeros(2, 5), torch.zeros(2, 4))


# ---------------------------------------------------------------- properties


@given(xyxy_boxes(), xyxy_boxes())
def test_property_bounds_and_finiteness(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    # Degenerate and inverted boxes included: values are finite and in range.
    iou = pairwise_iou(boxes1, boxes2)
    giou = pairwise_giou(boxes1, boxes2)
    assert torch.isfinite(iou).all() and torch.isfinite(giou).all()
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1) & (giou <= 1)).all()
    assert (giou <= iou).all()


@given(xyxy_boxes(), xyxy_boxes())
def test_property_matches_reference(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    expected_iou, expected_giou = reference_pairwise(boxes1, boxes2)
    np.testing.assert_allclose(pairwise_iou(boxes1, boxes2).numpy(), expected_iou, atol=1e-5)
    np.testing.assert_allclose(pairwise_giou(boxes1, boxes2).numpy(), expected_giou, atol=1e-5)


@given(xyxy_boxes(), xyxy_boxes())
def test_property_symmetry(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    torch.testing.assert_close(pairwise_iou(boxes1, boxes2), pairwise_iou(boxes2, boxes1).T)
    torch.testing.assert_close(pairwise_giou(boxes1, boxes2), pairwise_giou(boxes2, boxes1).T)


@given(xyxy_boxes(degenerate=False))
def test_property_self_overlap_is_one(boxes: torch.Tensor) -> None:
    ones = torch.ones(len(boxes))
    torch.testing.assert_close(pairwise_iou(boxes, boxes).diagonal(), ones)
    torch.testing.assert_close(pairwise_giou(boxes, boxes).diagonal(), ones)
    torch.testing.assert_close(elementwise_giou(boxes, boxes), ones)


@given(xyxy_boxes(count=3), xyxy_boxes(count=3))
def test_property_elementwise_bounds(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    giou = elementwise_giou(boxes1, boxes2)
    assert torch.isfinite(giou).all()
    assert ((giou >= -1) & (giou <= 1)).all()


@given(
    st.lists(
        st.tuples(unit, unit, st.floats(0.0, 1.0, width=32), st.floats(0.0, 1.0, width=32)),
        min_size=1,
        max_size=5,
    )
)
def test_property_conversion_round_trip(rows: list[tuple[float, float, float, float]]) -> None:
    cxcywh = torch.tensor(rows, dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy, rtol=0, atol=1e-12
    )
    # Widths and heights are >= 0 here, so the area is width * height.
    expected_area = cxcywh[:, 2] * cxcywh[:, 3]
    torch.testing.assert_close(box_area(xyxy), expected_area, rtol=0, atol=1e-12)


def test_reference_helper_agrees_with_hand_examples() -> None:
    # The reference itself must reproduce the hand-checked table.
    for box_a, box_b, iou, giou in KNOWN:
        got_iou, got_giou = reference_iou_giou([float(v) for v in box_a], [float(v) for v in box_b])
        assert math.isclose(got_iou, iou, abs_tol=1e-12)
        assert math.isclose(got_giou, giou, abs_tol=1e-12)
