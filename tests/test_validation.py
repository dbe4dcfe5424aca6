"""hybridmatch.validation: the argument checks written once for every layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hybridmatch
from hybridmatch import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError
from hybridmatch.validation import (
    NAN_POLICIES,
    Arg,
    ValueCheck,
    check_bool,
    check_choice,
    check_int,
    check_probability,
    check_real,
    check_reals,
    check_tensor,
    check_values,
    context,
    nan_where_nonfinite,
)


# --------------------------------------------------------------------------------------------
# The helpers themselves.


def test_check_int_accepts_ints_and_names_the_setting() -> None:
    assert check_int(np.int64(3), "k", minimum=1) == 3 and type(check_int(np.int64(3), "k")) is int
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ConfigurationError, match=r"^Owner: k must be an int >= 1, got .*; a hint$"):
            check_int(bad, "k", minimum=1, where="Owner", hint="a hint")
    with pytest.raises(ShapeError, match=r"size must be an int in \[0, 4\], got 5"):
        check_int(5, "size", minimum=0, maximum=4, error=ShapeError)


def test_check_real_and_probability() -> None:
    assert check_real(np.float32(0.5), "w") == 0.5
    for bad in (math.nan, math.inf, -math.inf, True, "1", None):
        with pytest.raises(ConfigurationError, match="w must be a finite real number"):
            check_real(bad, "w")
    with pytest.raises(ConfigurationError, match=r"p must be a finite real number in \[0, 1\], got 1.5"):
        check_probability(1.5, "p")
    assert check_probability(1, "p") == 1.0


def test_check_bool_choice_and_reals() -> None:
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(ConfigurationError, match=r"flag must be a bool \(True or False\), got 'False'"):
        check_bool("False", "flag")
    with pytest.raises(ConfigurationError, match=r"unknown nan_policy 'zero': nan_policy must be one of"):
        check_choice("zero", "nan_policy", NAN_POLICIES)
    with pytest.raises(ConfigurationError):  # True == 1, but it is not the choice 1
        check_choice(True, "mode", (1, 2))
    assert check_reals(torch.tensor([0.5, 1.0]), "s", positive=True) == (0.5, 1.0)
    for bad in ("abc", [0.1, "x"], [0.1, 0.0], [math.nan], 3.0):
        with pytest.raises(ConfigurationError, match="s must"):
            check_reals(bad, "s", positive=True)


def test_check_tensor_metadata() -> None:
    check_tensor(torch.zeros(2, 3, 4), "boxes", ndim=3, last=4, dtype="floating")
    with pytest.raises(ShapeError, match=r"boxes must have shape \(B, N, 4\), got \(2, 3\)"):
        check_tensor(torch.zeros(2, 3), "boxes", ndim=3, last=4, layout="(B, N, 4)")
    with pytest.raises(ShapeError, match="must have a floating dtype, got torch.int64"):
        check_tensor(torch.zeros(2, dtype=torch.int64), "x", dtype="floating")
    with pytest.raises(ShapeError, match="must be a torch.Tensor"):
        check_tensor([1.0], "x")
    with pytest.raises(ShapeError, match="meta device"):
        check_tensor(torch.zeros(2, device="meta"), "x")


def test_check_values_names_the_entry_the_user_wrote() -> None:
    area = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    valid = torch.tensor([[True, True], [True, True]])
    with pytest.raises(InvalidTargetError, match=r"targets\[1\]\['area'\]\[1\] is -4.0: each targets\[b\]\['area'\] must be >= 0"):
        check_values(ValueCheck(area, Arg.target("area", key="area"), ">= 0", minimum=0.0, valid=valid))
    # The padded column of image 1 is not read.
    check_values(ValueCheck(area, Arg.target("area"), ">= 0", minimum=0.0, valid=torch.tensor([[1, 1], [1, 0]]).bool()))
    with pytest.raises(InvalidPredictionError, match=r"outputs\['x'\]\[0, 1\] is nan"):
        check_values(ValueCheck(torch.tensor([[0.0, math.nan]]), Arg.prediction("x", key="x"), "finite"))


def test_nan_where_nonfinite_marks_rows_and_columns() -> None:
    cost = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[0.0], [math.inf], [0.0]]])
    target = torch.tensor([[[math.nan], [1.0]]])
    out = nan_where_nonfinite(cost, pred, target)
    expected_nan = torch.tensor([[[True, False], [True, True], [True, False]]])
    assert torch.equal(out.isnan(), expected_nan)


def test_context_names_the_outer_class_once() -> None:
    with pytest.raises(ConfigurationError, match=r"^Outer: k must be an int >= 1, got 0$"):
        with context("Outer", inner=["Inner"]):
            check_int(0, "k", minimum=1, where="Inner")


def test_nan_policy_is_public() -> None:
    assert "NanPolicy" in hybridmatch.validation.__all__ and NAN_POLICIES == ("raise", "worst")
