"""Matcher.match_layers: several decoder layers against the same targets in one call, as each alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from hybridmatch import CostSum, FocalClassCost, GIoUCost, L1BoxCost, SoftmaxClassCost
from hybridmatch.costs import Cost, KeypointL1Cost, MaskDiceCost, OKSCost
from hybridmatch.errors import InvalidPredictionError
from hybridmatch.matchers import Groups, Hungarian, HungarianMatcher, Matcher, OneToManyMatcher, TopK, TopKMatcher
from hybridmatch.costs import IoUQuality

from .test_matcher_core import SIGMAS, task_batch


def layers_of(seed: int, counts: list[int], num_layers: int, num_queries: int) -> tuple[list[dict], list[dict]]:
    """``num_layers`` output dicts of one shape, and one list of targets."""
    layers = [task_batch(seed + 1000 * layer, counts, num_queries)[0] for layer in range(num_layers)]
    return layers, task_batch(seed, counts, num_queries)[1]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(p, q) and torch.equal(s, t) for (p, s), (q, t) in zip(x, y))
        for x, y in zip(a, b)
    )


MATCHERS = {
    "detr focal": lambda: HungarianMatcher(),
    "detr softmax": lambda: HungarianMatcher(class_cost="softmax"),
    "one-to-many": lambda: OneToManyMatcher(k=3),
    "boxes only": lambda: Matcher(5 * L1BoxCost() + 2 * GIoUCost(), Hungarian(capacity=2)),
    "focal + l1 (torch path)": lambda: Matcher(2 * FocalClassCost() + 5 * L1BoxCost(), Hungarian()),
    "groups": lambda: Matcher(2 * FocalClassCost() + 5 * L1BoxCost() + 2 * GIoUCost(), Groups(2)),
    "top-k": lambda: TopKMatcher(k=2),
    "keypoints": lambda: Matcher(5 * KeypointL1Cost() + 2 * OKSCost(sigmas=SIGMAS), Hungarian(capacity=2)),
}


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(sorted(MATCHERS)),
    st.integers(0, 10_000),
    st.lists(st.integers(0, 5), min_size=1, max_size=3),
    st.integers(1, 4),
    st.sampled_from([4, 8]),
)
def test_equals_each_layer_alone(name: str, seed: int, counts: list[int], num_layers: int, num_queries: int) -> None:
    matcher = MATCHERS[name]()
    layers, targets = layers_of(seed, counts, num_layers, num_queries)
    assert same(matcher.match_layers(layers, targets), [matcher(layer, targets) for layer in layers])


@given(st.integers(0, 10_000), st.lists(st.integers(0, 6), min_size=1, max_size=3), st.integers(2, 4))
def test_each_layer_gets_scipys_optimum(seed: int, counts: list[int], num_layers: int) -> None:
    # Against scipy on the float64 cost of each layer, written here.
    layers, targets = layers_of(seed, counts, num_layers, 9)
    matcher = Matcher(5 * L1BoxCost(), Hungarian())
    for layer, pairs in zip(layers, matcher.match_layers(layers, targets)):
        for b, (rows, cols) in enumerate(pairs):
            cost = torch.cdist(layer["pred_boxes"][b].double(), targets[b]["boxes"].double(), p=1).numpy() * 5
            r, c = linear_sum_assignment(cost)
            assert len(rows) == len(r)
            assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(cost[r, c].sum(), abs=1e-5)


def test_one_cost_and_one_solve_for_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    import hybridmatch.matchers.assigners as assigners

    layers, targets = layers_of(3, [4, 0, 2], 6, 20)
    matcher = HungarianMatcher()
    seen = []
    solve = assigners.batched_linear_sum_assignment
    monkeypatch.setattr(assigners, "batched_linear_sum_assignment", lambda cost, *a, **k: seen.append(cost.shape) or solve(cost, *a, **k))
    computed = []
    compute_layers = CostSum.compute_layers
    monkeypatch.setattr(CostSum, "compute_layers", lambda self, l, t: computed.append(len(l)) or compute_layers(self, l, t))
    result = matcher.match_layers(layers, targets)
    assert seen == [(18, 20, 4)] and computed == [6]
    monkeypatch.undo()
    assert same(result, [matcher(layer, targets) for layer in layers])


def test_threads_do_not_change_the_result() -> None:
    layers, targets = layers_of(5, [30, 7], 7, 300)
    matcher = OneToManyMatcher(k=6)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = matcher.match_layers(layers, targets)
        torch.set_num_threads(2)
        two = matcher.match_layers(layers, targets)
    finally:
        torch.set_num_threads(previous)
    assert same(one, two) and same(one, [matcher(layer, targets) for layer in layers])


class _Spy(Cost):
    """A cost of one's own (images_independent left False): called once per layer."""

    output_keys, target_keys = ("pred_boxes",), ("boxes",)

    def __init__(self) -> None:
        self.calls = 0

    def compute(self, outputs, targets, shared):  # type: ignore[no-untyped-def]
        self.calls += 1
        return torch.cdist(outputs["pred_boxes"].float(), targets["boxes"].float(), p=1)


def test_layers_that_cannot_be_stacked_are_matched_one_by_one() -> None:
    layers, targets = layers_of(1, [3, 2], 3, 8)
    spy = _Spy()
    matcher = Matcher(spy, Hungarian())
    assert same(matcher.match_layers(layers, targets), [matcher(layer, targets) for layer in layers])
    assert spy.calls == 6
    # A random point sample draws per call: not stacked either (same draws as alone).
    masks = Matcher(MaskDiceCost(16, seed=0), Hungarian())
    again = Matcher(MaskDiceCost(16, seed=0), Hungarian())
    assert not MaskDiceCost(16).images_independent
    assert same(masks.match_layers(layers, targets), [again(layer, targets) for layer in layers])
    # Layers of different shapes: each alone.
    odd = [layers[0], task_batch(9, [3, 2], num_queries=5)[0]]
    matcher = HungarianMatcher()
    assert same(matcher.match_layers(odd, targets), [matcher(layer, targets) for layer in odd])
    assert matcher.match_layers([], targets) == []


def test_an_error_names_the_layers_own_image_and_query() -> None:
    layers, targets = layers_of(2, [3, 2], 4, 8)
    layers[2]["pred_boxes"][1, 5, 0] = math.nan
    matcher = HungarianMatcher()
    with pytest.raises(InvalidPredictionError) as stacked:
        matcher.match_layers(layers, targets)
    with pytest.raises(InvalidPredictionError) as alone:
        matcher(layers[2], targets)
    assert str(stacked.value) == str(alone.value)
    assert "[1, 5]" in str(stacked.value)


def test_no_images_and_one_layer() -> None:
    matcher = HungarianMatcher()
    empty = [{"pred_logits": torch.zeros(0, 5, 3), "pred_boxes": torch.zeros(0, 5, 4)} for _ in range(3)]
    assert matcher.match_layers(empty, []) == [[], [], []]
    layers, targets = layers_of(4, [2, 3], 1, 6)
    assert same(matcher.match_layers(layers, targets), [matcher(layers[0], targets)])


def test_layers_must_be_a_list_of_dicts() -> None:
    layers, targets = layers_of(2, [1], 2, 4)
    with pytest.raises(InvalidPredictionError, match="list of output dicts"):
        HungarianMatcher().match_layers(layers[0], targets)  # type: ignore[arg-type]


def test_builtin_costs_say_whether_images_are_independent() -> None:
    for cost in (FocalClassCost(), SoftmaxClassCost(), L1BoxCost(), GIoUCost(), KeypointL1Cost(),
                 OKSCost(sigmas=SIGMAS), IoUQuality(), 2 * FocalClassCost() + 5 * L1BoxCost()):
        assert cost.images_independent, cost
    assert not (L1BoxCost() + MaskDiceCost(16)).images_independent
    assert not _Spy().images_independent


# ---------------------------------------------------------------- HybridCriterion matches a call's layers at once
from hybridmatch import HybridBranch, HybridCriterion, HybridLayer  # noqa: E402
from hybridmatch.costs import _fused  # noqa: E402
from hybridmatch.matchers import _one2many  # noqa: E402
from hybridmatch.targets import pad_targets  # noqa: E402

from .detr_reference import SetCriterion, random_outputs, random_targets  # noqa: E402

N1, N2, CLASSES = 6, 18, 5


def solver_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    import hybridmatch.matchers.assigners as assigners

    calls: list = []
    solve = assigners.batched_linear_sum_assignment
    monkeypatch.setattr(assigners, "batched_linear_sum_assignment",
                        lambda cost, *a, **k: calls.append(tuple(cost.shape)) or solve(cost, *a, **k))
    return calls


@pytest.mark.parametrize("one2many_matcher", [None, "derive"])
@pytest.mark.parametrize("scheme", ["branch", "layer"])
def test_the_criterion_matches_each_calls_layers_at_once(monkeypatch: pytest.MonkeyPatch, one2many_matcher, scheme) -> None:
    counts = [3, 0, 2]
    outputs = random_outputs(7, len(counts), N1 + N2 if scheme == "branch" else N1, CLASSES, num_aux=3, enc=True)
    targets = random_targets(7, counts, CLASSES)
    chosen = HybridBranch(N1, N2, k=3) if scheme == "branch" else HybridLayer(num_one2many_layers=2, k=3)
    criterion = HybridCriterion(SetCriterion(CLASSES), chosen, one2many_matcher=one2many_matcher)

    calls = solver_calls(monkeypatch)
    losses = criterion(outputs, targets)
    batched = list(calls)
    calls.clear()
    monkeypatch.setattr("hybridmatch.criterion.precompute_layers", lambda *args, **kwargs: None)
    alone = criterion(outputs, targets)
    assert losses.keys() == alone.keys()
    for key in losses:
        assert torch.equal(losses[key], alone[key]), key  # the very same matches
    # One solve per group's layers (+ the encoder's, whose targets differ), instead of one per layer.
    copies = 3 if one2many_matcher is None else 1  # the criterion's matcher on 3 copies, or capacity 3
    if scheme == "branch":  # 4 layers x 3 images; the encoder's proposals span every query
        assert batched == [(12, N1, 3), (3, N1 + N2, 3), (12, N2, 3 * copies)]
        assert len(calls) == 4 + 1 + 4
    else:  # layers 0-1 one-to-many, 2-3 one-to-one: two calls of the criterion, two layers each
        assert sorted(shape[0] for shape in batched) == [3, 6, 6]
        assert len(calls) == 3 + 2 + 1  # the last one-to-many layer is passed twice


def test_outputs_that_require_grad_take_the_native_path_and_keep_their_graph() -> None:
    counts = [3, 1]
    outputs = random_outputs(8, 2, N1 + N2, CLASSES, num_aux=2, requires_grad=True)
    targets = random_targets(8, counts, CLASSES)
    criterion = HybridCriterion(SetCriterion(CLASSES), HybridBranch(N1, N2, k=2), one2many_matcher="derive")
    losses = criterion(outputs, targets)
    sum(losses.values()).backward()
    assert outputs["pred_boxes"].grad is not None and outputs["aux_outputs"][0]["pred_logits"].grad is not None
    every = [outputs, *outputs["aux_outputs"]]
    layers = [{key: layer[key] for key in ("pred_logits", "pred_boxes")} for layer in every]  # contiguous, with grad
    detached = [{key: value.detach() for key, value in layer.items()} for layer in layers]
    matcher = HungarianMatcher()
    with torch.no_grad():
        assert _fused.fused_cost(matcher.cost.terms, layers, pad_targets(targets)) is not None
        assert same(matcher.match_layers(layers, targets), [matcher(layer, targets) for layer in detached])


def test_calls_it_did_not_prepare_go_to_the_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    class SlicingCriterion(SetCriterion):
        """Matches a copy of each layer: the prepared matches are not used, and nothing changes."""

        def _losses(self, outputs, targets, num_boxes):  # type: ignore[no-untyped-def]
            copied = {key: value.clone() for key, value in outputs.items() if isinstance(value, torch.Tensor)}
            return super()._losses(copied, targets, num_boxes)

    counts = [2, 4]
    outputs = random_outputs(3, 2, N1 + N2, CLASSES, num_aux=2)
    targets = random_targets(3, counts, CLASSES)
    scheme = HybridBranch(N1, N2, k=2)
    losses = HybridCriterion(SlicingCriterion(CLASSES), scheme, one2many_matcher="derive")(outputs, targets)
    reference = HybridCriterion(SetCriterion(CLASSES), scheme, one2many_matcher="derive")
    monkeypatch.setattr("hybridmatch.criterion.precompute_layers", lambda *args, **kwargs: None)
    alone = reference(outputs, targets)
    assert all(torch.equal(losses[key], alone[key]) for key in alone)


def test_a_failing_layer_raises_from_the_criterions_own_call() -> None:
    counts = [2, 1]
    outputs = random_outputs(4, 2, N1 + N2, CLASSES, num_aux=2)
    outputs["aux_outputs"][1]["pred_boxes"][1, 3, 0] = math.nan
    criterion = HybridCriterion(SetCriterion(CLASSES), HybridBranch(N1, N2, k=2), one2many_matcher="derive")
    with pytest.raises(InvalidPredictionError, match=r"\[1, 3\]"):
        criterion(outputs, random_targets(4, counts, CLASSES))
    assert _one2many.precompute_layers(HungarianMatcher(), None, [outputs, outputs["aux_outputs"][1]],
                                       random_targets(4, counts, CLASSES)) is None


def test_targets_or_outputs_changed_before_the_matcher_call_are_matched_anew() -> None:
    class EditingCriterion(SetCriterion):
        """Shifts the target boxes (a new tensor) and edits the logits in place before matching."""

        def forward(self, outputs, targets):  # type: ignore[no-untyped-def]
            for target in targets:
                target["boxes"] = (target["boxes"] + 0.05).clamp(0.0, 1.0)
            outputs["aux_outputs"][0]["pred_logits"].mul_(-1.0)
            return super().forward(outputs, targets)

    counts = [3, 2]
    made = [random_targets(6, counts, CLASSES) for _ in range(2)]
    outputs = [random_outputs(6, 2, N1, CLASSES, num_aux=2) for _ in range(2)]
    scheme = HybridLayer(num_one2many_layers=0, k=2)  # one-to-one only: the criterion's own matcher
    batched = HybridCriterion(EditingCriterion(CLASSES), scheme)(outputs[0], made[0])
    plain = EditingCriterion(CLASSES)(outputs[1], made[1])  # no wrapper: every layer matched when asked
    assert batched.keys() == plain.keys()
    assert all(torch.equal(batched[key], plain[key]) for key in plain)


def test_a_criterion_whose_matcher_cannot_be_replaced_is_called_as_it_is() -> None:
    class ReadOnly:
        """A criterion of one's own whose matcher is a read-only property."""

        def __init__(self) -> None:
            self._inner = SetCriterion(CLASSES)
            self.weight_dict = {f"{key}{layer}": weight for key, weight in (("loss_ce", 1.0), ("loss_bbox", 5.0),
                                ("loss_giou", 2.0)) for layer in ("", "_0", "_1")}

        @property
        def matcher(self):  # type: ignore[no-untyped-def]
            return self._inner.matcher

        def __call__(self, outputs, targets):  # type: ignore[no-untyped-def]
            return self._inner(outputs, targets)

    counts = [2, 1]
    outputs, targets = random_outputs(9, 2, N1, CLASSES, num_aux=2), random_targets(9, counts, CLASSES)
    losses = HybridCriterion(ReadOnly(), HybridLayer(num_one2many_layers=0, k=2))(outputs, targets)
    plain = SetCriterion(CLASSES)(outputs, targets)
    assert losses.keys() == plain.keys() and all(torch.equal(losses[key], plain[key]) for key in plain)
