"""Mask costs against float64 formulas written here, grid_sample, and their limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given

from hybridmatch.costs import (
    MaskBCECost,
    MaskDiceCost,
    bce_cost_on_points,
    dice_cost_on_points,
    mask_bce_cost,
    mask_dice_cost,
    mask_points,
    point_sample,
)
from hybridmatch.errors import ConfigurationError, InvalidTargetError, ShapeError
from hybridmatch.targets import pad_targets

from .strategies import mask_batches


def reference_dice(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, P) logits, (M, P) targets -> (N, M), pair by pair in float64."""
    out = np.zeros((len(logits), len(targets)))
    for n, row in enumerate(logits):
        p = 1 / (1 + np.exp(-row))
        for m, t in enumerate(targets):
            out[n, m] = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return out


def reference_bce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = np.zeros((len(logits), len(targets)))
    for n, x in enumerate(logits):
        for m, t in enumerate(targets):
            # BCE with logits, written stably: max(x, 0) - x * t + log(1 + exp(-|x|)).
            out[n, m] = np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))
    return out


def blocky_batch(seed: int, batch: int = 2, queries: int = 4, targets: int = 3, size: int = 32, block: int = 8):
    """Masks that are constant on block x block tiles, so sampled costs approach the exact ones."""
    generator = torch.Generator().manual_seed(seed)
    tiles = size // block
    logits = torch.randn(batch, queries, tiles, tiles, generator=generator) * 3
    masks = torch.rand(batch, targets, tiles, tiles, generator=generator) > 0.5
    up = lambda x: x.repeat_interleave(block, -1).repeat_interleave(block, -2)  # noqa: E731
    return up(logits), up(masks)


# ---------------------------------------------------------------- exact mode vs float64 formulas


@pytest.mark.parametrize("seed", range(3))
def test_exact_costs_equal_float64_formulas(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 6, 5, generator=generator) * 4
    masks = torch.rand(2, 3, 6, 5, generator=generator) > 0.6
    dice = mask_dice_cost(logits, masks, num_points=None)
    bce = mask_bce_cost(logits, masks, num_points=None)
    assert dice.shape == bce.shape == (2, 4, 3) and dice.dtype == bce.dtype == torch.float32
    for b in range(2):
        x, t = logits[b].flatten(1).double().numpy(), masks[b].flatten(1).double().numpy()
        np.testing.assert_allclose(dice[b].double().numpy(), reference_dice(x, t), atol=1e-6)
        np.testing.assert_allclose(bce[b].double().numpy(), reference_bce(x, t), atol=1e-5)


def test_known_dice_value() -> None:
    # A prediction covering the top half (8 pixels) and a target equal to it: 1 - 17/17 = 0;
    # against a target of one other pixel: 1 - (0 + 1) / (8 + 1 + 1) = 0.9.
    logits = torch.full((1, 1, 4, 4), -50.0)
    logits[0, 0, :2] = 50.0
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = True
    masks[0, 1, 3, 3] = True
    torch.testing.assert_close(mask_dice_cost(logits, masks, num_points=None), torch.tensor([[[0.0, 0.9]]]))


def test_empty_targets_and_zero_predictions_are_finite() -> None:
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 1] = -1e4  # an extreme logit
    masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    for num_points in (None, 50):
        for function in (mask_dice_cost, mask_bce_cost):
            assert torch.isfinite(function(logits, masks, num_points)).all()
    # An empty target against an all-negative prediction is a perfect dice match.
    assert mask_dice_cost(logits, masks, None)[0, 1, 0].item() == pytest.approx(0.0, abs=1e-6)


def test_exact_mode_resizes_predictions_to_the_target_size() -> None:
    logits = torch.randn(1, 3, 4, 4)
    masks = torch.rand(1, 2, 8, 8) > 0.5
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mask_dice_cost(logits, masks, None), mask_dice_cost(up, masks, None))


# ---------------------------------------------------------------- sampling


def test_point_sample_equals_grid_sample_with_border_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.randn(2, 3, 7, 5, generator=generator)
    points = torch.rand(2, 40, 2, generator=generator)
    points[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.999, 0.001]])  # the borders
    want = F.grid_sample(masks, 2 * points[:, None] - 1, align_corners=False, padding_mode="border")[:, :, 0]
    torch.testing.assert_close(point_sample(masks, points), want)
    # Boolean masks are read without converting the whole mask first.
    binary = masks > 0
    want = F.grid_sample(binary.float(), 2 * points[:, None] - 1, align_corners=False, padding_mode="border")[:, :, 0]
    torch.testing.assert_close(point_sample(binary, points), want)


def test_given_points_are_used_for_both_sides() -> None:
    logits, masks = blocky_batch(1)
    points = torch.rand(2, 64, 2)
    pred, target = mask_points(logits, masks, points=points)
    torch.testing.assert_close(pred, point_sample(logits, points))
    torch.testing.assert_close(target, point_sample(masks, points))
    torch.testing.assert_close(
        mask_dice_cost(logits, masks, points=points), dice_cost_on_points(pred, target)
    )


def test_sampled_costs_converge_to_the_exact_ones() -> None:
    # Large tiles: the bilinear transitions between tiles cover a few percent of the image.
    logits, masks = blocky_batch(2, size=128, block=32)
    exact_dice, exact_bce = mask_dice_cost(logits, masks, None), mask_bce_cost(logits, masks, None)
    errors = []
    for num_points in (64, 20000):
        generator = torch.Generator().manual_seed(0)
        dice = mask_dice_cost(logits, masks, num_points, generator=generator)
        generator = torch.Generator().manual_seed(0)
        bce = mask_bce_cost(logits, masks, num_points, generator=generator)
        errors.append(((dice - exact_dice).abs().max().item(), (bce - exact_bce).abs().max().item()))
    (dice_small, bce_small), (dice_large, bce_large) = errors
    assert dice_large < 0.02 and bce_large < 0.04 * exact_bce.max().item()
    assert dice_large < dice_small and bce_large < bce_small


def test_sampled_memory_does_not_grow_with_resolution() -> None:
    profiler = pytest.importorskip("torch.profiler")

    def allocated(size: int, num_points: int | None) -> int:
        logits = torch.randn(2, 8, size, size)
        masks = torch.rand(2, 5, size, size) > 0.5
        with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            mask_dice_cost(logits, masks, num_points, generator=torch.Generator().manual_seed(0))
        return sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())

    small, large = allocated(32, 500), allocated(256, 500)
    assert large <= small * 1.05 + 4096
    # The exact mode, by contrast, allocates per pixel: the measurement can tell.
    assert allocated(256, None) > 8 * allocated(32, None)


def test_mask_costs_in_one_sum_share_one_point_sample() -> None:
    logits, masks = blocky_batch(3)
    padded = pad_targets(
        [{"labels": torch.zeros(3, dtype=torch.int64), "masks": masks[b]} for b in range(2)], require_boxes=False
    )
    outputs = {"pred_masks": logits}
    total = (2 * MaskDiceCost(100, seed=5) + 3 * MaskBCECost(100, seed=6))(outputs, padded)
    # The dice term draws the points (from its seed 5); the cross-entropy reuses them.
    pred, target = mask_points(logits, masks, 100, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(total, 2 * dice_cost_on_points(pred, target) + 3 * bce_cost_on_points(pred, target))
    # A seeded cost advances its stream: the next call draws new points.
    cost = MaskDiceCost(100, seed=5)
    assert not torch.equal(cost(outputs, padded), cost(outputs, padded))


# ---------------------------------------------------------------- properties


@given(mask_batches())
def test_property_bounds_and_finiteness(batch: tuple) -> None:
    logits, masks = batch
    dice = mask_dice_cost(logits, masks, None)
    bce = mask_bce_cost(logits, masks, None)
    assert ((dice >= -1e-6) & (dice <= 1 + 1e-6)).all()
    assert (bce >= 0).all() and torch.isfinite(bce).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_float32_costs(dtype: torch.dtype) -> None:
    logits, masks = blocky_batch(4)
    points = torch.rand(2, 200, 2)
    for function in (mask_dice_cost, mask_bce_cost):
        low = function(logits.to(dtype), masks, points=points)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, function(logits, masks, points=points), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- errors


def test_bad_mask_inputs() -> None:
    logits, masks = blocky_batch(5)
    with pytest.raises(ShapeError, match=r"predicted masks must have shape \(B, N, H, W\)"):
        mask_dice_cost(logits.flatten(2), masks)
    with pytest.raises(ShapeError, match=r"target masks must have shape \(B, M, H, W\) once padded"):
        mask_bce_cost(logits, masks[:, :, 0])
    with pytest.raises(ShapeError, match=r"different batch sizes"):
        mask_dice_cost(logits, masks[:1])
    with pytest.raises(ConfigurationError, match=r"num_points must be an int >= 1, got 0"):
        MaskDiceCost(0)
    with pytest.raises(InvalidTargetError, match=r"targets\[1\]\['masks'\] has shape \(3, 16, 16\) but targets\[0\]\['masks'\] has shape \(3, 32, 32\)"):
        pad_targets(
            [{"labels": torch.zeros(3, dtype=torch.int64), "masks": masks[0]},
             {"labels": torch.zeros(3, dtype=torch.int64), "masks": masks[1, :, :16, :16]}],
            require_boxes=False,
        )
