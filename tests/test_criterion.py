"""HybridCriterion against H-DETR-style reference computations written here."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridmatch import HungarianMatcher, OneToManyMatcher
from hybridmatch.criterion import HybridCriterion, KeyMap, hybrid_weight_dict, weighted_loss
from hybridmatch.distributed import global_num_boxes
from hybridmatch.errors import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError
from hybridmatch.schemes import HybridBranch, HybridEpoch, HybridLayer

from .detr_reference import DetrCriterion, DetrMatcher, SetCriterion, random_outputs, random_targets

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
    with pytest.raises(ShapeError, match=r"has 9 queries but HybridBranch.* expects num_one2one=3 .* num_one2many=7"):
        hybrid(outputs, random_targets(0, [1], NUM_CLASSES))


def test_missing_keys_and_bad_arguments() -> None:
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4))
    with pytest.raises(InvalidPredictionError, match=r"outputs\['pred_logits'\] is missing.*key_map"):
        hybrid({"logits": torch.zeros(1, 7, 2)}, [])
    with pytest.raises(InvalidTargetError, match=r"targets\[1\] has no 'labels'"):
        hybrid(random_outputs(0, 2, 7, NUM_CLASSES, 0), [{"labels": torch.zeros(0)}, {"class_labels": torch.zeros(0)}])
    with pytest.raises(TypeError, match="scheme must be a hybridmatch.schemes.Scheme"):
        HybridCriterion(SetCriterion(NUM_CLASSES), "branch")  # type: ignore[arg-type]
    # A K that differs from the scheme's is an error at construction, not at the first call.
    with pytest.raises(ConfigurationError, match=r"take 6 queries but .* K=2 times; build it with OneToManyMatcher\(k=2\)"):
        HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4, k=2), one2many_matcher=HungarianMatcher(capacity=6))
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


# ------------------------------------------------ evaluation (issue 10, item 1)


def detr_layout(seed, counts, n1, n2, num_aux=2):
    """H-DETR's layout with DETR's softmax logits (C = classes + 1)."""
    one2one = random_outputs(seed, len(counts), n1, NUM_CLASSES + 1, num_aux)
    one2many = random_outputs(seed + 1, len(counts), n2, NUM_CLASSES + 1, num_aux)
    return {**one2one, "pred_logits_one2many": one2many["pred_logits"],
            "pred_boxes_one2many": one2many["pred_boxes"], "aux_outputs_one2many": one2many["aux_outputs"]}


def test_eval_mode_returns_the_wrapped_criterion_losses_on_inference_outputs() -> None:
    # DETR's evaluate(): model.eval(); criterion.eval(); criterion(outputs of the 6 one-to-one queries).
    inference = random_outputs(11, 2, 6, NUM_CLASSES + 1, 2)
    targets = random_targets(11, [2, 3], NUM_CLASSES)
    hybrid = HybridCriterion(DetrCriterion(NUM_CLASSES), HybridBranch(6, 14, k=2)).eval()
    assert_same_losses(hybrid(inference, targets), DetrCriterion(NUM_CLASSES)(inference, targets))


def test_eval_mode_keeps_only_the_one2one_group_of_training_outputs() -> None:
    outputs = detr_layout(12, [1, 2], n1=5, n2=9)
    targets = random_targets(12, [1, 2], NUM_CLASSES)
    one2one = {key: value for key, value in outputs.items() if not key.endswith("_one2many")}
    expected = DetrCriterion(NUM_CLASSES)(one2one, targets)
    hybrid = HybridCriterion(DetrCriterion(NUM_CLASSES), HybridBranch(5, 9, k=2))
    hybrid.eval()
    assert_same_losses(hybrid(outputs, targets), expected)
    assert_same_losses(hybrid(concatenated(outputs), targets), expected)


def test_eval_mode_of_one_group_schemes_is_one_to_one() -> None:
    outputs = random_outputs(13, 2, 12, NUM_CLASSES, 2)
    targets = random_targets(13, [3, 1], NUM_CLASSES)
    plain = SetCriterion(NUM_CLASSES)(outputs, targets)
    for scheme in (HybridEpoch(k=3, one2many_fraction=0.5, total_epochs=4), HybridLayer(k=3, num_one2many_layers=2)):
        assert_same_losses(HybridCriterion(SetCriterion(NUM_CLASSES), scheme).eval()(outputs, targets), plain)


def test_training_outputs_of_the_one2one_group_only_are_passed_through_and_said_once() -> None:
    inference = random_outputs(14, 1, 6, NUM_CLASSES + 1, 1)
    targets = random_targets(14, [2], NUM_CLASSES)
    hybrid = HybridCriterion(DetrCriterion(NUM_CLASSES), HybridBranch(6, 14, k=2))
    with pytest.warns(UserWarning, match="only the 6 one-to-one queries .* training mode"):
        got = hybrid(inference, targets)
    assert_same_losses(got, DetrCriterion(NUM_CLASSES)(inference, targets))


# ------------------------------------------- weight dict and total (item 2)


def hdetr_weight_dict(weight_dict):
    """H-DETR's build(): every key gets a '_one2many' copy of the same weight."""
    new = {}
    for key, value in weight_dict.items():
        new[key] = value
        new[key + "_one2many"] = value
    return new


def detr_weight_dict(num_aux):
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    weights.update({f"{k}_{i}": v for i in range(num_aux) for k, v in list(weights.items())})
    return weights


def test_hybrid_weight_dict_is_hdetrs() -> None:
    weights = detr_weight_dict(2)
    weights["loss_ce_enc"] = 2.0
    assert hybrid_weight_dict(weights, HybridBranch(3, 4, weight=0.5)) == hdetr_weight_dict(weights)
    assert hybrid_weight_dict(weights, HybridEpoch()) == weights
    assert hybrid_weight_dict(weights, HybridLayer()) == weights
    assert hybrid_weight_dict(hdetr_weight_dict(weights), HybridBranch()) == hdetr_weight_dict(weights)


def test_weighted_total_equals_the_hand_computed_sum() -> None:
    # L = sum_k w_k * L_o2o[k] + lambda * sum_k w_k * L_o2m[k], logging keys excluded.
    outputs = detr_layout(15, [2, 1], n1=5, n2=11)
    targets = random_targets(15, [2, 1], NUM_CLASSES)
    weights = detr_weight_dict(2)
    one2one = DetrCriterion(NUM_CLASSES)({k: v for k, v in outputs.items() if not k.endswith("_one2many")}, targets)
    one2many = DetrCriterion(NUM_CLASSES)(
        {"pred_logits": outputs["pred_logits_one2many"], "pred_boxes": outputs["pred_boxes_one2many"],
         "aux_outputs": outputs["aux_outputs_one2many"]}, hdetr_repeat(targets, 3))
    expected = sum(w * float(one2one[k]) for k, w in weights.items()) + 0.5 * sum(
        w * float(one2many[k]) for k, w in weights.items())
    scheme = HybridBranch(5, 11, k=3, weight=0.5)
    losses = HybridCriterion(DetrCriterion(NUM_CLASSES), scheme)(outputs, targets)
    assert {"class_error", "cardinality_error", "cardinality_error_one2many"} <= set(losses)
    total = weighted_loss(losses, hybrid_weight_dict(weights, scheme))
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_weighted_loss_skips_logging_keys_and_warns_about_unweighted_losses() -> None:
    losses = {"loss_ce": torch.tensor(2.0), "class_error": torch.tensor(40.0), "loss_ce_one2many": torch.tensor(3.0)}
    with pytest.warns(UserWarning, match=r"\['loss_ce_one2many'\] have no weight.*hybrid_weight_dict"):
        assert float(weighted_loss(losses, {"loss_ce": 1.5, "loss_bbox": 5.0})) == 3.0
    assert float(weighted_loss(losses, {"loss_ce": 1.0, "loss_ce_one2many": 2.0})) == 8.0
    with pytest.raises(ConfigurationError, match="none of the keys"):
        weighted_loss({"class_error": torch.tensor(1.0)}, {"loss_ce": 1.0})


# --------------------------------------------- one-to-many matcher (item 3)


def test_default_focal_one2many_matcher_under_a_softmax_criterion_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cost.* differs from criterion.matcher.*'derive'"):
        HybridCriterion(DetrCriterion(NUM_CLASSES), HybridBranch(5, 11, k=3), one2many_matcher=OneToManyMatcher(k=3))


def test_derived_one2many_matcher_gives_the_losses_of_matching_copies() -> None:
    outputs = detr_layout(16, [3, 0, 2], n1=5, n2=13)
    targets = random_targets(16, [3, 0, 2], NUM_CLASSES)
    scheme = HybridBranch(5, 13, k=3)
    copies = HybridCriterion(DetrCriterion(NUM_CLASSES), scheme)(outputs, targets)
    derived = HybridCriterion(DetrCriterion(NUM_CLASSES), scheme, one2many_matcher="derive")
    assert derived.one2many_matcher.k == 3
    assert_same_losses(derived(outputs, targets), copies, rtol=1e-5)


def test_foreign_matcher_costs_are_compared_where_they_can_be_read() -> None:
    criterion = DetrCriterion(NUM_CLASSES, matcher=DetrMatcher(1.0, 5.0, 2.0))
    scheme = HybridBranch(5, 13, k=3)
    with pytest.raises(ConfigurationError, match=r"cost_class=1.0 \(one2many_matcher: 2.0\).*class cost softmax"):
        HybridCriterion(criterion, scheme, one2many_matcher=OneToManyMatcher(k=3))
    with pytest.raises(ConfigurationError, match="class cost softmax"):
        HybridCriterion(criterion, scheme, one2many_matcher=OneToManyMatcher(k=3, cost_class=1.0))
    with pytest.raises(ConfigurationError, match="not a hybridmatch matcher.*class_cost='softmax'"):
        HybridCriterion(criterion, scheme, one2many_matcher="derive")
    # With DETR's costs the capacity matcher gives the losses of DETR's matcher on the copies.
    outputs = detr_layout(17, [2, 3], n1=5, n2=13)
    targets = random_targets(17, [2, 3], NUM_CLASSES)
    matching = OneToManyMatcher(k=3, cost_class=1.0, class_cost="softmax")
    got = HybridCriterion(criterion, scheme, one2many_matcher=matching)(outputs, targets)
    expected = HybridCriterion(DetrCriterion(NUM_CLASSES, matcher=DetrMatcher()), scheme)(outputs, targets)
    assert_same_losses(got, expected, rtol=1e-5)


# ------------------------------------------------------- loss keys (item 4)


@pytest.mark.parametrize("num_one2many_layers", [1, 2, 3])
def test_layer_scheme_returns_the_criterions_own_keys(num_one2many_layers: int) -> None:
    outputs = random_outputs(18, 2, 14, NUM_CLASSES + 1, 3)  # 4 decoder layers
    targets = random_targets(18, [2, 3], NUM_CLASSES)
    plain = DetrCriterion(NUM_CLASSES)(outputs, targets)
    repeated = DetrCriterion(NUM_CLASSES)(outputs, hdetr_repeat(targets, 3))
    scheme = HybridLayer(k=3, num_one2many_layers=num_one2many_layers)
    got = HybridCriterion(DetrCriterion(NUM_CLASSES), scheme)(outputs, targets)
    assert "class_error_0" not in got and "class_error" in got
    expected = {
        key: (repeated if any(key.endswith(f"_{i}") for i in range(num_one2many_layers)) else plain)[key]
        for key in plain
    }
    assert_same_losses(got, expected)


def test_branch_keys_are_the_criterions_plus_one2many_copies() -> None:
    outputs = detr_layout(19, [1, 2], n1=4, n2=8)
    targets = random_targets(19, [1, 2], NUM_CLASSES)
    plain = DetrCriterion(NUM_CLASSES)(outputs, targets)
    got = HybridCriterion(DetrCriterion(NUM_CLASSES), HybridBranch(4, 8, k=2))(outputs, targets)
    assert sorted(got) == sorted([*plain, *(f"{key}_one2many" for key in plain)])


def test_epoch_switch_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    outputs = random_outputs(20, 1, 12, NUM_CLASSES, 1)
    targets = random_targets(20, [2], NUM_CLASSES)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridEpoch(k=4, one2many_fraction=0.5, total_epochs=4))
    with caplog.at_level(logging.INFO, logger="hybridmatch"):
        hybrid(outputs, targets, epoch=2)  # a resumed run in the one-to-one phase: no switch seen
        hybrid(outputs, targets, epoch=1)
        assert caplog.records == []
        hybrid(outputs, targets, epoch=2)
        hybrid(outputs, targets, epoch=1)
        hybrid(outputs, targets, epoch=3)
    assert len(caplog.records) == 1
    assert "K=4" in caplog.records[0].getMessage() and "divided by about K" in caplog.records[0].getMessage()


# -------------------------------------------------- query counts (item 5)


def test_hdetr_layout_query_counts_are_checked() -> None:
    targets = random_targets(21, [1], NUM_CLASSES)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(4, 8, k=2))
    few = hdetr_layout(21, [1], n1=4, n2=3)
    with pytest.raises(ShapeError, match=r"outputs\['pred_logits_one2many'\] has 3 queries but the scheme's num_one2many is 8"):
        hybrid(few, targets)
    wrong_one2one = hdetr_layout(21, [1], n1=5, n2=8)
    with pytest.raises(ShapeError, match=r"outputs\['pred_logits'\] has 5 queries but the scheme's num_one2one is 4"):
        hybrid(wrong_one2one, targets)
    short = hdetr_layout(21, [1], n1=4, n2=8)
    short["aux_outputs_one2many"] = short["aux_outputs_one2many"][:1]
    with pytest.raises(ShapeError, match=r"outputs\['aux_outputs_one2many'\] has 1 layers but outputs\['aux_outputs'\] has 2"):
        hybrid(short, targets)
    no_logits = hdetr_layout(21, [1], n1=4, n2=8)
    del no_logits["pred_logits_one2many"]
    with pytest.raises(InvalidPredictionError, match=r"'pred_boxes_one2many'.* but no 'pred_logits_one2many'"):
        hybrid(no_logits, targets)
    bad_layer = hdetr_layout(21, [1], n1=4, n2=8)
    bad_layer["aux_outputs_one2many"][1]["pred_logits"] = bad_layer["aux_outputs_one2many"][1]["pred_logits"][:, :7]
    with pytest.raises(ShapeError, match=r"outputs\['aux_outputs_one2many'\]\[1\]\['pred_logits'\] has 7 queries .* 8"):
        hybrid(bad_layer, targets)


def test_concatenated_layout_aux_query_counts_are_checked() -> None:
    outputs = concatenated(hdetr_layout(22, [2], n1=4, n2=8))
    outputs["aux_outputs"][0] = {key: value[:, :10] for key, value in outputs["aux_outputs"][0].items()}
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(4, 8, k=2))
    with pytest.raises(ShapeError, match=r"outputs\['aux_outputs'\]\[0\]\['pred_logits'\] has 10 queries .*expected 12"):
        hybrid(outputs, random_targets(22, [2], NUM_CLASSES))


# ------------------------------------------------ what was expected (item 10)


def test_targets_given_as_a_dict_ask_for_a_list() -> None:
    outputs = random_outputs(23, 1, 7, NUM_CLASSES, 0)
    target = random_targets(23, [1], NUM_CLASSES)[0]
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4, k=2))
    with pytest.raises(InvalidTargetError, match=r"targets must be a list of per-image dicts.*got a single dict.*\[targets\]"):
        hybrid(outputs, target)
    with pytest.raises(InvalidTargetError, match=r"targets must be a list of per-image dicts.*got a Tensor"):
        hybrid(outputs, target["boxes"])
    with pytest.raises(InvalidTargetError, match=r"targets must be a list of per-image dicts.*single dict"):
        global_num_boxes(target)


def test_a_criterion_that_returns_no_dict_is_named() -> None:
    outputs = random_outputs(24, 1, 7, NUM_CLASSES, 0)
    hdetr_style = lambda o, t: (SetCriterion(NUM_CLASSES)(o, t), 0.0, 0.0, 0.0)  # noqa: E731  (losses, timings)
    with pytest.raises(ConfigurationError, match=r"criterion returned a tuple, expected a dict .*\[0\]"):
        HybridCriterion(hdetr_style, HybridBranch(3, 4, k=2))(outputs, random_targets(24, [1], NUM_CLASSES))


def test_aux_outputs_must_be_a_list_of_dicts() -> None:
    targets = random_targets(25, [1], NUM_CLASSES)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(3, 4, k=2))
    outputs = random_outputs(25, 1, 7, NUM_CLASSES, 1)
    as_dict = {**outputs, "aux_outputs": outputs["aux_outputs"][0]}
    with pytest.raises(InvalidPredictionError, match=r"outputs\['aux_outputs'\] must be a list of per-layer dicts.*got a dict"):
        hybrid(as_dict, targets)
    as_tensors = {**outputs, "aux_outputs": [outputs["aux_outputs"][0]["pred_logits"]]}
    with pytest.raises(InvalidPredictionError, match=r"outputs\['aux_outputs'\]\[0\] must be a dict .*got a Tensor"):
        hybrid(as_tensors, targets)
