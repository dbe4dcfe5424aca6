"""Each finding of the third bad-input probe (issue 20), with the fix's test.

Every finding has a test here that failed before the fix; the references are independent
of the code under test (brute force over permutations in exact arithmetic, hand-checked
cases, the unbatched inputs' own shapes).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from hybridmatch import (
    ConfigurationError,
    Hungarian,
    HybridMatchWarning,
    InvalidPredictionError,
    InvalidTargetError,
    KeypointL1Cost,
    L1BoxCost,
    MaskBCECost,
    MaskDiceCost,
    Matcher,
    OKSCost,
    ShapeError,
    available_backends,
    batched_linear_sum_assignment,
)
from hybridmatch.attention import check_attention_mask, hybrid_attention_mask
from hybridmatch.costs import keypoint_l1_cost, mask_bce_cost, mask_dice_cost, oks_cost, point_sample

CPU_BACKENDS = [name for name in ("scipy", "lap", "native") if name in available_backends()]


def poses(batch: int, queries: int, targets: int, joints: int = 17, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, queries, joints, 2, generator=generator)
    target = torch.rand(batch, targets, joints, 3, generator=generator)
    target[..., 2] = 2.0
    return pred, target, torch.ones(batch, targets)


# --------------------------------------------------------------------------------------------
# Finding 1: COCO's flat keypoints with no people, and B = 0.


@pytest.mark.parametrize("cost", [OKSCost(), KeypointL1Cost()], ids=["oks", "l1"])
def test_flat_keypoints_without_people(cost) -> None:
    targets = [
        {"labels": torch.zeros(0, dtype=torch.long), "keypoints": torch.zeros(0, 51), "area": torch.zeros(0)}
    ] * 2
    matches = Matcher(cost, Hungarian())({"pred_keypoints": torch.rand(2, 4, 34)}, targets)
    assert [(p.tolist(), t.tolist()) for p, t in matches] == [([], []), ([], [])]
    assert Matcher(cost, Hungarian())({"pred_keypoints": torch.rand(0, 4, 34)}, []) == []


def test_flat_keypoint_functions_without_people() -> None:
    assert oks_cost(torch.rand(2, 4, 34), torch.zeros(2, 0, 51), torch.zeros(2, 0)).shape == (2, 4, 0)
    assert keypoint_l1_cost(torch.rand(2, 4, 34), torch.zeros(2, 0, 51)).shape == (2, 4, 0)
    assert keypoint_l1_cost(torch.rand(0, 4, 34), torch.zeros(0, 3, 51)).shape == (0, 4, 3)


# --------------------------------------------------------------------------------------------
# Finding 2: negative or infinite areas, NaN visibility.


@pytest.mark.parametrize("area", [-1.0, -1e-6, math.inf, math.nan])
def test_bad_area_raises_naming_it(area: float) -> None:
    pred, target, areas = poses(1, 3, 2)
    areas[0, 1] = area
    with pytest.raises(InvalidTargetError, match=r"oks_cost: area\[0, 1\] is .*must be finite and >= 0"):
        oks_cost(pred, target, areas)


def test_negative_area_through_the_matcher_names_the_target_entry() -> None:
    pred, target, _ = poses(1, 4, 2)
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "keypoints": target[0], "area": torch.tensor([5.0, -2.0])}]
    with pytest.raises(InvalidTargetError, match=r"targets\[0\]\['area'\]\[1\] is -2.0"):
        Matcher(OKSCost(), Hungarian())({"pred_keypoints": pred}, targets)


def test_nan_visibility_raises_and_unlabelled_coordinates_may_be_anything() -> None:
    pred, target, area = poses(1, 3, 2)
    target[0, 1, 4, 2] = math.nan
    for call in (lambda: oks_cost(pred, target, area), lambda: keypoint_l1_cost(pred, target)):
        with pytest.raises(InvalidTargetError, match=r"target_keypoints\[0, 1, 4, 2\] is nan"):
            call()
    # COCO stores unlabelled keypoints as (0, 0, 0); any (x, y) there is ignored, NaN included.
    target[0, 1, 4] = torch.tensor([math.nan, math.nan, 0.0])
    assert torch.isfinite(oks_cost(pred, target, area)).all()
    flat = target.reshape(1, 2, 51)
    flat[0, 0, 5] = -1.0  # keypoint 1's visibility, in the flat layout
    with pytest.raises(InvalidTargetError, match=r"target_keypoints\[0, 0, 5\] is -1.0"):
        keypoint_l1_cost(pred, flat)


def test_keypoint_cost_names_padded_target_entries() -> None:
    pred, target, _ = poses(2, 3, 2)
    target[1, 0, 2, 2] = math.nan
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "keypoints": target[b]} for b in range(2)]
    with pytest.raises(InvalidTargetError, match=r"KeypointL1Cost: targets\[1\]\['keypoints'\]\[0, 2, 2\] is nan"):
        Matcher(KeypointL1Cost(), Hungarian())({"pred_keypoints": pred}, targets)


# --------------------------------------------------------------------------------------------
# Finding 3 (and the unclear messages): unbatched keypoints are refused, naming the shapes passed.


def test_unbatched_keypoints_with_equal_counts_are_refused() -> None:
    target = torch.rand(3, 17, 3)
    target[..., 2] = 2
    with pytest.raises(ShapeError, match=r"target_keypoints of shape \(3, 17, 3\) is ambiguous.*\[None\]") as error:
        keypoint_l1_cost(torch.rand(3, 17, 2), target)
    assert "(3, 17, 1, 3)" not in str(error.value)
    # The batched form of the same data: one image, 3 queries against 3 targets.
    assert keypoint_l1_cost(torch.rand(3, 17, 2)[None], target[None]).shape == (1, 3, 3)


def test_unbatched_prediction_message_names_its_shape() -> None:
    _, target, area = poses(1, 3, 3)
    with pytest.raises(ShapeError, match=r"pred_keypoints of shape \(2, 17, 2\) is ambiguous") as error:
        oks_cost(torch.rand(2, 17, 2), target, area)
    assert "(2, 17, 1, 2)" not in str(error.value)


def test_flat_layout_still_works() -> None:
    pred, target, area = poses(2, 4, 3, joints=5)
    flat = oks_cost(pred.reshape(2, 4, 10), target.reshape(2, 3, 15), area, sigmas=[0.1] * 5)
    assert torch.equal(flat, oks_cost(pred, target, area, sigmas=[0.1] * 5))


# --------------------------------------------------------------------------------------------
# Finding 4: masks stored as 0/255.


@pytest.mark.parametrize("function", [mask_dice_cost, mask_bce_cost])
@pytest.mark.parametrize("num_points", [None, 50])
def test_uint8_masks_of_255_raise(function, num_points) -> None:
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.uint8)
    masks[0, 1, 2:6, 2:6] = 255
    with pytest.raises(InvalidTargetError, match=r"target_masks\[0, 1\] holds [0-9.]+: .*in \[0, 1\].*0/255"):
        function(torch.randn(1, 3, 8, 8), masks, num_points, generator=torch.Generator().manual_seed(0))
    ones = (masks > 0).to(torch.uint8)  # 0/1 uint8 masks are the bool masks
    assert torch.equal(function(torch.ones(1, 3, 8, 8), ones, None), function(torch.ones(1, 3, 8, 8), ones > 0, None))


@pytest.mark.parametrize("cost", [MaskDiceCost(num_points=None), MaskBCECost(num_points=64, seed=0)])
def test_mask_costs_name_the_target_dict_entry(cost) -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[1, :4] = 255
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "masks": masks}]
    with pytest.raises(InvalidTargetError, match=r"targets\[0\]\['masks'\]\[1\] holds 255.0"):
        Matcher(cost, Hungarian())({"pred_masks": torch.randn(1, 3, 8, 8)}, targets)


# --------------------------------------------------------------------------------------------
# Finding 5: +inf in an additive attention mask.


def test_additive_mask_with_plus_inf_is_refused() -> None:
    mask = torch.zeros(4, 4)
    mask[0, 1] = math.inf
    with pytest.raises(ShapeError, match=r"attn_mask\[0, 1\] is inf: attn_mask must be finite, or -inf where blocked"):
        check_attention_mask(mask, 4)
    mask[0, 1] = -math.inf
    check_attention_mask(mask, 4)


# --------------------------------------------------------------------------------------------
# Finding 6: costs near float64's limit.


def _best_total(cost: np.ndarray) -> float:
    """The maximum over all permutations, summed after an exact power-of-two scale."""
    n = cost.shape[0]
    return max(sum(math.ldexp(cost[i, p[i]], -1000) for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scale", [1e308, 1.7e308])
def test_costs_near_the_float64_limit_are_solved_optimally(backend: str, scale: float) -> None:
    # seed 34 at 1e308: scipy reached 0.59 of the optimum; 27 at 1.7e308: native missed it
    for seed in [34, 27, *range(6)]:
        cost = np.random.default_rng(seed).uniform(-1, 1, (4, 4)) * scale
        columns = batched_linear_sum_assignment(cost, backend=backend, maximize=True)
        total = sum(math.ldexp(cost[i, columns[i]], -1000) for i in range(4))
        best = _best_total(cost)
        assert total == pytest.approx(best, rel=1e-12), (seed, backend)


# --------------------------------------------------------------------------------------------
# Finding 7: int64 costs above 2**53.

# Costs 2**60 + 0..63: float64 rounds them to multiples of 256, where scipy missed the optimum by 30.
LARGE_INT = np.array(
    [
        [1152921504606846995, 1152921504606847031, 1152921504606847003],
        [1152921504606846993, 1152921504606847028, 1152921504606846992],
        [1152921504606847002, 1152921504606847017, 1152921504606847011],
    ],
    dtype=np.int64,
)


def _exact_best(cost: np.ndarray) -> int:
    n = cost.shape[0]
    return min(sum(int(cost[i, p[i]]) for i in range(n)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_large_int64_costs_are_solved_exactly(backend: str, as_tensor: bool) -> None:
    cost = torch.from_numpy(LARGE_INT) if as_tensor else LARGE_INT
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)  # reducible: no warning needed
        columns = np.asarray(batched_linear_sum_assignment(cost, backend=backend))
    assert sum(int(LARGE_INT[i, columns[i]]) for i in range(3)) == _exact_best(LARGE_INT)


def test_large_int64_costs_reduce_by_columns_when_queries_outnumber_targets() -> None:
    cost = np.concatenate([LARGE_INT, LARGE_INT.T], axis=0)  # 6 queries, 3 targets
    cost[:, 1] += 2**40  # column offsets that a row reduction could not remove
    best = min(
        sum(int(cost[rows[j], j]) for j in range(3)) for rows in itertools.permutations(range(6), 3)
    )
    for backend in CPU_BACKENDS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", HybridMatchWarning)
            columns = batched_linear_sum_assignment(cost, backend=backend)
        assert sum(int(cost[i, columns[i]]) for i in range(6) if columns[i] >= 0) == best


def test_irreducible_int64_costs_warn_once() -> None:
    cost = np.array([[2**62, 0], [0, 2**62], [3, 2**61]], dtype=np.int64)
    with pytest.warns(HybridMatchWarning, match="too far apart to reduce below 2\\*\\*53"):
        batched_linear_sum_assignment(cost)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        batched_linear_sum_assignment(cost)  # said once


# --------------------------------------------------------------------------------------------
# Finding 8: Hungarian's documented capacity cap.


def test_hungarian_capacity_cap_is_warned_once() -> None:
    cost = torch.tensor([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]])
    with pytest.warns(HybridMatchWarning, match=r"capacity=10 is more than the 3 queries.*capped at 3") as record:
        assignment = Hungarian(capacity=10)(cost, [2])
    assert all(w.filename == __file__ for w in record)
    assert torch.equal(assignment, Hungarian(capacity=3)(cost, [2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        Hungarian(capacity=10)(cost, [2])
        Hungarian(capacity=2)(cost, [2])


# --------------------------------------------------------------------------------------------
# The unclear messages.


def test_nan_point_names_the_point() -> None:
    with pytest.raises(ShapeError, match=r"point_sample: points\[0, 0, 0\] is nan: points must be finite \(x, y\) in \[0, 1\]"):
        point_sample(torch.rand(1, 1, 5, 5), torch.tensor([[[math.nan, 0.5]]]))
    with pytest.raises(ShapeError, match=r"points\[0, 0, 1\] is 1.5"):
        point_sample(torch.rand(1, 1, 5, 5), torch.tensor([[[0.5, 1.5]]]))


def test_sigmas_must_be_numbers() -> None:
    with pytest.raises(ConfigurationError, match=r"OKSCost: sigmas must be a sequence of finite real numbers > 0, got 'abc'"):
        OKSCost(sigmas="abc")  # type: ignore[arg-type]
    assert OKSCost(sigmas=torch.full((3,), 0.5)).sigmas == (0.5, 0.5, 0.5)


def test_huge_attention_sizes_are_refused() -> None:
    with pytest.raises(ShapeError, match=r"num_one2one must be an int in \[0, 3037000499\].*more elements than a tensor"):
        hybrid_attention_mask(2**62, 2**62)
    with pytest.raises(ShapeError, match=r"T = the sum of the group sizes must be an int in \[0, 3037000499\]"):
        hybrid_attention_mask(3_000_000_000, 3_000_000_000)


@pytest.mark.parametrize("shape", [(1, 3, 0, 8), (1, 3, 8, 0)])
def test_masks_without_pixels_are_refused(shape) -> None:
    with pytest.raises(ShapeError, match=r"predicted masks of shape \(1, 3, .*\) have no pixels"):
        mask_dice_cost(torch.randn(*shape), torch.zeros(1, 2, 8, 8), num_points=10)
    with pytest.raises(ShapeError, match="target masks of shape .* have no pixels"):
        mask_bce_cost(torch.randn(1, 3, 8, 8), torch.zeros(*shape[:1], 2, *shape[2:]), num_points=10)
    # No masks at all is fine whatever their size: an empty cost.
    assert mask_dice_cost(torch.randn(1, 3, 8, 8), torch.zeros(1, 0, 0, 0), num_points=10).shape == (1, 3, 0)


@pytest.mark.parametrize("backend", [name for name in ("scipy", "lap") if name in CPU_BACKENDS])
def test_negative_bit_tensors_are_solved(backend: str) -> None:
    base = torch.tensor([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]])
    lazy = torch._neg_view(-base)  # equal to base, with the negative bit set
    assert lazy.is_neg()
    assert torch.equal(batched_linear_sum_assignment(lazy, backend=backend), torch.tensor([[1, 0, 2]]))


def test_meta_outputs_are_named() -> None:
    targets = [{"labels": torch.zeros(1, dtype=torch.long), "boxes": torch.rand(1, 4)}]
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_boxes'\] is on the meta device"):
        Matcher(L1BoxCost(), Hungarian())({"pred_boxes": torch.rand(1, 3, 4, device="meta")}, targets)
