"""HungarianMatcher against an independent float64 reference.

The reference cost below is written from the Deformable-DETR formulas with
numpy, per pair, and solved with scipy; the matcher must reach the same
optimal total on that reference cost.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch.costs import L1BoxCost
from hybridmatch.errors import InvalidPredictionError, InvalidTargetError, ShapeError
from hybridmatch.matchers import HungarianMatcher


def _xyxy(box: np.ndarray) -> np.ndarray:
    cx, cy, w, h = box
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _giou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _xyxy(a), _xyxy(b)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area_a + area_b - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def reference_cost(logits: np.ndarray, boxes: np.ndarray, labels: np.ndarray, gt: np.ndarray,
                   kind: str = "focal", weights=(2.0, 5.0, 2.0)) -> np.ndarray:
    """(N, M) float64 cost of one image, pair by pair."""
    n, m = len(boxes), len(gt)
    cost = np.zeros((n, m))
    for i in range(n):
        if kind == "softmax":
            z = np.exp(logits[i] - logits[i].max())
            probs = z / z.sum()
        for j in range(m):
            if kind == "focal":
                p = 1.0 / (1.0 + np.exp(-logits[i, labels[j]]))
                pos = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8)
                neg = 0.75 * p**2 * -np.log(1 - p + 1e-8)
                cls = pos - neg
            else:
                cls = -probs[labels[j]]
            l1 = np.abs(boxes[i] - gt[j]).sum()
            cost[i, j] = weights[0] * cls + weights[1] * l1 + weights[2] * -_giou(boxes[i], gt[j])
    return cost


def random_batch(seed: int, counts: list[int], num_queries: int = 12, num_logits: int = 5):
    rng = np.random.default_rng(seed)
    def boxes(k: int) -> np.ndarray:
        centre = rng.uniform(0.2, 0.8, size=(k, 2))
        size = rng.uniform(0.05, 0.4, size=(k, 2))
        return np.concatenate([centre, size], axis=1)
    outputs = {
        "pred_logits": torch.from_numpy(rng.normal(size=(len(counts), num_queries, num_logits))).float(),
        "pred_boxes": torch.from_numpy(np.stack([boxes(num_queries) for _ in counts])).float(),
    }
    targets = [
        {"labels": torch.from_numpy(rng.integers(0, num_logits - 1, size=m)),
         "boxes": torch.from_numpy(boxes(m)).float(),
         "image_id": torch.tensor([b])}
        for b, m in enumerate(counts)
    ]
    return outputs, targets


def check_optimal(matches, outputs, targets, kind="focal", weights=(2.0, 5.0, 2.0), capacity=1):
    assert len(matches) == len(targets)
    for b, (queries, tgt) in enumerate(matches):
        assert queries.dtype == torch.int64 and tgt.dtype == torch.int64
        assert torch.equal(queries, torch.sort(queries).values)
        m = len(targets[b]["labels"])
        cost = reference_cost(
            outputs["pred_logits"][b].double().numpy(), outputs["pred_boxes"][b].double().numpy(),
            targets[b]["labels"].numpy(), targets[b]["boxes"].double().numpy(), kind, weights,
        )
        n = cost.shape[0]
        assert len(queries) == min(n, m * capacity)
        assert len(set(queries.tolist())) == len(queries)
        if m:
            assert np.bincount(tgt.numpy(), minlength=m).max() <= capacity
        tiled = np.tile(cost, (1, capacity))
        rows, cols = scipy_lsa(tiled) if m else (np.array([], int), np.array([], int))
        expected = tiled[rows, cols].sum()
        got = cost[queries.numpy(), tgt.numpy()].sum()
        # The matcher solves the float32 cost: compare within float32 rounding of the totals.
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)


@given(seed=st.integers(0, 10_000), counts=st.lists(st.integers(0, 6), min_size=1, max_size=4))
def test_focal_matches_are_optimal_on_the_reference_cost(seed: int, counts: list[int]) -> None:
    outputs, targets = random_batch(seed, counts)
    check_optimal(HungarianMatcher()(outputs, targets), outputs, targets)


@given(seed=st.integers(0, 10_000), counts=st.lists(st.integers(0, 6), min_size=1, max_size=3))
def test_softmax_matches_with_custom_weights(seed: int, counts: list[int]) -> None:
    outputs, targets = random_batch(seed, counts)
    matcher = HungarianMatcher(1.0, 3.0, 0.5, class_cost="softmax")
    check_optimal(matcher(outputs, targets), outputs, targets, "softmax", (1.0, 3.0, 0.5))


@pytest.mark.parametrize("capacity", [2, 3])
def test_capacity_equals_matching_repeated_targets(capacity: int) -> None:
    outputs, targets = random_batch(7, [3, 0, 4], num_queries=14)
    matches = HungarianMatcher(capacity=capacity)(outputs, targets)
    check_optimal(matches, outputs, targets, capacity=capacity)


def test_padded_batch_equals_each_image_alone() -> None:
    outputs, targets = random_batch(3, [5, 1, 0, 3])
    together = HungarianMatcher()(outputs, targets)
    for b in range(4):
        alone = HungarianMatcher()({k: v[b : b + 1] for k, v in outputs.items()}, targets[b : b + 1])
        assert torch.equal(together[b][0], alone[0][0]) and torch.equal(together[b][1], alone[0][1])


def test_known_answer() -> None:
    # Query 1 sits exactly on target 0, query 2 exactly on target 1; query 0 is far from both.
    outputs = {
        "pred_logits": torch.zeros(1, 3, 2),
        "pred_boxes": torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.3, 0.6, 0.2, 0.3]]]),
    }
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.3, 0.6, 0.2, 0.3]])}]
    (queries, tgt), = HungarianMatcher()(outputs, targets)
    assert queries.tolist() == [1, 2] and tgt.tolist() == [0, 1]


def test_custom_cost_object() -> None:
    outputs, targets = random_batch(5, [4])
    matches = HungarianMatcher(cost=L1BoxCost())(outputs, targets)
    check_optimal(matches, outputs, targets, weights=(0.0, 1.0, 0.0))


def test_batched_form_on_the_prediction_device() -> None:
    outputs, targets = random_batch(11, [2, 0])
    assignment = HungarianMatcher().match(outputs, targets)
    assert assignment.shape == (2, 12) and assignment.dtype == torch.int64
    assert (assignment[1] == -1).all() and (assignment[0] >= 0).sum() == 2


def test_all_images_empty() -> None:
    outputs, targets = random_batch(1, [0, 0])
    for queries, tgt in HungarianMatcher()(outputs, targets):
        assert queries.shape == (0,) and tgt.shape == (0,) and queries.dtype == torch.int64


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(("label", "kind"), [(5, "focal"), (4, "softmax"), (-1, "focal")])
def test_label_out_of_range_names_image_and_index(label: int, kind: str) -> None:
    outputs, targets = random_batch(2, [2, 3])  # 5 logits: 5 focal classes, or 4 + no-object
    targets[1]["labels"][2] = label
    with pytest.raises(InvalidTargetError, match=rf"targets\[1\]\['labels'\]\[2\] is {label}: each targets\[b\]\['labels'\] must be in \[0, [45]\)"):
        HungarianMatcher(class_cost=kind)(outputs, targets)


def test_nan_prediction_names_image_and_query() -> None:
    outputs, targets = random_batch(4, [2, 3])
    outputs["pred_boxes"][1, 7, 2] = float("nan")
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_boxes'\]\[1, 7\] contains NaN \(image 1, query 7\)"):
        HungarianMatcher()(outputs, targets)


def test_nan_error_names_the_image_the_solver_read() -> None:
    # Image 0 has no targets, so its NaN query is never matched; image 1's NaN is the one to name.
    outputs, targets = random_batch(4, [0, 3])
    outputs["pred_boxes"][0, 1, 0] = float("nan")
    outputs["pred_boxes"][1, 5, 0] = float("nan")
    with pytest.raises(InvalidPredictionError, match=r"\(image 1, query 5\)"):
        HungarianMatcher()(outputs, targets)


def test_nan_policy_worst_survives_a_nan_query() -> None:
    outputs, targets = random_batch(4, [2, 3])
    outputs["pred_logits"][0, 3] = float("nan")
    with pytest.warns(UserWarning, match="NaN"):
        matches = HungarianMatcher(nan_policy="worst")(outputs, targets)
    assert 3 not in matches[0][0].tolist()


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda o, t: o.update(pred_boxes=o["pred_boxes"][..., :3]), ShapeError, r"pred_boxes must have shape \(B, N, 4\), got \(2, 12, 3\)"),
        (lambda o, t: t.pop(), ShapeError, "holds 2 images but 1 target dicts"),
        (lambda o, t: o.update(pred_logits=o["pred_logits"][:, :5]), ShapeError, "12 queries|5 queries"),
        (lambda o, t: t[0].pop("boxes"), InvalidTargetError, "boxes"),
        (lambda o, t: o.pop("pred_boxes"), InvalidPredictionError, r"outputs\['pred_boxes'\], which is missing"),
    ],
)
def test_bad_inputs(mutate, error, message) -> None:
    outputs, targets = random_batch(0, [2, 3])
    mutate(outputs, targets)
    with pytest.raises(error, match=message):
        HungarianMatcher()(outputs, targets)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match=r"unknown class_cost 'sigmoid': class_cost must be one of \['focal', 'softmax'\]"):
        HungarianMatcher(class_cost="sigmoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all cost weights are 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="cost_bbox must be a finite real number, got nan"):
        HungarianMatcher(cost_bbox=float("nan"))
    with pytest.raises(ValueError, match="capacity"):
        HungarianMatcher(capacity=0)
    with pytest.raises(ValueError, match="unknown backend 'sciypy'"):
        HungarianMatcher(backend="sciypy")
    with pytest.raises(TypeError, match="hybridmatch.costs.Cost"):
        HungarianMatcher(cost=lambda o, t: None)  # type: ignore[arg-type]


def test_numpy_numbers_are_accepted_as_settings() -> None:
    matcher = HungarianMatcher(np.float32(2.0), np.float64(5.0), 2, capacity=np.int64(3))
    assert matcher.capacity == 3 and isinstance(matcher.capacity, int)


def test_repr_names_the_cost() -> None:
    assert "FocalClassCost" in repr(HungarianMatcher()) and "capacity=1" in repr(HungarianMatcher())
