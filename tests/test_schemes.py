"""Tests of hybridmatch.schemes: phases, boundaries, checkpoints, validation, warnings."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybridmatch.errors import HybridMatchWarning, ShapeError
from hybridmatch.schemes import (
    HybridBranch,
    HybridEpoch,
    HybridLayer,
    Scheme,
    Supervision,
)


def _all_supervision(scheme: Scheme, num_layers: int = 6) -> list[list[Supervision]]:
    return [scheme.supervision(layer, num_layers) for layer in range(num_layers)]


def _one2many_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, HybridMatchWarning)]


# -- Supervision --------------------------------------------------------------------------


def test_supervision_fields_and_normalisation() -> None:
    s = Supervision(slice(300, 1800), 6, 1, True, "_one2many")
    assert (s.queries, s.k, s.weight, s.one2many, s.suffix) == (
        slice(300, 1800),
        6,
        1.0,
        True,
        "_one2many",
    )
    assert isinstance(s.weight, float)
    with pytest.raises(AttributeError):
        s.k = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "args, match",
    [
        ((slice(0, 3), 2, 1.0, False, ""), "one2many=False needs k=1"),
        ((slice(0, 3), 0, 1.0, False, ""), "k must be an int >= 1, got 0"),
        ((slice(0, 3), True, 1.0, True, ""), r"k must be an int >= 1, got True \(bool\)"),
        ((slice(0, 3), 1, -1.0, False, ""), "weight must be a finite real number >= 0"),
        ((slice(0, 3), 1, math.nan, False, ""), "weight must be a finite real number >= 0"),
        (((0, 3), 1, 1.0, False, ""), "queries must be a slice"),
        ((slice(0, 3), 1, 1.0, 1, ""), "one2many must be a bool"),
        ((slice(0, 3), 1, 1.0, False, None), "suffix must be a str"),
    ],
)
def test_supervision_validation(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Supervision(*args)


# -- HybridBranch -------------------------------------------------------------------------


def test_branch_paper_defaults() -> None:
    branch = HybridBranch()
    assert (branch.num_one2one, branch.num_one2many, branch.k, branch.weight) == (
        300,
        1500,
        6,
        1.0,
    )
    assert branch.num_queries() == 1800
    assert branch.inference_queries == slice(0, 300)
    assert branch.supervision(5, 6) == [
        Supervision(slice(0, 300), 1, 1.0, False, ""),
        Supervision(slice(300, 1800), 6, 1.0, True, "_one2many"),
    ]


@given(
    n1=st.integers(1, 50),
    n2=st.integers(1, 50),
    k=st.integers(1, 10),
    weight=st.floats(0, 5),
    epoch=st.integers(0, 100),
    num_layers=st.integers(1, 8),
)
def test_branch_groups_cover_queries_without_overlap(
    n1: int, n2: int, k: int, weight: float, epoch: int, num_layers: int
) -> None:
    branch = HybridBranch(n1, n2, k, weight)
    total = branch.num_queries()
    assert total == n1 + n2
    for layer in range(num_layers):
        groups = branch.supervision(layer, num_layers, epoch=epoch)
        covered = [i for g in groups for i in range(total)[g.queries]]
        assert covered == list(range(total))  # in order, each query exactly once
        one2one, one2many = groups
        assert (one2one.k, one2one.weight, one2one.one2many, one2one.suffix) == (1, 1.0, False, "")
        assert (one2many.k, one2many.weight, one2many.one2many, one2many.suffix) == (
            k,
            weight,
            True,
            "_one2many",
        )
        assert one2one.queries == branch.inference_queries == slice(0, n1)


def test_branch_split_returns_views_of_both_groups() -> None:
    branch = HybridBranch(2, 3)
    x = torch.arange(2 * 5 * 4).reshape(2, 5, 4)
    one2one, one2many = branch.split(x)
    assert torch.equal(one2one, x[:, :2]) and torch.equal(one2many, x[:, 2:])
    assert one2one.data_ptr() == x.data_ptr()  # a view, no copy
    first, second = branch.split(x.transpose(0, 1), dim=0)
    assert first.shape == (2, 2, 4) and second.shape == (3, 2, 4)
    first, second = branch.split(x.transpose(1, 2), dim=-1)
    assert first.shape == (2, 4, 2) and second.shape == (2, 4, 3)


def test_branch_split_errors() -> None:
    branch = HybridBranch(2, 3)
    with pytest.raises(ShapeError, match=r"has 4 queries at dim=1.*2 \+ 3 = 5"):
        branch.split(torch.zeros(2, 4, 4))
    with pytest.raises(ShapeError, match="dim=3 is out of range"):
        branch.split(torch.zeros(2, 5, 4), dim=3)
    with pytest.raises(ShapeError, match="dim must be an int"):
        branch.split(torch.zeros(2, 5, 4), dim=True)  # type: ignore[arg-type]


def _literal_branch_mask() -> torch.Tensor:
    # 2 one-to-one + 3 one-to-many queries: each group attends within itself only
    # (True = blocked, nn.MultiheadAttention's convention).
    o, x = False, True
    return torch.tensor(
        [
            [o, o, x, x, x],
            [o, o, x, x, x],
            [x, x, o, o, o],
            [x, x, o, o, o],
            [x, x, o, o, o],
        ]
    )


def test_branch_attention_mask() -> None:
    try:
        from hybridmatch.attention import hybrid_attention_mask  # noqa: F401
    except ImportError:
        pytest.skip("hybridmatch.attention is not there yet")
    mask = HybridBranch(2, 3).attention_mask()
    assert mask.dtype == torch.bool
    assert torch.equal(mask, _literal_branch_mask())
    assert HybridBranch(2, 3).attention_mask(device="cpu").device.type == "cpu"


# -- HybridEpoch --------------------------------------------------------------------------


def _epoch_ks(scheme: HybridEpoch, epochs: int) -> list[int]:
    return [scheme.supervision(5, 6, epoch=e)[0].k for e in range(epochs)]


def test_epoch_paper_phases() -> None:
    # 12 epochs, rho = 2/3: epochs 0..7 one-to-many, 8.. one-to-one, including past the end.
    scheme = HybridEpoch(k=10, one2many_fraction=2 / 3, total_epochs=12)
    assert scheme.one2many_epochs == 8
    assert _epoch_ks(scheme, 16) == [10] * 8 + [1] * 8
    o2m = scheme.supervision(0, 6, epoch=7)
    o2o = scheme.supervision(0, 6, epoch=8)
    assert o2m == [Supervision(slice(None), 10, 1.0, True, "")]
    assert o2o == [Supervision(slice(None), 1, 1.0, False, "")]


@pytest.mark.parametrize(
    "fraction, total, expected",
    [
        (0.0, 12, 0),
        (1.0, 12, 12),
        (2 / 3, 36, 24),
        (0.25, 10, 3),  # 2.5 rounds half up (Python's round() would give 2)
        (0.25, 6, 2),  # 1.5 -> 2
        (0.35, 10, 4),  # 3.5 -> 4
        (0.58, 25, 15),  # 14.499999999999998 in floats: treated as 14.5 -> 15
        (0.7, 10, 7),  # 7.000000000000001 in floats -> 7
        (0.24, 10, 2),  # 2.4 -> 2
        (0.5, 1, 1),  # 0.5 -> 1: a one-epoch schedule trains one-to-many
    ],
)
def test_epoch_rounding(fraction: float, total: int, expected: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HybridMatchWarning)
        scheme = HybridEpoch(one2many_fraction=fraction, total_epochs=total)
    assert scheme.one2many_epochs == expected
    assert _epoch_ks(scheme, total + 2) == [10] * expected + [1] * (total + 2 - expected)


def test_epoch_fraction_zero_and_one_are_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        assert _epoch_ks(HybridEpoch(one2many_fraction=0.0, total_epochs=3), 4) == [1] * 4
        assert _epoch_ks(HybridEpoch(one2many_fraction=1.0, total_epochs=3), 4) == [10] * 3 + [1]


def test_epoch_warns_when_rounding_empties_a_phase() -> None:
    with pytest.warns(HybridMatchWarning, match="rounds to 0 one-to-many epochs.*never"):
        HybridEpoch(one2many_fraction=0.01, total_epochs=12)
    with pytest.warns(HybridMatchWarning, match="rounds to 12 one-to-many epochs.*every epoch"):
        HybridEpoch(one2many_fraction=0.99, total_epochs=12)


def test_epoch_queries_slice_and_default_epoch() -> None:
    scheme = HybridEpoch(k=4, one2many_fraction=0.5, total_epochs=4, num_queries=1800)
    assert scheme.num_queries() == 1800 and scheme.inference_queries == slice(0, 1800)
    assert scheme.supervision(0, 1)[0].queries == slice(0, 1800)
    assert HybridEpoch().num_queries() is None
    ks = []
    for _ in range(5):
        ks.append(scheme.supervision(0, 1)[0].k)  # epoch defaults to scheme.epoch
        scheme.step()
    assert ks == [4, 4, 1, 1, 1]
    assert scheme.epoch == 5
    scheme.set_epoch(1)
    assert scheme.is_one2many() and not scheme.is_one2many(2)


# -- HybridLayer --------------------------------------------------------------------------


def test_layer_paper_boundaries() -> None:
    # 6 layers, L1 = 4: layers 0..3 one-to-many, 4..5 one-to-one, at every epoch.
    scheme = HybridLayer(k=10, num_one2many_layers=4, num_queries=1800)
    for epoch in (0, 7, 100):
        groups = [scheme.supervision(layer, 6, epoch=epoch) for layer in range(6)]
        assert all(len(g) == 1 and g[0].queries == slice(0, 1800) for g in groups)
        assert [g[0].k for g in groups] == [10, 10, 10, 10, 1, 1]
        assert [g[0].one2many for g in groups] == [True] * 4 + [False] * 2
        assert all(g[0].suffix == "" and g[0].weight == 1.0 for g in groups)


@given(l1=st.integers(0, 7), num_layers=st.integers(1, 8))
def test_layer_boundary_property(l1: int, num_layers: int) -> None:
    scheme = HybridLayer(k=3, num_one2many_layers=l1)
    if l1 >= num_layers:
        with pytest.raises(ValueError, match="final decoder layer.*must stay one-to-one"):
            scheme.supervision(num_layers - 1, num_layers)
        return
    ks = [scheme.supervision(layer, num_layers)[0].k for layer in range(num_layers)]
    assert ks == [3] * l1 + [1] * (num_layers - l1)


def test_layer_rejects_all_one2many() -> None:
    with pytest.raises(ValueError, match=r"num_one2many_layers=6 must be < num_layers=6"):
        HybridLayer(num_one2many_layers=6).supervision(0, 6)


@pytest.mark.parametrize("scheme", [HybridBranch(), HybridEpoch(), HybridLayer()])
def test_layer_index_validation(scheme: Scheme) -> None:
    with pytest.raises(ValueError, match=r"layer must be in \[0, num_layers\) = \[0, 6\), got 6"):
        scheme.supervision(6, 6)
    with pytest.raises(ValueError, match="layer must be an int >= 0, got -1"):
        scheme.supervision(-1, 6)
    with pytest.raises(ValueError, match="num_layers must be an int >= 1, got 0"):
        scheme.supervision(0, 0)
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        scheme.supervision(0, 6, epoch=-1)


# -- epochs and checkpoints ----------------------------------------------------------------


def _schemes() -> list[Scheme]:
    return [
        HybridBranch(4, 6, k=3, weight=0.5),
        HybridEpoch(k=5, one2many_fraction=2 / 3, total_epochs=12, num_queries=30),
        HybridEpoch(k=5, one2many_fraction=0.25, total_epochs=10),
        HybridLayer(k=7, num_one2many_layers=2, num_queries=20),
    ]


def _fresh(scheme: Scheme) -> Scheme:
    return type(scheme)(**scheme.state_dict()["settings"])


@given(steps=st.integers(0, 40), index=st.integers(0, 3))
def test_state_round_trip(steps: int, index: int) -> None:
    scheme = _schemes()[index]
    for _ in range(steps):
        scheme.step()
    state = json.loads(json.dumps(scheme.state_dict()))  # plain Python types only
    loaded = _fresh(scheme)
    assert loaded.epoch == 0
    loaded.load_state_dict(state)
    assert loaded.epoch == scheme.epoch == steps
    assert _all_supervision(loaded) == _all_supervision(scheme)
    assert repr(loaded) == repr(scheme)


def test_state_dict_contents() -> None:
    scheme = HybridEpoch(k=10, one2many_fraction=0.5, total_epochs=12, num_queries=1800)
    scheme.set_epoch(3)
    assert scheme.state_dict() == {
        "scheme": "HybridEpoch",
        "version": 1,
        "epoch": 3,
        "settings": {
            "k": 10,
            "one2many_fraction": 0.5,
            "total_epochs": 12,
            "num_queries": 1800,
        },
    }


@pytest.mark.parametrize(
    "saved, loader, match",
    [
        (HybridEpoch(k=10), HybridEpoch(k=6), r"saved with k=10 but this HybridEpoch has k=6"),
        (
            HybridEpoch(total_epochs=36),
            HybridEpoch(total_epochs=12),
            "saved with total_epochs=36",
        ),
        (HybridBranch(weight=2.0), HybridBranch(), "saved with weight=2.0"),
        (HybridBranch(num_one2many=900), HybridBranch(), "saved with num_one2many=900"),
        (
            HybridLayer(num_one2many_layers=3),
            HybridLayer(),
            "saved with num_one2many_layers=3",
        ),
        (HybridLayer(num_queries=900), HybridLayer(), "saved with num_queries=900"),
        (HybridLayer(), HybridEpoch(), "holds a 'HybridLayer' scheme, not a HybridEpoch"),
    ],
)
def test_load_mismatching_state_raises(saved: Scheme, loader: Scheme, match: str) -> None:
    saved.set_epoch(5)
    with pytest.raises(ValueError, match=match):
        loader.load_state_dict(saved.state_dict())
    assert loader.epoch == 0  # nothing half-loaded


def test_load_malformed_state_raises() -> None:
    scheme = HybridBranch()
    state = scheme.state_dict()
    with pytest.raises(ValueError, match="lacks"):
        scheme.load_state_dict({"scheme": "HybridBranch"})
    with pytest.raises(ValueError, match="must be a dict"):
        scheme.load_state_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -2"):
        scheme.load_state_dict({**state, "epoch": -2})
    with pytest.raises(ValueError, match="lacks the setting 'k'"):
        settings = {key: v for key, v in state["settings"].items() if key != "k"}
        scheme.load_state_dict({**state, "settings": settings})
    with pytest.raises(ValueError, match=r"settings \['extra'\]"):
        scheme.load_state_dict({**state, "settings": {**state["settings"], "extra": 1}})
    with pytest.raises(ValueError, match="version 99"):
        scheme.load_state_dict({**state, "version": 99})


def test_step_and_set_epoch() -> None:
    scheme = HybridLayer(epoch=2)
    scheme.step()
    assert scheme.epoch == 3
    scheme.epoch = 7
    assert scheme.epoch == 7
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="epoch must be an int >= 0"):
            scheme.set_epoch(bad)  # type: ignore[arg-type]
    assert scheme.epoch == 7


# -- constructor validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: HybridBranch(num_one2one=0), "HybridBranch: num_one2one must be an int >= 1, got 0"),
        (lambda: HybridBranch(num_one2many=0), "num_one2many must be an int >= 1, got 0"),
        (lambda: HybridBranch(k=True), r"k must be an int >= 1, got True \(bool\)"),
        (lambda: HybridBranch(k=2.0), r"k must be an int >= 1, got 2.0 \(float\)"),
        (lambda: HybridBranch(weight=-0.5), "weight must be a finite real number >= 0, got -0.5"),
        (lambda: HybridBranch(weight=math.inf), "weight must be a finite real number >= 0"),
        (lambda: HybridBranch(weight="1"), r"weight must be a finite real number >= 0.*\(str\)"),
        (lambda: HybridEpoch(k=0), "HybridEpoch: k must be an int >= 1, got 0"),
        (lambda: HybridEpoch(one2many_fraction=1.5), r"one2many_fraction must be .* in \[0, 1\], got 1.5"),
        (lambda: HybridEpoch(one2many_fraction=-0.1), r"in \[0, 1\], got -0.1"),
        (lambda: HybridEpoch(one2many_fraction=math.nan), r"in \[0, 1\], got nan"),
        (lambda: HybridEpoch(one2many_fraction=True), r"in \[0, 1\], got True \(bool\)"),
        (lambda: HybridEpoch(total_epochs=0), "total_epochs must be an int >= 1, got 0"),
        (lambda: HybridEpoch(num_queries=0), "num_queries must be an int >= 1, got 0; or None"),
        (lambda: HybridLayer(num_one2many_layers=-1), "num_one2many_layers must be an int >= 0, got -1"),
        (lambda: HybridLayer(num_queries=True), r"num_queries must be an int >= 1, got True"),
        (lambda: HybridLayer(epoch=-1), "HybridLayer: epoch must be an int >= 0, got -1"),
    ],
)
def test_constructor_validation(build, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        build()


def test_numpy_ints_are_accepted_as_plain_ints() -> None:
    np = pytest.importorskip("numpy")
    branch = HybridBranch(np.int64(3), np.int32(5), np.int64(2), np.float32(0.5))
    assert type(branch.num_one2one) is int and type(branch.k) is int
    assert type(branch.weight) is float
    json.dumps(branch.state_dict())


# -- check_targets ------------------------------------------------------------------------


def test_branch_check_targets_warns_once_with_the_numbers() -> None:
    branch = HybridBranch(300, 1500, k=6)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        branch.check_targets(250)  # 6 * 250 = 1500: fits exactly
        branch.check_targets(300)  # 1800 > 1500
        branch.check_targets(400)  # said once
    messages = _one2many_warnings(record)
    assert len(messages) == 1
    (message,) = messages
    for text in ("max_targets=300", "K=6", "1800", "1500", "300 copies", "k <= 5"):
        assert text in message, (text, message)
    assert "more one-to-many queries" in message


def test_check_targets_when_even_k1_overflows() -> None:
    with pytest.warns(HybridMatchWarning, match="no K helps: 20 objects exceed the 10 queries"):
        HybridBranch(5, 10, k=2).check_targets(20)


def test_check_targets_single_group_schemes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        HybridEpoch(k=10).check_targets(10_000)  # query count unknown: nothing to check
        HybridLayer(k=10).check_targets(10_000)
        HybridEpoch(k=10, num_queries=1800).check_targets(180)  # 1800 fits exactly
    with pytest.warns(HybridMatchWarning, match=r"K=10 .* 2000 .* 1800 .* 200 copies"):
        HybridLayer(k=10, num_queries=1800).check_targets(200)


def test_epoch_check_targets_uses_the_k_still_ahead() -> None:
    scheme = HybridEpoch(k=10, one2many_fraction=0.5, total_epochs=4, num_queries=100)
    scheme.set_epoch(2)  # one-to-one from here on: 20 targets fit into 100 queries
    with warnings.catch_warnings():
        warnings.simplefilter("error", HybridMatchWarning)
        scheme.check_targets(20)
    scheme.set_epoch(1)
    with pytest.warns(HybridMatchWarning, match="K=10"):
        scheme.check_targets(20)


def test_epoch_check_targets_at_an_explicit_epoch() -> None:
    # The scheme is past its one-to-many phase, but the criterion supervises epoch 0.
    scheme = HybridEpoch(k=10, one2many_fraction=0.5, total_epochs=4, num_queries=100, epoch=3)
    with pytest.warns(HybridMatchWarning, match="K=10"):
        scheme.check_targets(20, epoch=0)


def test_check_targets_validates_its_argument() -> None:
    with pytest.raises(ValueError, match="max_targets must be an int >= 0, got -1"):
        HybridBranch().check_targets(-1)


# -- repr ---------------------------------------------------------------------------------


def test_repr_names_settings_and_epoch() -> None:
    scheme = HybridBranch()
    scheme.step()
    assert repr(scheme) == (
        "HybridBranch(num_one2one=300, num_one2many=1500, k=6, weight=1.0, epoch=1)"
    )
    assert repr(HybridEpoch(num_queries=1800)) == (
        f"HybridEpoch(k=10, one2many_fraction={2 / 3!r}, total_epochs=12, num_queries=1800, "
        "epoch=0)"
    )
    assert repr(HybridLayer()) == "HybridLayer(k=10, num_one2many_layers=4, num_queries=None, epoch=0)"


@pytest.mark.parametrize("scheme", _schemes())
def test_repr_round_trips(scheme: Scheme) -> None:
    scheme.set_epoch(3)
    namespace = {"HybridBranch": HybridBranch, "HybridEpoch": HybridEpoch, "HybridLayer": HybridLayer}
    rebuilt = eval(repr(scheme), namespace)  # noqa: S307 - our own repr
    assert rebuilt.state_dict() == scheme.state_dict()


@pytest.mark.parametrize("version", [True, "1", 1.0, 0, None])
def test_a_state_version_that_state_dict_never_writes_is_refused_as_such(version: object) -> None:
    scheme = HybridEpoch(k=2, one2many_fraction=0.5, total_epochs=4)
    state = {**scheme.state_dict(), "epoch": 3, "version": version}
    with pytest.raises(ValueError, match=r"version'\] must be an int >= 1.*save it again") as error:
        scheme.load_state_dict(state)
    assert "upgrade" not in str(error.value)  # an old hybridmatch is not the cause
    assert scheme.epoch == 0
