"""Keypoint costs: OKS against pycocotools' computeOks, keypoint L1 against a float64 formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybridmatch.costs import (
    COCO_KEYPOINT_SIGMAS,
    KeypointL1Cost,
    OKSCost,
    keypoint_l1_cost,
    oks_cost,
)
from hybridmatch.errors import ConfigurationError, InvalidTargetError, ShapeError
from hybridmatch.targets import pad_targets

from .strategies import poses

COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval


def pycocotools_oks(pred: np.ndarray, target: np.ndarray, area: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """``computeOks`` of pycocotools on one image: pred (N, J, 2), target (M, J, 3), area (M,) -> (N, M)."""
    evaluator = COCOeval(iouType="keypoints")
    evaluator.params.kpt_oks_sigmas = sigmas
    evaluator.params.maxDets = [len(pred) + 1]
    # computeOks sorts detections by descending score: give them descending scores in order.
    dts = [
        {"keypoints": np.concatenate([p, np.ones((len(p), 1))], axis=1).ravel().tolist(), "score": 1.0 - i * 1e-3}
        for i, p in enumerate(pred)
    ]
    gts = [
        {"keypoints": t.ravel().tolist(), "area": float(a), "bbox": [0.0, 0.0, 1.0, 1.0]}
        for t, a in zip(target, area)
    ]
    evaluator._gts = {(0, 1): gts}
    evaluator._dts = {(0, 1): dts}
    ious = evaluator.computeOks(0, 1)
    return np.asarray(ious, dtype=np.float64).reshape(len(pred), len(target))


def random_poses(seed: int, batch: int, queries: int, targets: int, joints: int = 17, scale: float = 100.0):
    generator = torch.Generator().manual_seed(seed)
    target_xy = torch.rand(batch, targets, joints, 2, generator=generator) * scale
    visibility = torch.randint(0, 3, (batch, targets, joints, 1), generator=generator).float()
    target = torch.cat([target_xy, visibility], dim=-1)
    pred = torch.rand(batch, queries, joints, 2, generator=generator) * scale
    # Some predictions close to a target, so OKS is not ~0 everywhere.
    pred[:, : min(queries, targets)] = target_xy[:, : min(queries, targets)] + torch.randn(
        batch, min(queries, targets), joints, 2, generator=generator
    ) * (scale / 30)
    area = (torch.rand(batch, targets, generator=generator) * 0.5 + 0.05) * scale**2
    return pred, target, area


# ---------------------------------------------------------------- OKS against pycocotools


def test_oks_known_answer() -> None:
    # One labelled keypoint at distance 3 from its target, sigma 0.1 (variance 0.04), area 50:
    # e = 9 / 0.04 / 50 / 2 = 2.25, OKS = exp(-2.25); the unlabelled keypoint does not count.
    target = torch.tensor([[[[0.0, 0.0, 2.0], [7.0, 7.0, 0.0]]]])
    pred = torch.tensor([[[[3.0, 0.0], [100.0, -100.0]]]])
    cost = oks_cost(pred, target, torch.tensor([[50.0]]), sigmas=[0.1, 0.2])
    assert cost.dtype == torch.float32
    assert cost.item() == pytest.approx(1 - math.exp(-2.25), rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_oks_equals_pycocotools(seed: int) -> None:
    pred, target, area = random_poses(seed, batch=2, queries=7, targets=4)
    sigmas = np.asarray(COCO_KEYPOINT_SIGMAS)
    cost = oks_cost(pred, target, area)
    for b in range(2):
        labelled = (target[b, :, :, 2] > 0).any(dim=1)
        want = 1 - pycocotools_oks(pred[b].double().numpy(), target[b].double().numpy(), area[b].double().numpy(), sigmas)
        # pycocotools scores a target with no labelled keypoint by its box instead: skip those.
        np.testing.assert_allclose(cost[b][:, labelled].double().numpy(), want[:, labelled.numpy()], atol=2e-6)


def test_oks_with_custom_sigmas_and_normalised_units_equals_pycocotools() -> None:
    pred, target, area = random_poses(7, batch=1, queries=5, targets=3, joints=5, scale=1.0)
    target[..., 2] = 2.0
    sigmas = np.array([0.05, 0.1, 0.02, 0.3, 0.07])
    cost = oks_cost(pred, target, area, sigmas=sigmas.tolist())
    want = 1 - pycocotools_oks(pred[0].double().numpy(), target[0].double().numpy(), area[0].double().numpy(), sigmas)
    np.testing.assert_allclose(cost[0].double().numpy(), want, atol=2e-6)


def test_oks_flat_coco_layout_equals_structured() -> None:
    pred, target, area = random_poses(3, batch=2, queries=4, targets=3)
    flat = oks_cost(pred.flatten(2), target.flatten(2), area)
    torch.testing.assert_close(flat, oks_cost(pred, target, area))


def test_target_without_labelled_keypoints_costs_one() -> None:
    pred, target, area = random_poses(4, batch=1, queries=4, targets=2)
    target[0, 1, :, 2] = 0
    oks = oks_cost(pred, target, area)
    assert torch.equal(oks[0, :, 1], torch.ones(4))
    assert torch.equal(keypoint_l1_cost(pred, target)[0, :, 1], torch.zeros(4))


def test_zero_area_is_finite() -> None:
    pred, target, _ = random_poses(5, batch=1, queries=3, targets=2)
    pred[0, 0] = target[0, 0, :, :2]  # an exact prediction: OKS 1 even with a zero area
    cost = oks_cost(pred, target, torch.zeros(1, 2))
    assert torch.isfinite(cost).all()
    assert cost[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- keypoint L1


def reference_keypoint_l1(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    p, t = pred.double().numpy(), target.double().numpy()
    out = np.zeros((p.shape[0], p.shape[1], t.shape[1]))
    for b in range(p.shape[0]):
        for n in range(p.shape[1]):
            for m in range(t.shape[1]):
                labelled = t[b, m, :, 2] > 0
                distance = np.abs(p[b, n, :, :2] - t[b, m, :, :2]).sum(axis=1)
                out[b, n, m] = distance[labelled].sum() / max(labelled.sum(), 1)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_keypoint_l1_equals_float64_formula(seed: int) -> None:
    pred, target, _ = random_poses(seed, batch=2, queries=5, targets=4, scale=1.0)
    np.testing.assert_allclose(keypoint_l1_cost(pred, target).double().numpy(), reference_keypoint_l1(pred, target), atol=1e-6)


# ---------------------------------------------------------------- properties


@given(poses())
def test_property_oks_bounds_and_l1_nonnegative(pose: tuple) -> None:
    pred, target, area = pose
    oks = oks_cost(pred, target, area, sigmas=[0.05] * target.shape[2])
    assert ((oks >= 0) & (oks <= 1)).all()
    assert (keypoint_l1_cost(pred, target) >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_keypoint_costs_are_float32_for_any_input_dtype(dtype: torch.dtype) -> None:
    pred, target, area = random_poses(6, batch=1, queries=3, targets=2, scale=1.0)
    for function in (lambda p, t: oks_cost(p, t, area), keypoint_l1_cost):
        low = function(pred.to(dtype), target.to(dtype))
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, function(pred, target), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- cost classes and errors


def test_cost_classes_read_their_keys() -> None:
    pred, target, area = random_poses(8, batch=2, queries=4, targets=3, scale=1.0)
    targets = [
        {"labels": torch.zeros(3, dtype=torch.int64), "boxes": torch.rand(3, 4), "kp": target[b], "size": area[b]}
        for b in range(2)
    ]
    padded = pad_targets(targets, per_object_keys=["kp", "size"])
    outputs = {"joints": pred}
    torch.testing.assert_close(
        OKSCost(key="joints", target_key="kp", area_key="size")(outputs, padded), oks_cost(pred, target, area)
    )
    torch.testing.assert_close(KeypointL1Cost(key="joints", target_key="kp")(outputs, padded), keypoint_l1_cost(pred, target))
    boxes = padded.boxes
    torch.testing.assert_close(
        OKSCost(key="joints", target_key="kp", area_key=None)(outputs, padded),
        oks_cost(pred, target, boxes[..., 2] * boxes[..., 3]),
    )
    assert OKSCost().target_keys == ("keypoints", "area")
    assert OKSCost(area_key=None).target_keys == ("keypoints", "boxes")
    assert repr(OKSCost(key="joints", area_key=None)) == "OKSCost(key='joints', area_key=None)"


def test_bad_keypoint_inputs() -> None:
    pred, target, area = random_poses(9, batch=1, queries=3, targets=2)
    padded = pad_targets(
        [{"labels": torch.zeros(2, dtype=torch.int64), "boxes": torch.rand(2, 4), "keypoints": target[0], "area": area[0]}],
        per_object_keys=["keypoints", "area"],
    )
    with pytest.raises(ShapeError, match=r"outputs\['pred_keypoints'\] \(1, 3, 14, 2\) hold J = 14 keypoints but .* hold J = 17"):
        OKSCost()({"pred_keypoints": pred[:, :, :14]}, padded)
    with pytest.raises(ConfigurationError, match=r"sigmas has 5 values but the keypoints have J = 17"):
        OKSCost(sigmas=[0.1] * 5)({"pred_keypoints": pred}, padded)
    with pytest.raises(ConfigurationError, match=r"J = 5 keypoints but the default sigmas are COCO's 17; pass sigmas="):
        oks_cost(pred[:, :, :5], target[:, :, :5], area)
    with pytest.raises(ConfigurationError, match=r"sigmas must hold finite real numbers > 0, got sigmas\[1\] = -0.1"):
        OKSCost(sigmas=[0.1, -0.1])
    with pytest.raises(ShapeError, match=r"target_keypoints must have shape \(B, M, J, 3\)"):
        keypoint_l1_cost(pred, target[..., :2])
    with pytest.raises(ShapeError, match=r"area must have shape \(B, M\) = \(1, 2\)"):
        oks_cost(pred, target, area[:, :1])
    with pytest.raises(InvalidTargetError, match=r"OKSCost reads targets.area"):
        OKSCost()({"pred_keypoints": pred}, pad_targets([{"labels": torch.zeros(2, dtype=torch.int64), "boxes": torch.rand(2, 4), "keypoints": target[0]}]))
