"""The fused native detection cost (costs/_fused.py, csrc/fused_cost.h) against float64 math and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment

from hybridmatch import (
    CostSum,
    FocalClassCost,
    GIoUCost,
    HungarianMatcher,
    L1BoxCost,
    OneToManyMatcher,
    SoftmaxClassCost,
    pad_targets,
)
from hybridmatch.costs import _fused
from hybridmatch.solvers import _native

pytestmark = pytest.mark.skipif(_native._cpu is None, reason="needs the compiled extension")


@pytest.fixture(autouse=True, scope="module", params=["by targets", "by queries"])
def layout(request: pytest.FixtureRequest):
    """Every test of this module runs twice: every image computed target by target over the
    queries (the layout of few targets), then query by query over the targets."""
    previous = _fused.COLUMN_MAX_TARGETS
    _fused.COLUMN_MAX_TARGETS = 10**9 if request.param == "by targets" else 0
    yield request.param
    _fused.COLUMN_MAX_TARGETS = previous


# ------------------------------------------------------------------ float64 reference, per pair
def ref_focal(logit: float, alpha: float, gamma: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    q = 1.0 / (1.0 + math.exp(logit))
    return alpha * q**gamma * -math.log(p + 1e-8) - (1.0 - alpha) * p**gamma * -math.log(q + 1e-8)


def ref_giou(a: np.ndarray, b: np.ndarray) -> float:
    def xyxy(box: np.ndarray) -> tuple[float, float, float, float]:
        cx, cy, w, h = (float(v) for v in box)
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = xyxy(a), xyxy(b)
    area_a = max(ax1 - ax0, 0) * max(ay1 - ay0, 0)
    area_b = max(bx1 - bx0, 0) * max(by1 - by0, 0)
    inter = max(min(ax1, bx1) - max(ax0, bx0), 0) * max(min(ay1, by1) - max(ay0, by0), 0)
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    enclosing = max(max(ax1, bx1) - min(ax0, bx0), 0) * max(max(ay1, by1) - min(ay0, by0), 0)
    return iou - (max(enclosing - union, 0) / enclosing if enclosing > 0 else 0.0)


def reference(logits: np.ndarray, labels: np.ndarray, pred: np.ndarray, target: np.ndarray,
              w_class: float, w_l1: float, w_giou: float, kind: str) -> np.ndarray:
    batch, n, _ = logits.shape
    m = labels.shape[1]
    out = np.zeros((batch, n, m))
    for b in range(batch):
        for i in range(n):
            row = logits[b, i].astype(np.float64)
            soft = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            for j in range(m):
                c = int(labels[b, j])
                cls = ref_focal(float(row[c]), 0.25, 2.0) if kind == "focal" else -soft[c]
                l1 = float(np.abs(pred[b, i].astype(np.float64) - target[b, j]).sum())
                out[b, i, j] = w_class * cls + w_l1 * l1 - w_giou * ref_giou(pred[b, i], target[b, j])
    return out


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    batch = draw(st.integers(1, 3))
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 7))
    kind = draw(st.sampled_from(["focal", "softmax"]))
    classes = draw(st.integers(1, 5)) + (kind == "softmax")  # softmax: + the no-object logit
    logits = draw(hnp.arrays(np.float32, (batch, n, classes), elements=st.floats(-8.0, 8.0, width=32)))
    # Negative sizes: degenerate boxes. Magnitudes below 1e-3 read as 0: float32 areas of
    # tinier boxes underflow, which float64 math does not (no implementation could agree).
    coordinate = st.floats(-0.25, 1.25, width=32).map(lambda v: 0.0 if abs(v) < 1e-3 else v)
    pred = draw(hnp.arrays(np.float32, (batch, n, 4), elements=coordinate))
    target = draw(hnp.arrays(np.float32, (batch, m, 4), elements=coordinate))
    top = classes - 1 - (kind == "softmax")
    labels = draw(hnp.arrays(np.int64, (batch, m), elements=st.integers(0, top)))
    weights = draw(st.tuples(*[st.floats(-3.0, 6.0, width=32)] * 3))
    return logits, labels, pred, target, weights, kind


def make_cost(kind: str, w_class: float, w_l1: float, w_giou: float) -> CostSum:
    classes = FocalClassCost() if kind == "focal" else SoftmaxClassCost()
    return CostSum([(w_class, classes), (w_l1, L1BoxCost()), (w_giou, GIoUCost())])


def fused_and_torch(cost: CostSum, outputs: dict, targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
    assert _fused.fused_cost(cost.terms, outputs, targets) is not None  # the native pass applies
    fused = cost(outputs, targets)
    _fused.ENABLED = False
    try:
        plain = cost(outputs, targets)
    finally:
        _fused.ENABLED = True
    return fused, plain


@given(problems())
def test_fused_cost_matches_float64_math(problem: tuple) -> None:
    logits, labels, pred, target, (w_class, w_l1, w_giou), kind = problem
    outputs = {"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(pred)}
    targets = {"labels": torch.from_numpy(labels), "boxes": torch.from_numpy(target)}
    cost = make_cost(kind, w_class, w_l1, w_giou)
    fused, plain = fused_and_torch(cost, outputs, targets)
    expected = reference(logits, labels, pred, target, w_class, w_l1, w_giou, kind)
    assert fused.dtype == torch.float32 and fused.shape == expected.shape
    scale = 1.0 + abs(w_class) * 20 + abs(w_l1) * 8 + abs(w_giou)
    np.testing.assert_allclose(fused.numpy(), expected, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=0, atol=2e-6 * scale)


def test_many_targets_use_the_class_table_and_threads_agree() -> None:
    # More targets than classes: the (B, N, C) table path; enough pairs for several threads.
    generator = torch.Generator().manual_seed(3)
    batch, n, m, classes = 2, 400, 120, 11
    outputs = {
        "pred_logits": torch.randn(batch, n, classes, generator=generator) * 3,
        "pred_boxes": torch.rand(batch, n, 4, generator=generator),
    }
    targets = {"labels": torch.randint(0, classes - 1, (batch, m), generator=generator),
               "boxes": torch.rand(batch, m, 4, generator=generator)}
    for kind in ("focal", "softmax"):
        cost = make_cost(kind, 2.0, 5.0, 2.0)
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one, plain = fused_and_torch(cost, outputs, targets)
            torch.set_num_threads(2)
            two = cost(outputs, targets)
        finally:
            torch.set_num_threads(previous)
        assert torch.equal(one, two)
        torch.testing.assert_close(one, plain, rtol=0, atol=1e-5)
        # Spot-check pairs against float64 math.
        for b, i, j in [(0, 0, 0), (1, 399, 119), (0, 17, 63), (1, 250, 5)]:
            expected = reference(
                outputs["pred_logits"][b : b + 1, i : i + 1].numpy(), targets["labels"][b : b + 1, j : j + 1].numpy(),
                outputs["pred_boxes"][b : b + 1, i : i + 1].numpy(), targets["boxes"][b : b + 1, j : j + 1].numpy(),
                2.0, 5.0, 2.0, kind,
            )
            assert abs(float(one[b, i, j]) - expected[0, 0, 0]) < 1e-4


@pytest.mark.parametrize("kind", ["focal", "softmax", "boxes only"])
def test_both_layouts_give_the_same_bits(kind: str) -> None:
    generator = torch.Generator().manual_seed(11)
    outputs = {"pred_logits": torch.randn(3, 257, 91, generator=generator) * 3,
               "pred_boxes": torch.rand(3, 257, 4, generator=generator)}
    outputs["pred_boxes"][1, 9, 3] = math.nan
    cost = make_cost("focal", 2.0, 5.0, 2.0) if kind == "boxes only" else make_cost(kind, 2.0, 5.0, 2.0)
    if kind == "boxes only":
        cost = CostSum([(5.0, L1BoxCost()), (2.0, GIoUCost())])
    previous = _fused.COLUMN_MAX_TARGETS
    for m in (1, 7, 23, 100):
        targets = {"labels": torch.randint(0, 90, (3, m), generator=generator),
                   "boxes": torch.rand(3, m, 4, generator=generator)}
        targets["boxes"][2, m // 2, 0] = math.inf
        results = []
        try:
            for column_max in (0, 10**9):
                _fused.COLUMN_MAX_TARGETS = column_max
                assert _fused.fused_cost(cost.terms, outputs, targets) is not None
                results.append(cost(outputs, targets))
        finally:
            _fused.COLUMN_MAX_TARGETS = previous
        by_queries, by_targets = results
        assert torch.equal(torch.isnan(by_queries), torch.isnan(by_targets))
        assert torch.isnan(by_queries[1, 9]).all() and torch.isnan(by_queries[2, :, m // 2]).all()
        assert torch.equal(by_queries.nan_to_num(0.0), by_targets.nan_to_num(0.0)), f"m={m}"


def test_falls_back_where_the_native_pass_does_not_apply() -> None:
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    targets = {"labels": torch.tensor([[0]]), "boxes": torch.full((1, 1, 4), 0.5)}
    focal_l1 = FocalClassCost() + L1BoxCost()
    assert _fused.fused_cost(focal_l1.terms, outputs, targets) is not None
    # Autograd wanted; other cost terms.
    grad = dict(outputs, pred_boxes=outputs["pred_boxes"].clone().requires_grad_())
    assert _fused.fused_cost(focal_l1.terms, grad, targets) is None
    assert _fused.fused_cost((L1BoxCost() + L1BoxCost()).terms, outputs, targets) is None
    assert _fused.fused_cost((L1BoxCost() + GIoUCost(key="other")).terms, dict(outputs, other=outputs["pred_boxes"]),
                             targets) is None


@given(st.integers(0, 10_000), st.integers(1, 9), st.integers(1, 4), st.sampled_from(["focal", "softmax"]))
def test_one_to_many_with_fused_cost_keeps_scipys_optimum_on_copies(seed: int, m: int, k: int, kind: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    n, classes = max(m * k + 2, 12), 6
    logits = torch.randn(1, n, classes, generator=generator) * 2
    pred = torch.rand(1, n, 4, generator=generator) * 0.5 + 0.1
    labels = torch.randint(0, classes - 1, (1, m), generator=generator)
    boxes = torch.rand(1, m, 4, generator=generator) * 0.5 + 0.1
    weights = (2.0, 5.0, 2.0)
    matcher = OneToManyMatcher(k=k, cost=make_cost(kind, *weights))
    [(rows, cols)] = matcher({"pred_logits": logits, "pred_boxes": pred}, [{"labels": labels[0], "boxes": boxes[0]}])
    # scipy on K copies of the float64 cost.
    exact = reference(logits.numpy(), labels.numpy(), pred.numpy(), boxes.numpy(), *weights, kind)[0]
    copies = np.tile(exact, (1, k))
    r, c = linear_sum_assignment(copies)
    assert len(rows) == len(r) == m * k
    assert np.bincount(cols.numpy(), minlength=m).max() <= k
    ours = exact[rows.numpy(), cols.numpy()].sum()
    assert ours == pytest.approx(copies[r, c].sum(), abs=1e-4 * m * k)


def test_hungarian_fused_equals_torch_path_indices() -> None:
    generator = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(3, 50, 91, generator=generator),
               "pred_boxes": torch.rand(3, 50, 4, generator=generator)}
    targets = [{"labels": torch.randint(0, 91, (m,), generator=generator), "boxes": torch.rand(m, 4, generator=generator)}
               for m in (0, 7, 30)]
    matcher = HungarianMatcher.deformable_detr()
    fused = matcher(outputs, targets)
    _fused.ENABLED = False
    try:
        plain = matcher(outputs, targets)
    finally:
        _fused.ENABLED = True
    for (r1, c1), (r2, c2) in zip(fused, plain):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)
    assert pad_targets(targets).num_targets_list == [0, 7, 30]


def test_two_class_terms_and_non_finite_logits_take_the_table_path() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 30, 6, generator=generator) * 3
    logits[1, 4, 2] = math.nan
    outputs = {"pred_logits": logits, "pred_boxes": torch.rand(2, 30, 4, generator=generator)}
    targets = {"labels": torch.randint(0, 5, (2, 40), generator=generator), "boxes": torch.rand(2, 40, 4, generator=generator)}
    for cost in (
        CostSum([(2.0, FocalClassCost()), (1.5, SoftmaxClassCost()), (5.0, L1BoxCost()), (2.0, GIoUCost())]),
        make_cost("focal", 2.0, 5.0, 2.0),
    ):
        fused, plain = fused_and_torch(cost, outputs, targets)
        assert torch.isnan(fused[1, 4]).all() and not torch.isnan(fused[0]).any()
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5, equal_nan=True)
    # Against float64 math, away from the NaN row.
    expected = reference(logits[:1].numpy(), targets["labels"][:1].numpy(), outputs["pred_boxes"][:1].numpy(),
                         targets["boxes"][:1].numpy(), 2.0, 5.0, 2.0, "focal")
    np.testing.assert_allclose(fused[:1].numpy(), expected, rtol=0, atol=1e-4)


def test_non_finite_boxes_give_nan_rows_and_columns_as_the_torch_path() -> None:
    generator = torch.Generator().manual_seed(8)
    pred = torch.rand(2, 9, 4, generator=generator)
    boxes = torch.rand(2, 5, 4, generator=generator)
    pred[0, 3, 2] = math.inf
    boxes[1, 2, 0] = math.nan
    logits = torch.randn(2, 9, 4, generator=generator)
    logits[1, 6, 0] = -math.inf
    outputs = {"pred_logits": logits, "pred_boxes": pred}
    targets = {"labels": torch.randint(0, 3, (2, 5), generator=generator), "boxes": boxes}
    for kind in ("focal", "softmax"):
        fused, plain = fused_and_torch(make_cost(kind, 2.0, 5.0, 2.0), outputs, targets)
        assert torch.equal(torch.isnan(fused), torch.isnan(plain))
        assert torch.isnan(fused[0, 3]).all() and torch.isnan(fused[1, :, 2]).all() and torch.isnan(fused[1, 6]).all()
        assert torch.isnan(fused).sum() == 5 + 9 + 4
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5, equal_nan=True)
