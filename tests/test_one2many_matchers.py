"""One-to-many matchers against independent references.

* OneToManyMatcher: scipy on K explicit copies of the float64 reference cost of
  tests/test_matchers.py.
* GroupMatcher: scipy on each group's slice of that reference cost, and a
  HungarianMatcher run on the slice alone.
* TopKMatcher: a plain python loop over targets and queries with IoU (and the
  class probability) computed in float64 here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch import GroupMatcher, HungarianMatcher, OneToManyMatcher, TopKMatcher
from hybridmatch.errors import InvalidCostError, InvalidPredictionError, InvalidTargetError, ShapeError
from hybridmatch.matchers import assignment_to_repeated, topk_assignment
from hybridmatch.targets import original_target_index, repeat_targets

from .test_matchers import reference_cost, random_batch

counts_strategy = st.lists(st.integers(0, 5), min_size=1, max_size=4)


def image_cost(outputs, targets, b: int) -> np.ndarray:
    return reference_cost(
        outputs["pred_logits"][b].double().numpy(), outputs["pred_boxes"][b].double().numpy(),
        targets[b]["labels"].numpy(), targets[b]["boxes"].double().numpy(),
    )


def optimal_total(cost: np.ndarray) -> float:
    if cost.size == 0:
        return 0.0
    rows, cols = scipy_lsa(cost)
    return float(cost[rows, cols].sum())


def check_format(matches, num_images: int) -> None:
    assert len(matches) == num_images
    for queries, tgt in matches:
        assert queries.dtype == torch.int64 and tgt.dtype == torch.int64
        assert queries.device.type == "cpu" and tgt.device.type == "cpu"
        assert queries.shape == tgt.shape
        assert torch.equal(queries, torch.sort(queries).values)
        assert len(set(queries.tolist())) == len(queries)


# ------------------------------------------------------------ OneToManyMatcher


@given(seed=st.integers(0, 10_000), counts=counts_strategy, k=st.integers(1, 4))
def test_one_to_many_equals_scipy_on_k_copies(seed: int, counts: list[int], k: int) -> None:
    outputs, targets = random_batch(seed, counts, num_queries=10)
    matches = OneToManyMatcher(k)(outputs, targets)
    check_format(matches, len(counts))
    for b, (queries, tgt) in enumerate(matches):
        m = counts[b]
        cost = image_cost(outputs, targets, b)
        assert len(queries) == min(10, k * m)
        if m:
            assert np.bincount(tgt.numpy(), minlength=m).max() <= k
        expected = optimal_total(np.tile(cost, (1, k)))  # K explicit copies, GT-major
        got = cost[queries.numpy(), tgt.numpy()].sum()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)


@given(seed=st.integers(0, 10_000), counts=counts_strategy, k=st.integers(1, 4))
def test_repeated_indices_address_repeated_targets(seed: int, counts: list[int], k: int) -> None:
    outputs, targets = random_batch(seed, counts, num_queries=10)
    matcher = OneToManyMatcher(k)
    original = matcher(outputs, targets)
    repeated = matcher.match_repeated(outputs, targets)
    repeated_targets = repeat_targets(targets, k)
    check_format(repeated, len(counts))
    for b, ((queries, tgt), (queries0, tgt0)) in enumerate(zip(repeated, original)):
        m = counts[b]
        assert torch.equal(queries, queries0)
        assert len(set(tgt.tolist())) == len(tgt)  # each copy at most once
        assert all(0 <= t < k * m for t in tgt.tolist())
        assert torch.equal(original_target_index(tgt, m) if m else tgt, tgt0)
        # The r-th query on target j (query order) takes copy r: index r * M + j.
        seen: dict[int, int] = {}
        for t0, t in zip(tgt0.tolist(), tgt.tolist()):
            assert t == seen.get(t0, 0) * m + t0
            seen[t0] = seen.get(t0, 0) + 1
        # Total cost against the repeated targets, computed from them, is the optimum.
        cost_repeated = reference_cost(
            outputs["pred_logits"][b].double().numpy(), outputs["pred_boxes"][b].double().numpy(),
            repeated_targets[b]["labels"].numpy(), repeated_targets[b]["boxes"].double().numpy(),
        )
        got = cost_repeated[queries.numpy(), tgt.numpy()].sum()
        assert got == pytest.approx(optimal_total(cost_repeated), rel=1e-5, abs=1e-4)


def test_assignment_to_repeated_known_answer() -> None:
    # Image 0 (M = 2): target 1 taken by queries 0, 2, 4 -> copies 0, 1, 2 -> 1, 3, 5.
    # Image 1 (M = 3): target 2 by queries 1, 3 -> 2, 5; target 0 by query 4 -> 0.
    assignment = torch.tensor([[1, 0, 1, -1, 1], [-1, 2, -1, 2, 0]])
    result = assignment_to_repeated(assignment, torch.tensor([2, 3]))
    assert result.tolist() == [[1, 0, 3, -1, 5], [-1, 2, -1, 5, 0]]
    with pytest.raises(ShapeError, match="num_targets must hold one int per image"):
        assignment_to_repeated(assignment, [2])
    with pytest.raises(ShapeError, match=r"assignment must be a \(B, N\) integer tensor"):
        assignment_to_repeated(assignment.float(), [2, 3])


def test_one_to_many_settings() -> None:
    matcher = OneToManyMatcher(3, cost_bbox=1.0, class_cost="softmax")
    assert matcher.k == 3 and matcher.capacity == 3 and isinstance(matcher, HungarianMatcher)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"OneToManyMatcher\(k=.*\): capacity must be an int >= 1"):
            OneToManyMatcher(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------- GroupMatcher


@given(seed=st.integers(0, 10_000), counts=counts_strategy, groups=st.sampled_from([1, 2, 3]))
def test_group_matcher_equals_each_group_alone(seed: int, counts: list[int], groups: int) -> None:
    n = 4
    outputs, targets = random_batch(seed, counts, num_queries=groups * n)
    matches = GroupMatcher(groups)(outputs, targets)
    check_format(matches, len(counts))
    for b, (queries, tgt) in enumerate(matches):
        m = counts[b]
        cost = image_cost(outputs, targets, b)
        assert len(queries) == groups * min(n, m)
        for g in range(groups):
            in_group = (queries >= g * n) & (queries < (g + 1) * n)
            q, t = queries[in_group], tgt[in_group]
            # Per group: one-to-one, optimal on that group's rows of the reference cost.
            assert len(set(t.tolist())) == len(t) == min(n, m)
            block = cost[g * n : (g + 1) * n]
            got = block[q.numpy() - g * n, t.numpy()].sum()
            assert got == pytest.approx(optimal_total(block), rel=1e-5, abs=1e-4)
            # And the same pairs as a HungarianMatcher run on the slice alone.
            sliced = {key: value[b : b + 1, g * n : (g + 1) * n] for key, value in outputs.items()}
            (alone_q, alone_t), = HungarianMatcher()(sliced, targets[b : b + 1])
            assert torch.equal(q, alone_q + g * n) and torch.equal(t, alone_t)


def test_group_matcher_batched_form_and_inner_matcher() -> None:
    outputs, targets = random_batch(3, [2, 0, 3], num_queries=12)
    inner = HungarianMatcher(1.0, 3.0, 1.0, class_cost="softmax")
    assignment = GroupMatcher(3, matcher=inner).match(outputs, targets)
    assert assignment.shape == (3, 12) and assignment.dtype == torch.int64
    assert (assignment[1] == -1).all()
    for g in range(3):
        expected = inner.match({k: v[:, g * 4 : (g + 1) * 4] for k, v in outputs.items()}, targets)
        assert torch.equal(assignment[:, g * 4 : (g + 1) * 4], expected)


def test_group_matcher_errors() -> None:
    outputs, targets = random_batch(0, [2, 1], num_queries=10)
    with pytest.raises(ShapeError, match=r"10 queries cannot be split into num_groups=3 equal groups"):
        GroupMatcher(3)(outputs, targets)
    with pytest.raises(ValueError, match=r"GroupMatcher: num_groups must be an int >= 1, got 0"):
        GroupMatcher(0)
    with pytest.raises(TypeError, match="matcher must be a HungarianMatcher"):
        GroupMatcher(2, matcher=TopKMatcher())  # type: ignore[arg-type]
    # Errors name the image and query of the full batch, not of a group.
    outputs["pred_boxes"][1, 7, 0] = float("nan")
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_boxes'\]\[1, 7\] contains NaN"):
        GroupMatcher(2)(outputs, targets)
    outputs, targets = random_batch(0, [2, 1], num_queries=10)
    targets[1]["labels"][0] = 9
    with pytest.raises(InvalidTargetError, match=r"targets\[1\]\['labels'\]\[0\] is 9"):
        GroupMatcher(2)(outputs, targets)


# -------------------------------------------------------------- TopKMatcher


def _iou64(a, b) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def reference_topk(outputs, targets, b: int, k: int, threshold: float, quality: str, alpha: float):
    """Per target: sort queries by float64 quality, keep the top k above threshold; then
    each claimed query goes to its best target (ties: lower target)."""
    boxes = outputs["pred_boxes"][b].double().tolist()
    gt = targets[b]["boxes"].double().tolist()
    labels = targets[b]["labels"].tolist()
    logits = outputs["pred_logits"][b].double()
    score = {}
    for j in range(len(gt)):
        for i in range(len(boxes)):
            q = _iou64(boxes[i], gt[j])
            if quality == "iou_class":
                p = 1.0 / (1.0 + math.exp(-float(logits[i, labels[j]])))
                q = p**alpha * q ** (1 - alpha)
            score[i, j] = q
    claims: dict[int, list[int]] = {}
    for j in range(len(gt)):
        ranked = sorted(range(len(boxes)), key=lambda i: (-score[i, j], i))[:k]
        for i in ranked:
            if score[i, j] >= threshold and score[i, j] > 0:
                claims.setdefault(i, []).append(j)
    pairs = sorted((i, max(js, key=lambda j: (score[i, j], -j))) for i, js in claims.items())
    return [i for i, _ in pairs], [j for _, j in pairs]


def overlapping_batch(seed: int, counts: list[int], num_queries: int = 12):
    """random_batch with queries jittered around the targets, so IoUs are mostly > 0."""
    outputs, targets = random_batch(seed, counts, num_queries=num_queries)
    rng = np.random.default_rng(seed + 1)
    for b, target in enumerate(targets):
        if len(target["boxes"]):
            near = target["boxes"][torch.from_numpy(rng.integers(0, len(target["boxes"]), num_queries))]
            jitter = torch.from_numpy(rng.normal(0, 0.05, size=(num_queries, 4))).float()
            outputs["pred_boxes"][b] = (near + jitter).clamp(0.01, 0.99)
    return outputs, targets


@given(
    seed=st.integers(0, 10_000),
    counts=counts_strategy,
    k=st.integers(1, 5),
    threshold=st.sampled_from([0.0, 0.3, 0.6]),
    quality=st.sampled_from(["iou", "iou_class"]),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_topk_equals_brute_force(seed, counts, k, threshold, quality, alpha) -> None:
    outputs, targets = overlapping_batch(seed, counts)
    matcher = TopKMatcher(k, threshold=threshold, quality=quality, alpha=alpha)
    matches = matcher(outputs, targets)
    check_format(matches, len(counts))
    for b, (queries, tgt) in enumerate(matches):
        expected = reference_topk(outputs, targets, b, k, threshold, quality, alpha)
        assert (queries.tolist(), tgt.tolist()) == expected
        if counts[b]:
            assert np.bincount(tgt.numpy(), minlength=counts[b]).max(initial=0) <= k


def test_topk_known_answer_and_ties() -> None:
    # Dyadic coordinates, so float32 IoUs are exact. Target 0 spans x 0.125-0.375, target 1
    # x 0.375-0.625 (both y 0.375-0.625). Queries 0 and 1 are the same half-height box inside
    # target 0 (IoU 0.5; they touch target 1: IoU 0); query 2 is target 0, query 3 target 1;
    # query 4 spans x 0.25-0.5: IoU 1/3 with both targets (a tie -> lower target index).
    outputs = {"pred_boxes": torch.tensor([[
        [0.25, 0.5, 0.25, 0.125], [0.25, 0.5, 0.25, 0.125], [0.25, 0.5, 0.25, 0.25],
        [0.5, 0.5, 0.25, 0.25], [0.375, 0.5, 0.25, 0.25]]])}
    targets = [{"labels": torch.tensor([0, 0]),
                "boxes": torch.tensor([[0.25, 0.5, 0.25, 0.25], [0.5, 0.5, 0.25, 0.25]])}]
    # k=2 for target 0: query 2 (IoU 1), then the tie at 0.5 goes to query 0 (lower index).
    (queries, tgt), = TopKMatcher(2)(outputs, targets)
    assert queries.tolist() == [0, 2, 3, 4] and tgt.tolist() == [0, 0, 1, 1]
    # k=4: target 0 takes 2, 0, 1, 4; target 1 takes 3, 4; query 4 has IoU 1/3 with both -> target 0.
    assert TopKMatcher(4)(outputs, targets)[0][1].tolist() == [0, 0, 0, 1, 0]


def test_topk_empty_and_below_threshold() -> None:
    outputs, targets = overlapping_batch(2, [0, 3, 0])
    matches = TopKMatcher(3)(outputs, targets)
    assert matches[0][0].shape == (0,) and matches[2][0].shape == (0,)
    assert matches[0][0].dtype == torch.int64 and len(matches[1][0]) > 0
    # Boxes far from every target (IoU 0): nothing is assigned, whatever k and threshold.
    outputs["pred_boxes"][:] = torch.tensor([0.05, 0.05, 0.02, 0.02])
    targets[1]["boxes"][:] = torch.tensor([0.8, 0.8, 0.1, 0.1])
    for threshold in (0.0, 0.5):
        assert all(len(q) == 0 for q, _ in TopKMatcher(12, threshold=threshold)(outputs, targets))
    # A threshold of 1 keeps only exact overlaps.
    outputs, targets = overlapping_batch(4, [2])
    assert len(TopKMatcher(5, threshold=1.0)(outputs, targets)[0][0]) == 0
    outputs["pred_boxes"][0, 6] = targets[0]["boxes"][1]
    (queries, tgt), = TopKMatcher(5, threshold=1.0)(outputs, targets)
    assert queries.tolist() == [6] and tgt.tolist() == [1]


def test_topk_padded_targets_are_ignored() -> None:
    # Image 0 has 1 target, image 1 has 4: image 0's padded columns must claim nothing.
    outputs, targets = overlapping_batch(5, [1, 4])
    outputs["pred_boxes"][0] = torch.tensor([0.5, 0.5, 1.0, 1.0])  # equal to the padding box
    assignment = TopKMatcher(3).match(outputs, targets)
    assert int(assignment[0].max()) <= 0


def test_topk_assignment_function() -> None:
    quality = torch.tensor([[[0.9, 0.8], [0.5, 0.0], [0.2, 0.6]]])
    assert topk_assignment(quality, 2).tolist() == [[0, 0, 1]]
    assert topk_assignment(quality, 1).tolist() == [[0, -1, -1]]  # query 0 best for both
    assert topk_assignment(quality, 2, threshold=0.55).tolist() == [[0, -1, 1]]
    assert topk_assignment(quality, 5, valid=torch.tensor([[False, True]])).tolist() == [[1, -1, 1]]
    assert topk_assignment(torch.zeros(2, 0, 3), 2).shape == (2, 0)
    assert topk_assignment(torch.zeros(2, 4, 0), 2).tolist() == [[-1] * 4] * 2
    nan = quality.clone()
    nan[0, 0, 0] = float("nan")
    assert topk_assignment(nan, 2).tolist() == [[1, 0, 1]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"TopKMatcher: k must be an int >= 1, got 0"),
        ({"k": 2.0}, r"TopKMatcher: k must be an int >= 1, got 2.0"),
        ({"threshold": 1.5}, r"TopKMatcher: threshold must be a finite real number in \[0, 1\], got 1.5"),
        ({"threshold": -0.1}, r"threshold must be a finite real number in \[0, 1\]"),
        ({"alpha": 2}, r"TopKMatcher: alpha must be a finite real number in \[0, 1\], got 2"),
        ({"alpha": float("nan")}, r"alpha must be a finite real number in \[0, 1\], got nan"),
        ({"alpha": 2, "quality": "iou_class"}, r"TopKMatcher: alpha must be a finite real number in \[0, 1\], got 2"),
        ({"quality": "giou"}, r"TopKMatcher: unknown quality 'giou': quality must be one of \['iou', 'iou_class'\]"),
        ({"nan_policy": "zero"}, r"nan_policy must be one of"),
    ],
)
def test_topk_bad_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TopKMatcher(**kwargs)


def test_topk_bad_inputs() -> None:
    outputs, targets = overlapping_batch(1, [2, 3])
    with pytest.raises(InvalidPredictionError, match=r"reads outputs\['pred_logits'\], which is missing"):
        TopKMatcher(quality="iou_class")({"pred_boxes": outputs["pred_boxes"]}, targets)
    with pytest.raises(InvalidPredictionError, match=r"reads outputs\['pred_boxes'\], which is missing"):
        TopKMatcher()({"pred_logits": outputs["pred_logits"]}, targets)
    with pytest.raises(ShapeError, match="holds 2 images but 1 target dicts"):
        TopKMatcher()(outputs, targets[:1])
    bad = [dict(t) for t in targets]
    bad[1]["labels"] = bad[1]["labels"].clone()
    bad[1]["labels"][2] = 5
    with pytest.raises(InvalidTargetError, match=r"targets\[1\]\['labels'\]\[2\] is 5: each targets\[b\]\['labels'\] must be in \[0, 5\)"):
        TopKMatcher(quality="iou_class")(outputs, bad)
    outputs["pred_boxes"][1, 4, 1] = float("nan")
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_boxes'\]\[1, 4\] contains NaN"):
        TopKMatcher()(outputs, targets)
    with pytest.warns(UserWarning, match="NaN"):
        matches = TopKMatcher(nan_policy="worst")(outputs, targets)
    assert 4 not in matches[1][0].tolist()
    assert issubclass(InvalidPredictionError, ValueError) and issubclass(InvalidCostError, ValueError)
