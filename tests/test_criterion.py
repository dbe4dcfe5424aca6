"""HybridCriterion against H-DETR-style reference computations written here."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridmatch import HungarianMatcher
from hybridmatch.criterion import HybridCriterion, KeyMap
from hybridmatch.errors import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError
from hybridmatch.schemes import HybridBranch, HybridEpoch, HybridLayer

from .detr_reference import SetCriterion, random_outputs, random_targets

NUM_CLASSES = 5


def hdetr_repeat(targets, k):
    """H-DETR's training step: deep-copy the targets, tile labels and boxes K times."""
    multi = copy.deepcopy(targets)
    for t in multi:
        t["boxes"] = t["boxes"].repeat(k, 1)
        t["labels"] = t["labels"].repeat(k)
    return multi


def hdetr_branch_reference(criterion, outputs, targets, k, weight):
    one2one = {key: v for key, v in outputs.items() if not key.endswith("_one2many")}
    losses = dict(criterion(one2one, targets))
    one2many = {
        "pred_logits": outputs["pred_logits_one2many"],
        "pred_boxes": outputs["pred_boxes_one2many"],
        "aux_outputs": outputs["aux_outputs_one2many"],
    }
    for key, value in criterion(one2many, hdetr_repeat(targets, k)).items():
        losses[key + "_one2many"] = losses.get(key + "_one2many", 0) + value * weight
    return losses


def hdetr_layout(seed, counts, n1, n2, num_aux=2, enc=True):
    one2one = random_outputs(seed, len(counts), n1, NUM_CLASSES, num_aux, enc=enc)
    one2many = random_outputs(seed + 1, len(counts), n2, NUM_CLASSES, num_aux)
    return {
        **one2one,
        "pred_logits_one2many": one2many["pred_logits"],
        "pred_boxes_one2many": one2many["pred_boxes"],
        "aux_outputs_one2many": one2many["aux_outputs"],
    }


def concatenated(outputs):
    """The same outputs with the query dimension concatenated [one-to-one | one-to-many]."""
    cat = lambda a, b: torch.cat([a, b], dim=1)  # noqa: E731
    out = {
        "pred_logits": cat(outputs["pred_logits"], outputs["pred_logits_one2many"]),
        "pred_boxes": cat(outputs["pred_boxes"], outputs["pred_boxes_one2many"]),
        "aux_outputs": [
            {key: cat(a[key], b[key]) for key in a}
            for a, b in zip(outputs["aux_outputs"], outputs["aux_outputs_one2many"])
        ],
    }
    if "enc_outputs" in outputs:
        out["enc_outputs"] = outputs["enc_outputs"]
    return out


def assert_same_losses(got, expected, rtol=1e-6):
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], torch.as_tensor(expected[key]), rtol=rtol, atol=1e-7, msg=key)


# --------------------------------------------------------------------- branch


@settings(max_examples=20)
@given(seed=st.integers(0, 1000), counts=st.lists(st.integers(0, 4), min_size=1, max_size=3),
       k=st.integers(1, 3), weight=st.sampled_from([1.0, 0.5]))
def test_branch_equals_hdetr_training_step(seed, counts, k, weight) -> None:
    outputs = hdetr_layout(seed, counts, n1=6, n2=14)
    targets = random_targets(seed, counts, NUM_CLASSES)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(6, 14, k=k, weight=weight))
    expected = hdetr_branch_reference(SetCriterion(NUM_CLASSES), outputs, targets, k, weight)
    assert_same_losses(hybrid(outputs, targets), expected)


def test_branch_concatenated_queries_equal_hdetr_layout() -> None:
    outputs = hdetr_layout(3, [2, 0, 3], n1=5, n2=12)
    targets = random_targets(3, [2, 0, 3], NUM_CLASSES)
    scheme = HybridBranch(5, 12, k=2)
    split = HybridCriterion(SetCriterion(NUM_CLASSES), scheme)(outputs, targets)
    joined = HybridCriterion(SetCriterion(NUM_CLASSES), scheme)(concatenated(outputs), targets)
    assert_same_losses(joined, split)
    assert "loss_ce_enc" in joined and "loss_ce_enc_one2many" not in joined
    assert "loss_giou_1_one2many" in joined


def test_branch_one2many_call_counts_repeated_boxes() -> None:
    criterion = SetCriterion(NUM_CLASSES)
    outputs = hdetr_layout(0, [2, 3], n1=5, n2=12, enc=False)
    HybridCriterion(criterion, HybridBranch(5, 12, k=2))(outputs, random_targets(0, [2, 3], NUM_CLASSES))
    # One call per group: 5 queries on 5 boxes, 12 queries on 2 x 5 boxes (H-DETR's num_boxes).
    assert criterion.calls == [(5, 5.0), (12, 10.0)]


def test_capacity_matcher_gives_the_losses_of_matching_copies() -> None:
    outputs = hdetr_layout(5, [3, 1, 0], n1=6, n2=15)
    targets = random_targets(5, [3, 1, 0], NUM_CLASSES)
    scheme = HybridBranch(6, 15, k=3)
    copies = HybridCriterion(SetCriterion(NUM_CLASSES), scheme)(outputs, targets)
    capacity = HybridCriterion(
        SetCriterion(NUM_CLASSES), scheme, one2many_matcher=HungarianMatcher(capacity=3)
    )
    assert_same_losses(capacity(outputs, targets), copies, rtol=1e-5)


def test_other_per_object_keys_are_replicated() -> None:
    seen = []

    def criterion(outputs, targets):
        seen.append(targets)
        return {"loss": outputs["pred_boxes"].sum() * 0}

    targets = random_targets(1, [2, 0], NUM_CLASSES, extras=True)
    outputs = random_outputs(1, 2, 9, NUM_CLASSES, 0)
    HybridCriterion(criterion, HybridBranch(3, 6, k=3))(outputs, targets)
    one2one, one2many = seen
    assert one2one is targets
    for original, repeated in zip(targets, one2many):
        for key in ("labels", "boxes", "area", "keypoints", "masks"):
            expected = original[key].repeat(3, *[1] * (original[key].ndim - 1))
            assert torch.equal(repeated[key], expected), key
        assert torch.equal(repeated["size"], original["size"])  # per-image keys stay as they are


# ---------------------------------------------------------------- epoch, layer


def test_epoch_scheme_switches_targets_at_the_boundary() -> None:
    outputs = random_outputs(2, 2, 20, NUM_CLASSES, 2, enc=True)
    targets = random_targets(2, [3, 1], NUM_CLASSES)
    scheme = HybridEpoch(k=4, one2many_fraction=0.5, total_epochs=4)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), scheme)
    repeated = SetCriterion(NUM_CLASSES)(outputs, hdetr_repeat(targets, 4))
    plain = SetCriterion(NUM_CLASSES)(outputs, targets)
    assert_same_losses(hybrid(outputs, targets, epoch=1), repeated)
    assert_same_losses(hybrid(outputs, targets, epoch=2), plain)
    scheme.set_epoch(1)
    assert_same_losses(hybrid(outputs, targets), repeated)
    scheme.step()
    assert_same_losses(hybrid(outputs, targets), plain)


@pytest.mark.parametrize("num_one2many_layers", [0, 1, 3])
def test_layer_scheme_supervises_early_layers_one_to_many(num_one2many_layers: int) -> None:
    outputs = random_outputs(4, 3, 18, NUM_CLASSES, 3, enc=True)  # 4 decoder layers
    targets = random_targets(4, [2, 0, 4], NUM_CLASSES)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridLayer(k=3, num_one2many_layers=num_one2many_layers))
    repeated = SetCriterion(NUM_CLASSES)(outputs, hdetr_repeat(targets, 3))
    plain = SetCriterion(NUM_CLASSES)(outputs, targets)
    expected = {
        key: (repeated if any(key.endswith(f"_{i}") for i in range(num_one2many_layers)) else plain)[key]
        for key in plain
    }
    assert_same_losses(hybrid(outputs, targets), expected)


def test_losses_are_differentiable() -> None:
    outputs = random_outputs(6, 2, 10, NUM_CLASSES, 1, requires_grad=True)
    targets = random_targets(6, [2, 1], NUM_CLASSES)
    losses = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(4, 6, k=2))(outputs, targets)
    sum(losses.values()).backward()
    grad = outputs["pred_boxes"].grad
    assert grad is not None and grad[:, 4:].abs().sum() > 0 and grad[:, :4].abs().sum() > 0


# -------------------------------------------------------- other conventions


def test_hugging_face_key_map() -> None:
    def hf_criterion(outputs, targets):
        # A criterion of the transformers convention, translated to the DETR one.
        detr_outputs = {"pred_logits": outputs["logits"], "pred_boxes": outputs["pred_boxes"],
                        "aux_outputs": [{"pred_logits": a["logits"], "pred_boxes": a["pred_boxes"]}
                                        for a in outputs.get("auxiliary_outputs", [])]}
        detr_targets = [{"labels": t["class_labels"], "boxes": t["boxes"]} for t in targets]
        return SetCriterion(NUM_CLASSES)(detr_outputs, detr_targets)

    detr = hdetr_layout(8, [1, 3], n1=4, n2=8, enc=False)
    detr_cat = concatenated(detr)
    hf_outputs = {"logits": detr_cat["pred_logits"], "pred_boxes": detr_cat["pred_boxes"],
                  "auxiliary_outputs": [{"logits": a["pred_logits"], "pred_boxes": a["pred_boxes"]}
                                        for a in detr_cat["aux_outputs"]]}
    targets = random_targets(8, [1, 3], NUM_CLASSES)
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    scheme = HybridBranch(4, 8, k=2)
    got = HybridCriterion(hf_criterion, scheme, key_map=KeyMap.huggingface())(hf_outputs, hf_targets)
    expected = hdetr_branch_reference(SetCriterion(NUM_CLASSES), detr, targets, 2, 1.0)
    assert_same_losses(got, expected)


# -------------------------------------------------------------------- errors


def test_wrong_query_count_is_named() -> None:
    outputs = random_outputs(0, 1, 9, NUM_CLASSES, 0)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4, k=2))
    with pytest.raises(ShapeError, match=r"has 9 queries but HybridBranch.* expects 7"):
        hybrid(outputs, random_targets(0, [1], NUM_CLASSES))


def test_missing_keys_and_bad_arguments() -> None:
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4))
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_logits'\] is missing.*key_map"):
        hybrid({"logits": torch.zeros(1, 7, 2)}, [])
    with pytest.raises(InvalidTargetError, match=r"targets\[1\] has no 'labels'"):
        hybrid(random_outputs(0, 2, 7, NUM_CLASSES, 0), [{"labels": torch.zeros(0)}, {"class_labels": torch.zeros(0)}])
    with pytest.raises(TypeError, match="scheme must be a hybridmatch.schemes.Scheme"):
        HybridCriterion(SetCriterion(NUM_CLASSES), "branch")  # type: ignore[arg-type]
    mismatched = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4, k=2),
                                 one2many_matcher=HungarianMatcher(capacity=6))
    with pytest.raises(ConfigurationError, match=r"take 6 queries but .* K=2 times; build it with OneToManyMatcher\(k=2\)"):
        mismatched(random_outputs(0, 1, 7, NUM_CLASSES, 0), random_targets(0, [1], NUM_CLASSES))
    with pytest.raises(TypeError, match="no 'matcher' attribute"):
        HybridCriterion(lambda o, t: {}, HybridBranch(3, 4), one2many_matcher=HungarianMatcher(capacity=6))


def test_unmatched_copies_warning_points_at_the_caller() -> None:
    outputs = random_outputs(2, 1, 7, NUM_CLASSES, 0)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4, k=6))
    with pytest.warns(UserWarning, match="2 copies of its ground truth go unmatched") as record:
        hybrid(outputs, random_targets(2, [1], NUM_CLASSES))
    assert record[0].filename == __file__


def test_empty_batch_everywhere() -> None:
    outputs = hdetr_layout(9, [0, 0], n1=3, n2=5, enc=True)
    losses = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 5, k=6))(outputs, random_targets(9, [0, 0], NUM_CLASSES))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox_one2many"] == 0
