"""HybridCriterion dropped into DETR-convention engine code, unchanged (issue 19).

The engine functions below are written here the way DETR, Deformable-DETR and H-DETR's
``train_one_epoch`` and ``evaluate`` use a criterion: they call it, read
``criterion.weight_dict`` and sum ``loss_dict[k] * weight_dict[k]`` over the keys that
have a weight. The references are the wrapped criterion's own losses on the one-to-one
queries and on the targets repeated K times by hand (H-DETR's one-to-many step).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from hybridmatch import HungarianMatcher, KeypointL1Cost, OneToManyMatcher
from hybridmatch.criterion import HybridCriterion, KeyMap, weighted_loss
from hybridmatch.errors import ConfigurationError, HybridMatchWarning, InvalidTargetError
from hybridmatch.matchers import Hungarian, Matcher
from hybridmatch.schemes import HybridBranch, HybridEpoch, HybridLayer

from .detr_reference import DetrCriterion, DetrMatcher, SetCriterion, random_outputs, random_targets

NUM_CLASSES = 4
N1, N2, K = 5, 11, 3


class WeightedDetrCriterion(DetrCriterion):
    """DETR's SetCriterion keeps its loss weights as ``self.weight_dict``."""

    def __init__(self, num_aux: int, **kwargs: object) -> None:
        super().__init__(NUM_CLASSES, **kwargs)
        base = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        self.weight_dict = dict(base)
        for i in range(num_aux):
            self.weight_dict.update({f"{key}_{i}": value for key, value in base.items()})


# ----------------------------------------------------- engine code, DETR's convention


def engine_training_step(model_outputs, targets, criterion):
    """The loss lines of train_one_epoch in the three code bases."""
    loss_dict = criterion(model_outputs, targets)
    weight_dict = criterion.weight_dict
    losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict.keys() if k in weight_dict)
    scaled = {k: v * weight_dict[k] for k, v in loss_dict.items() if k in weight_dict}
    unscaled = {f"{k}_unscaled": v for k, v in loss_dict.items()}
    return losses, scaled, unscaled


def engine_evaluate_step(model_outputs, targets, criterion):
    """The loss lines of evaluate in the three code bases."""
    loss_dict = criterion(model_outputs, targets)
    weight_dict = criterion.weight_dict
    scaled = {k: v * weight_dict[k] for k, v in loss_dict.items() if k in weight_dict}
    return sum(scaled.values()), scaled


def branch_outputs(seed, counts, num_aux=2):
    """The decoder's 16 queries concatenated [one-to-one | one-to-many], DETR's softmax logits."""
    return random_outputs(seed, len(counts), N1 + N2, NUM_CLASSES + 1, num_aux)


def split(outputs, queries):
    out = {key: outputs[key][:, queries] for key in ("pred_logits", "pred_boxes")}
    out["aux_outputs"] = [{key: layer[key][:, queries] for key in layer} for layer in outputs["aux_outputs"]]
    return out


def repeat_by_hand(targets, k):
    out = copy.deepcopy(targets)
    for t in out:
        t["labels"], t["boxes"] = t["labels"].repeat(k), t["boxes"].repeat(k, 1)
    return out


# ----------------------------------------------------------------- item 1: weight_dict


def test_detr_engine_lines_weight_every_loss_of_the_hybrid_branch() -> None:
    counts = [2, 0, 3]
    outputs, targets = branch_outputs(0, counts), random_targets(0, counts, NUM_CLASSES)
    scheme = HybridBranch(N1, N2, k=K, weight=0.5)
    criterion = HybridCriterion(WeightedDetrCriterion(num_aux=2), scheme)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)  # nothing is left unweighted
        total, scaled, unscaled = engine_training_step(outputs, targets, criterion)

    # Reference: DETR's criterion on each group, the one-to-many one on K copies, by hand.
    plain = WeightedDetrCriterion(num_aux=2)
    weights = plain.weight_dict
    one2one = plain(split(outputs, slice(0, N1)), targets)
    one2many = plain(split(outputs, slice(N1, N1 + N2)), repeat_by_hand(targets, K))
    expected = sum(weights[k] * float(one2one[k]) for k in weights)
    expected += 0.5 * sum(weights[k] * float(one2many[k]) for k in weights)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert sum(key.endswith("_one2many") for key in scaled) == len(weights)  # 9 one-to-many terms weighted
    assert "class_error" not in scaled and "class_error_unscaled" in unscaled  # logging keys: logged only
    total.backward() if total.requires_grad else None


def test_detr_evaluate_lines_give_the_criterions_own_losses() -> None:
    counts = [1, 2]
    outputs, targets = branch_outputs(1, counts), random_targets(1, counts, NUM_CLASSES)
    criterion = HybridCriterion(WeightedDetrCriterion(num_aux=2), HybridBranch(N1, N2, k=K)).eval()
    total, scaled = engine_evaluate_step(split(outputs, slice(0, N1)), targets, criterion)
    plain = WeightedDetrCriterion(num_aux=2)
    own = plain(split(outputs, slice(0, N1)), targets)
    assert sorted(scaled) == sorted(plain.weight_dict)
    assert float(total) == pytest.approx(sum(float(own[k]) * w for k, w in plain.weight_dict.items()), rel=1e-6)


@pytest.mark.parametrize("scheme", [HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2), HybridLayer(k=K, num_one2many_layers=1)])
def test_one_group_schemes_use_the_criterions_weight_dict(scheme) -> None:
    criterion = HybridCriterion(WeightedDetrCriterion(num_aux=2), scheme)
    assert criterion.weight_dict == WeightedDetrCriterion(num_aux=2).weight_dict


def test_weight_dict_follows_the_wrapped_criterion_and_is_settable() -> None:
    wrapped = WeightedDetrCriterion(num_aux=0)
    criterion = HybridCriterion(wrapped, HybridBranch(N1, N2, k=K))
    wrapped.weight_dict["loss_ce"] = 3.0  # DETR code bases edit it in place
    assert criterion.weight_dict["loss_ce"] == criterion.weight_dict["loss_ce_one2many"] == 3.0
    full = {**criterion.weight_dict, "loss_bbox_one2many": 7.0}
    criterion.weight_dict = full
    assert criterion.weight_dict == full


def test_weight_dict_without_one_on_the_criterion_names_the_fix() -> None:
    criterion = HybridCriterion(DetrCriterion(NUM_CLASSES), HybridBranch(N1, N2, k=K))
    assert not hasattr(criterion, "weight_dict")
    with pytest.raises(AttributeError, match="has no weight_dict.*hybrid_weight_dict"):
        criterion.weight_dict


# ------------------------------- item 2: a weight dict that was not extended is said


def test_setting_the_one_to_one_weight_dict_warns_naming_the_missing_keys() -> None:
    wrapped = WeightedDetrCriterion(num_aux=2)
    criterion = HybridCriterion(wrapped, HybridBranch(N1, N2, k=K))
    with pytest.warns(HybridMatchWarning, match=r"without the one-to-many keys \['loss_ce_one2many'"):
        criterion.weight_dict = wrapped.weight_dict  # the obvious fix, which trains one-to-one only


def test_losses_without_a_weight_are_warned_about_once_by_name() -> None:
    counts = [2, 1]
    outputs, targets = branch_outputs(2, counts), random_targets(2, counts, NUM_CLASSES)
    criterion = HybridCriterion(WeightedDetrCriterion(num_aux=2), HybridBranch(N1, N2, k=K))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        criterion.weight_dict = {"loss_ce": 1.0, "loss_bbox": 5.0}
    with pytest.warns(HybridMatchWarning, match=r"returned \['loss_giou'.*'loss_ce_one2many'.*leaves them out"):
        engine_training_step(outputs, targets, criterion)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        engine_training_step(outputs, targets, criterion)  # said once


# ---------------------------------------------------- item 5: DETR's matcher swapped


def test_detr_weights_without_a_class_cost_warn_and_the_named_constructors_match_detr() -> None:
    outputs = random_outputs(3, 2, 9, NUM_CLASSES + 1, 0)
    targets = random_targets(3, [3, 4], NUM_CLASSES)
    with pytest.warns(HybridMatchWarning, match="cost_class=1 but no class_cost.*class_cost='softmax'"):
        HungarianMatcher(1, 5, 2)
    expected = DetrMatcher(1.0, 5.0, 2.0)(outputs, targets)
    for got, want in zip(HungarianMatcher.detr()(outputs, targets), expected):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        HungarianMatcher()  # Deformable-DETR's defaults, documented
        HungarianMatcher(2, 5, 2)
        HungarianMatcher(1, 5, 2, class_cost="softmax")
        assert OneToManyMatcher.deformable_detr(k=4).k == 4


# --------------------------------------------------- item 6: other per-layer names


class SlashNamedCriterion(SetCriterion):
    """Names an earlier layer's losses 'aux{i}/loss_bbox' instead of DETR's 'loss_bbox_{i}'."""

    def forward(self, outputs, targets):
        losses = super().forward({k: v for k, v in outputs.items() if k != "aux_outputs"}, targets)
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"aux{i}/{k}": v for k, v in self._losses(aux, targets, num_boxes).items()})
        return losses


def test_layer_scheme_refuses_per_layer_names_it_cannot_read_and_follows_key_map() -> None:
    outputs = random_outputs(4, 2, 10, NUM_CLASSES, 3)  # 4 decoder layers
    targets = random_targets(4, [2, 1], NUM_CLASSES)
    scheme = HybridLayer(k=2, num_one2many_layers=2)
    with pytest.raises(ConfigurationError, match=r"none of its loss keys.*KeyMap\(layer_key=.*aux\{layer\}/\{key\}"):
        HybridCriterion(SlashNamedCriterion(NUM_CLASSES), scheme)(outputs, targets)
    got = HybridCriterion(SlashNamedCriterion(NUM_CLASSES), scheme, key_map=KeyMap(layer_key="aux{layer}/{key}"))(
        outputs, targets
    )
    # Reference: layers 0 and 1 on two copies of the targets, layer 2 and the final one on the originals.
    many = SlashNamedCriterion(NUM_CLASSES)(outputs, repeat_by_hand(targets, 2))
    one = SlashNamedCriterion(NUM_CLASSES)(outputs, targets)
    expected = {k: (many[k] if k.startswith(("aux0/", "aux1/")) else one[k]) for k in one}
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


# --------------------------------------- item 7: a matcher whose capacity is unknown


def test_a_one2many_matcher_of_unknown_capacity_is_refused() -> None:
    criterion = DetrCriterion(NUM_CLASSES, matcher=DetrMatcher())
    with pytest.raises(ConfigurationError, match="does not say how many queries.*capacity = 3"):
        HybridCriterion(criterion, HybridBranch(N1, N2, k=K), one2many_matcher=DetrMatcher())


# ---------------------------------------------------------------- item 8: messages


class EpochCriterion(SetCriterion):
    """A criterion whose forward takes the epoch (some code bases schedule losses by it)."""

    def forward(self, outputs, targets, epoch):
        self.epochs = getattr(self, "epochs", []) + [epoch]
        return super().forward(outputs, targets)


def test_the_epoch_reaches_a_criterion_that_takes_it() -> None:
    outputs = random_outputs(5, 1, 6, NUM_CLASSES, 1)
    targets = random_targets(5, [2], NUM_CLASSES)
    wrapped = EpochCriterion(NUM_CLASSES)
    criterion = HybridCriterion(wrapped, HybridEpoch(k=2, one2many_fraction=0.5, total_epochs=4))
    criterion(outputs, targets, epoch=3)
    criterion(outputs, targets)
    assert wrapped.epochs == [3, 0]


def test_a_nested_loss_dict_is_named() -> None:
    outputs = random_outputs(6, 1, 6, NUM_CLASSES, 0)
    nested = lambda o, t: {"loss_ce": torch.tensor(1.0), "extras": {"loss_x": torch.tensor(2.0)}}  # noqa: E731
    with pytest.raises(ConfigurationError, match="returned 'extras': a dict.*flatten"):
        HybridCriterion(nested, HybridBranch(2, 4, k=2, weight=0.5))(outputs, random_targets(6, [1], NUM_CLASSES))


def test_layers_under_another_key_point_at_key_map() -> None:
    outputs = random_outputs(7, 1, 6, NUM_CLASSES, 2)
    outputs["intermediate"] = outputs.pop("aux_outputs")
    with pytest.raises(ConfigurationError, match=r"KeyMap\(aux_outputs='intermediate'\)"):
        HybridCriterion(SetCriterion(NUM_CLASSES), HybridLayer(k=2, num_one2many_layers=2))(
            outputs, random_targets(7, [1], NUM_CLASSES)
        )


def test_derive_names_the_foreign_matchers_module() -> None:
    criterion = DetrCriterion(NUM_CLASSES, matcher=DetrMatcher())
    DetrMatcher.__name__ = DetrMatcher.__qualname__ = "HungarianMatcher"  # as DETR names it
    try:
        with pytest.raises(ConfigurationError, match=r"tests\.detr_reference\.HungarianMatcher, not a hybridmatch"):
            HybridCriterion(criterion, HybridBranch(N1, N2, k=K), one2many_matcher="derive")
    finally:
        DetrMatcher.__name__ = DetrMatcher.__qualname__ = "DetrMatcher"


# ------------------------------------------ bad input (issue 20, item 9, the criterion's part)


def test_the_number_of_target_dicts_must_be_the_batch_size() -> None:
    outputs = branch_outputs(8, [1, 2])  # B = 2
    targets = random_targets(8, [1, 2, 1], NUM_CLASSES)  # 3 dicts, as a naive wrapper passes
    criterion = HybridCriterion(WeightedDetrCriterion(num_aux=2), HybridBranch(N1, N2, k=K))
    with pytest.raises(InvalidTargetError, match=r"3 dicts but outputs\['pred_logits'\] has batch size 2"):
        criterion(outputs, targets)
    with pytest.raises(InvalidTargetError, match="batch size 2"):
        criterion.eval()(split(outputs, slice(0, N1)), targets)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -float("inf"), torch.tensor(float("nan")), "2"])
def test_weighted_loss_refuses_a_weight_that_is_not_a_finite_number(weight: object) -> None:
    losses = {"loss_ce": torch.tensor(1.0), "loss_bbox": torch.tensor(2.0)}
    with pytest.raises(ConfigurationError, match=r"weight_dict\['loss_bbox'\] is .*finite number"):
        weighted_loss(losses, {"loss_ce": 1.0, "loss_bbox": weight})
    assert float(weighted_loss(losses, {"loss_ce": 1.0, "loss_bbox": torch.tensor(3.0)})) == 7.0


def test_the_criterions_state_dict_carries_the_schemes_epoch() -> None:
    scheme = HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=4)
    criterion = HybridCriterion(WeightedDetrCriterion(num_aux=0), scheme)
    scheme.step()
    scheme.step()
    state = criterion.state_dict()
    resumed_scheme = HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=4)
    resumed = HybridCriterion(WeightedDetrCriterion(num_aux=0), resumed_scheme)
    resumed.load_state_dict(state)
    assert resumed_scheme.epoch == 2 and not resumed_scheme.is_one2many()
    other = HybridCriterion(WeightedDetrCriterion(num_aux=0), HybridEpoch(k=K + 1, one2many_fraction=0.5, total_epochs=4))
    with pytest.raises(ConfigurationError, match="k=3"):
        other.load_state_dict(state)  # another recipe's checkpoint


class KeypointCriterion(torch.nn.Module):
    """A pose criterion: L1 on matched keypoints; its targets carry no boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.matcher = Matcher(KeypointL1Cost(), Hungarian())

    def forward(self, outputs, targets):
        indices = self.matcher(outputs, targets)
        num = max(sum(len(t["labels"]) for t in targets), 1)
        pred = torch.cat([outputs["pred_keypoints"][b, q] for b, (q, _) in enumerate(indices)])
        tgt = torch.cat([t["keypoints"][j][..., :2] for t, (_, j) in zip(targets, indices)])
        return {"loss_keypoints": (pred - tgt).abs().sum() / num}


def test_box_less_targets_are_repeated_as_they_are() -> None:
    g = torch.Generator().manual_seed(9)
    targets = [
        {"labels": torch.zeros(m, dtype=torch.long), "keypoints": torch.rand(m, 17, 3, generator=g), "area": torch.rand(m, generator=g)}
        for m in (2, 1)
    ]
    outputs = {"pred_logits": torch.randn(2, N1 + N2, 1, generator=g), "pred_keypoints": torch.rand(2, N1 + N2, 17, 2, generator=g)}
    got = HybridCriterion(KeypointCriterion(), HybridBranch(N1, N2, k=K))(outputs, targets)
    copies = [{key: value.repeat(K, *([1] * (value.ndim - 1))) for key, value in t.items()} for t in targets]
    one2one = KeypointCriterion()({key: value[:, :N1] for key, value in outputs.items()}, targets)
    one2many = KeypointCriterion()({key: value[:, N1:] for key, value in outputs.items()}, copies)
    torch.testing.assert_close(got["loss_keypoints"], one2one["loss_keypoints"])
    torch.testing.assert_close(got["loss_keypoints_one2many"], one2many["loss_keypoints"])
