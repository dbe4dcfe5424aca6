"""Matcher(cost, assigner): keys flow from targets to costs, every cost's properties, errors that name the culprit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch.costs import (
    ClassIoUQuality,
    Cost,
    FocalClassCost,
    GIoUCost,
    IoUQuality,
    KeypointL1Cost,
    L1BoxCost,
    MaskBCECost,
    MaskDiceCost,
    OKSCost,
    SoftmaxClassCost,
)
from hybridmatch.errors import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError
from hybridmatch.matchers import (
    Groups,
    Hungarian,
    HungarianMatcher,
    Matcher,
    OneToManyMatcher,
    TopK,
    TopKMatcher,
    assignment_to_repeated,
)
from hybridmatch.targets import pad_targets, repeat_targets

J = 5  # keypoints per object in these tests
SIGMAS = [0.05, 0.08, 0.1, 0.06, 0.07]


def task_batch(seed: int, counts: list[int], num_queries: int = 8, num_classes: int = 3, dtype=torch.float32):
    """Outputs and targets with every key a built-in cost reads: boxes, keypoints, area, masks."""
    g = torch.Generator().manual_seed(seed)
    batch = len(counts)

    def boxes(*shape: int) -> torch.Tensor:
        return torch.cat([torch.rand(*shape, 2, generator=g) * 0.6 + 0.2, torch.rand(*shape, 2, generator=g) * 0.3 + 0.05], -1)

    outputs = {
        "pred_logits": torch.randn(batch, num_queries, num_classes, generator=g).to(dtype),
        "pred_boxes": boxes(batch, num_queries).to(dtype),
        "pred_keypoints": torch.rand(batch, num_queries, J, 2, generator=g).to(dtype),
        "pred_masks": (torch.randn(batch, num_queries, 6, 6, generator=g) * 3).to(dtype),
    }
    targets = []
    for m in counts:
        keypoints = torch.cat([torch.rand(m, J, 2, generator=g), torch.randint(0, 3, (m, J, 1), generator=g).float()], -1)
        targets.append(
            {
                "labels": torch.randint(0, num_classes - 1, (m,), generator=g),
                "boxes": boxes(m),
                "keypoints": keypoints,
                "area": torch.rand(m, generator=g) * 0.2 + 0.01,
                "masks": torch.rand(m, 12, 12, generator=g) > 0.5,
            }
        )
    return outputs, targets


def every_cost() -> list[Cost]:
    return [
        FocalClassCost(),
        SoftmaxClassCost(),
        L1BoxCost(),
        GIoUCost(),
        OKSCost(sigmas=SIGMAS),
        OKSCost(sigmas=SIGMAS, area_key=None),
        KeypointL1Cost(),
        MaskDiceCost(None),
        MaskBCECost(None),
        MaskDiceCost(64, seed=0),
        IoUQuality(),
        ClassIoUQuality(0.3),
    ]


def pad(cost: Cost, targets: list[dict]) -> object:
    extras = [k for k in cost.target_keys if k not in ("labels", "boxes")]
    return pad_targets(targets, per_object_keys=extras, require_boxes="boxes" in cost.target_keys)


def reseeded(cost: Cost) -> Cost:
    # A seeded mask cost advances its points call by call: compare calls from the same seed.
    return MaskDiceCost(64, seed=0) if isinstance(cost, MaskDiceCost) and cost.seed == 0 else cost


# ---------------------------------------------------------------- keys flow to the costs


def test_the_issue_example_matches_keypoint_targets_optimally() -> None:
    outputs, targets = task_batch(0, [3, 0, 2], num_queries=12)
    cost = 2 * FocalClassCost() + 5 * KeypointL1Cost() + 2 * OKSCost(sigmas=SIGMAS)
    matcher = Matcher(cost, Hungarian(capacity=3))
    pairs = matcher(outputs, targets)
    # Optimal: equals scipy on the cost repeated 3 times (GT-major copies).
    matrix = cost(outputs, pad(cost, targets)).double().numpy()
    for b, ((pred, tgt), target) in enumerate(zip(pairs, targets)):
        m = len(target["labels"])
        rows, cols = scipy_lsa(np.tile(matrix[b, :, :m], (1, 3)))
        assert matrix[b, pred.numpy(), tgt.numpy()].sum() == pytest.approx(matrix[b, rows, cols % max(m, 1)].sum() if m else 0.0, abs=1e-5)
        assert all(int(c) <= 3 for c in torch.bincount(tgt, minlength=m)) if m else len(pred) == 0


def test_masks_without_boxes_reach_the_mask_costs() -> None:
    outputs, targets = task_batch(1, [2, 3])
    targets = [{"labels": t["labels"], "masks": t["masks"]} for t in targets]  # Mask2Former's targets
    cost = 2 * SoftmaxClassCost() + 5 * MaskBCECost(None) + 5 * MaskDiceCost(None)
    pairs = Matcher(cost, Hungarian())(outputs, targets)
    matrix = cost(outputs, pad_targets(targets, per_object_keys=["masks"], require_boxes=False))
    for b, (pred, tgt) in enumerate(pairs):
        rows, cols = scipy_lsa(matrix[b, :, : len(targets[b]["labels"])].double().numpy())
        assert matrix[b, pred, tgt].sum().item() == pytest.approx(matrix[b, rows, cols].sum().item(), abs=1e-5)


def test_a_custom_cost_gets_its_own_target_key() -> None:
    class DepthCost(Cost):
        output_keys = ("pred_depth",)
        target_keys = ("depth",)

        def compute(self, outputs, targets, shared):
            return (outputs["pred_depth"][:, :, None] - targets["depth"][:, None, :]).abs()

    outputs = {"pred_depth": torch.tensor([[1.0, 5.0, 3.0]])}
    targets = [{"labels": torch.tensor([0, 0]), "depth": torch.tensor([4.9, 1.2])}]  # no boxes at all
    pred, tgt = Matcher(DepthCost(), Hungarian())(outputs, targets)[0]
    assert pred.tolist() == [0, 1] and tgt.tolist() == [1, 0]
    with pytest.raises(InvalidTargetError, match=r"reads targets' 'depth', but targets\[0\] has none"):
        Matcher(DepthCost(), Hungarian())(outputs, [{"labels": torch.tensor([0])}])


def test_only_declared_keys_are_padded() -> None:
    outputs, targets = task_batch(2, [2, 1])
    matcher = Matcher(L1BoxCost(), Hungarian())
    padded = matcher.pad(outputs, targets)
    assert padded.keys() == ["labels", "boxes", "valid"]
    assert set(Matcher(OKSCost(sigmas=SIGMAS), Hungarian()).pad(outputs, targets).keys()) == {
        "labels", "boxes", "valid", "keypoints", "area"
    }


# ---------------------------------------------------------------- properties of every cost


@pytest.mark.parametrize("index", range(len(every_cost())))
@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), counts=st.lists(st.integers(0, 4), min_size=2, max_size=3))
def test_property_padding_invariance(index: int, seed: int, counts: list[int]) -> None:
    """An image's real columns do not depend on the other images of the batch (or their padding)."""
    outputs, targets = task_batch(seed, counts)
    cost = every_cost()[index]
    together = reseeded(cost)(outputs, pad(cost, targets))
    for b, target in enumerate(targets):
        alone = reseeded(cost)({k: v[b : b + 1] for k, v in outputs.items()}, pad(cost, [target]))
        if isinstance(cost, MaskDiceCost) and cost.num_points is not None:
            continue  # the point sample is drawn per batch; only the exact mode is per-image identical
        m = len(target["labels"])
        torch.testing.assert_close(together[b : b + 1, :, :m], alone[:, :, :m], equal_nan=True)


@pytest.mark.parametrize("index", range(len(every_cost())))
@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_property_permutation_equivariance(index: int, seed: int, data: st.DataObject) -> None:
    outputs, targets = task_batch(seed, [4])
    cost = every_cost()[index]
    queries = data.draw(st.permutations(range(8)))
    objects = data.draw(st.permutations(range(4)))
    shuffled_outputs = {k: v[:, queries] for k, v in outputs.items()}
    shuffled_targets = [{k: v[objects] for k, v in targets[0].items()}]
    if isinstance(cost, MaskDiceCost) and cost.num_points is not None:
        cost = MaskDiceCost(64, seed=seed)
        base = cost(outputs, pad(cost, targets))
        cost = MaskDiceCost(64, seed=seed)
    else:
        base = cost(outputs, pad(cost, targets))
    shuffled = cost(shuffled_outputs, pad(cost, shuffled_targets))
    torch.testing.assert_close(shuffled, base[:, queries][:, :, objects], equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index", range(len(every_cost())))
def test_low_precision_outputs_give_float32_costs(index: int, dtype: torch.dtype) -> None:
    outputs, targets = task_batch(3, [3, 2])
    cost = every_cost()[index]
    low = reseeded(cost)({k: v.to(dtype) for k, v in outputs.items()}, pad(cost, targets))
    full = reseeded(cost)(outputs, pad(cost, targets))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=0.06, rtol=0.06, equal_nan=True)


def test_every_cost_declares_what_it_reads() -> None:
    outputs, targets = task_batch(4, [2])
    for cost in every_cost():
        for key in cost.output_keys:
            with pytest.raises(InvalidPredictionError, match=rf"reads outputs\['{key}'\], which is missing"):
                cost({k: v for k, v in outputs.items() if k != key}, pad(cost, targets))
        for key in cost.target_keys:
            if key == "labels":
                continue
            missing = [{k: v for k, v in t.items() if k != key} for t in targets]
            with pytest.raises(InvalidTargetError, match=rf"{key}"):
                Matcher(cost, TopK() if "Quality" in type(cost).__name__ else Hungarian())(outputs, missing)


# ---------------------------------------------------------------- assigners alone


@pytest.mark.parametrize("seed", range(3))
def test_assigners_against_references(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(2, 6, 3, generator=g)
    counts = [3, 2]
    got = Hungarian()(cost, counts)
    for b, m in enumerate(counts):
        rows, cols = scipy_lsa(cost[b, :, :m].numpy())
        assert cost[b, got[b] >= 0, got[b][got[b] >= 0]].sum().item() == pytest.approx(cost[b, rows, cols].sum().item())
    groups = Groups(2)(cost, counts)
    for g_index in range(2):
        part = Hungarian()(cost[:, 3 * g_index : 3 * g_index + 3], counts)
        assert torch.equal(groups[:, 3 * g_index : 3 * g_index + 3], part)
    assert Groups(2).max_per_target == 2 and Groups(3, 2).max_per_target == 6 and TopK(k=5).max_per_target == 5
    # TopK ignores the padded column of image 1.
    assert (TopK(k=6)(cost, counts)[1] < 2).all()


def test_assigner_repr_and_settings() -> None:
    assert repr(Hungarian(2)) == "Hungarian(capacity=2, backend='auto', nan_policy='raise')"
    assert repr(Groups(3)) == "Groups(num_groups=3, capacity=1, backend='auto', nan_policy='raise')"
    assert repr(TopK(2, 0.5)) == "TopK(k=2, threshold=0.5, nan_policy='raise')"
    with pytest.raises(ConfigurationError, match="unknown backend 'gpu'"):
        Hungarian(backend="gpu")
    with pytest.raises(TypeError, match="assigner must be a hybridmatch.matchers.Assigner"):
        Matcher(L1BoxCost(), "hungarian")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cost must be a hybridmatch.costs.Cost"):
        Matcher(lambda o, t: None, Hungarian())  # type: ignore[arg-type]


def test_match_repeated_addresses_the_repeated_targets() -> None:
    outputs, targets = task_batch(5, [2, 3], num_queries=12)
    matcher = Matcher(L1BoxCost() + GIoUCost(), Groups(2, capacity=2))
    repeated = repeat_targets(targets, 4)
    for (pred, tgt), (pred_o, tgt_o), target, copies in zip(
        matcher.match_repeated(outputs, targets), matcher(outputs, targets), targets, repeated
    ):
        assert torch.equal(pred, pred_o)
        assert torch.equal(copies["boxes"][tgt], target["boxes"][tgt_o])
        assert len(set(tgt.tolist())) == len(tgt)  # each copy once


# ---------------------------------------------------------------- errors that name the culprit


@pytest.mark.parametrize(
    ("where", "value", "error", "message"),
    [
        ("pred_boxes", math.inf, InvalidPredictionError, r"outputs\['pred_boxes'\]\[1, 3\] contains inf \(image 1, query 3\)"),
        ("pred_boxes", -math.inf, InvalidPredictionError, r"outputs\['pred_boxes'\]\[1, 3\] contains -inf"),
        ("pred_logits", math.inf, InvalidPredictionError, r"outputs\['pred_logits'\]\[1, 3\] contains inf"),
        ("pred_logits", math.nan, InvalidPredictionError, r"outputs\['pred_logits'\]\[1, 3\] contains NaN"),
        ("boxes", math.inf, InvalidTargetError, r"targets\[1\]\['boxes'\]\[0\] contains inf \(image 1, target 0\)"),
        ("boxes", math.nan, InvalidTargetError, r"targets\[1\]\['boxes'\]\[0\] contains NaN"),
    ],
)
def test_non_finite_inputs_are_named(where: str, value: float, error: type, message: str) -> None:
    outputs, targets = task_batch(6, [2, 2])
    if where.startswith("pred"):
        outputs[where][1, 3, 0] = value
    else:
        targets[1][where][0, 2] = value
    with pytest.raises(error, match=message):
        HungarianMatcher(1, 5, 2, class_cost="softmax")(outputs, targets)


def test_topk_names_a_nan_target_box_and_leaves_it_alone_when_asked() -> None:
    outputs, targets = task_batch(7, [2, 2])
    targets[0]["boxes"][1, 0] = math.nan
    with pytest.raises(InvalidTargetError, match=r"targets\[0\]\['boxes'\]\[1\] contains NaN"):
        TopKMatcher(k=8)(outputs, targets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = TopKMatcher(k=8, nan_policy="worst")(outputs, targets)
    assert 1 not in pairs[0][1].tolist() and len(caught) == 1


def test_label_checks_follow_the_class_cost_given() -> None:
    outputs, targets = task_batch(8, [2, 1])  # 3 logits
    targets[1]["labels"][0] = 2  # a real class for focal (3 classes), the no-object column for softmax
    HungarianMatcher(cost=FocalClassCost() + L1BoxCost())(outputs, targets)
    with pytest.raises(InvalidTargetError, match=r"SoftmaxClassCost: targets\[1\]\['labels'\]\[0\] is 2: each targets\[b\]\['labels'\] must be in \[0, 2\) \(3 softmax logits = 2 classes \+ no-object\)"):
        HungarianMatcher(cost=SoftmaxClassCost() + L1BoxCost())(outputs, targets)


def test_misleading_inputs_get_the_right_message() -> None:
    outputs, targets = task_batch(9, [2, 1])
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_logits'\] has 0 logit column\(s\).*scores no class"):
        HungarianMatcher()({**outputs, "pred_logits": outputs["pred_logits"][..., :0]}, targets)
    with pytest.raises(InvalidTargetError, match=r"targets must be a list of per-image dicts .* got dict"):
        HungarianMatcher()(outputs, targets[0])
    with pytest.raises(ShapeError, match=r"outputs\['pred_logits'\] has 8 queries but outputs\['pred_boxes'\] has 5"):
        HungarianMatcher()({**outputs, "pred_boxes": outputs["pred_boxes"][:, :5]}, targets)
    assert TopKMatcher(threshold=np.float32(0.5), alpha=np.float64(0.25), quality="iou_class").threshold == 0.5
    assert OneToManyMatcher(k=np.int64(3)).k == 3


def test_assignment_to_repeated_refuses_out_of_range_targets() -> None:
    with pytest.raises(InvalidTargetError, match=r"assignment\[0, 1\] = 3 but image 0 has 2 targets"):
        assignment_to_repeated(torch.tensor([[0, 3, -1]]), [2])
    with pytest.raises(InvalidTargetError, match=r"assignment\[1, 0\] = -2"):
        assignment_to_repeated(torch.tensor([[0, 1], [-2, 0]]), [2, 1])
