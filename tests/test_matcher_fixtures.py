"""Today's matchers give the indices recorded before the Matcher(cost, assigner) refactor.

The fixture (``tests/fixtures/matcher_indices.pt``) holds the inputs and the indices that the
matchers of commit caa48ca returned; ``tests/fixtures/make_matcher_fixtures.py`` made it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tests.fixtures.make_matcher_fixtures import CONFIGS

from hybridmatch import HungarianMatcher, OneToManyMatcher, TopKMatcher

RECORD = torch.load(Path(__file__).parent / "fixtures" / "matcher_indices.pt", weights_only=False)


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (pred, tgt), (pred_want, tgt_want) in zip(got, want):
        assert pred.dtype == tgt.dtype == torch.int64
        assert torch.equal(pred, pred_want) and torch.equal(tgt, tgt_want)


@pytest.mark.parametrize("key", sorted(k for k in RECORD["results"] if not k.startswith("nan/")))
def test_same_indices_as_before_the_refactor(key: str) -> None:
    case, name, *repeated = key.split("/")
    inputs = RECORD["cases"][case]
    matcher = CONFIGS[name]()
    if repeated:
        got = matcher.match_repeated(inputs["outputs"], inputs["targets"])
    else:
        got = matcher(inputs["outputs"], inputs["targets"])
    _assert_same(got, RECORD["results"][key])


def test_same_indices_with_nan_worst() -> None:
    inputs = RECORD["cases"]["nan"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hungarian = HungarianMatcher(nan_policy="worst")(inputs["outputs"], inputs["targets"])
        topk = TopKMatcher(k=2, nan_policy="worst")(inputs["outputs"], inputs["targets"])
    _assert_same(hungarian, RECORD["results"]["nan/hungarian_worst"])
    _assert_same(topk, RECORD["results"]["nan/topk_worst"])


def test_fixture_covers_every_configuration() -> None:
    names = {key.split("/")[1] for key in RECORD["results"]}
    assert set(CONFIGS) <= names
    assert any(isinstance(CONFIGS[n](), OneToManyMatcher) for n in CONFIGS)
