"""``linear_sum_assignment`` is a drop-in for ``scipy.optimize.linear_sum_assignment``.

scipy itself is the reference: on what scipy accepts, the same result (kind,
dtype, rows, total); on what it refuses, the same exception type and a message
holding scipy's phrase, read from scipy's own error in each test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch.errors import ConfigurationError, HybridMatchError, ShapeError
from hybridmatch.solvers import available_backends, batched_linear_sum_assignment, linear_sum_assignment

from .strategies import cost_matrices

BACKENDS = [name for name in available_backends() if name != "cuda"]
INF = float("inf")

_SQUARE = np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
_GRID = (np.arange(48.0) * 7 % 11).reshape(6, 8)
ACCEPTED = {
    "nested list": [[4, 1, 3], [2, 0, 5], [3, 2, 2]],
    "nested tuple": ((4.0, 1.0), (2.0, 0.5), (3.0, 2.0)),
    "list of bools": [[True, False], [False, True]],
    "bool array": np.array([[True, False, True], [False, True, True]]),
    "int8 array": _SQUARE.astype(np.int8),
    "int64 array": _SQUARE.astype(np.int64),
    "uint64 array": _SQUARE.astype(np.uint64),
    "float16 array": _SQUARE.astype(np.float16),
    "float32 array": _SQUARE.astype(np.float32),
    "reversed rows": _SQUARE[::-1],
    "reversed both axes": _SQUARE[::-1, ::-1],
    "strided view": _GRID[::2, ::-3],
    "transposed view": _SQUARE.T,
    "fortran order": np.asfortranarray(_SQUARE),
    "np.matrix": np.matrix(_SQUARE),
    "+inf forbids": np.array([[INF, 1.0], [0.0, 5.0], [3.0, 4.0]]),
    "wide": np.array([[3.0, 1.0, 2.0], [1.0, 5.0, 0.5]]),
    "empty rows": np.zeros((0, 3)),
    "empty columns": np.zeros((3, 0)),
    "empty": np.zeros((0, 0)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("maximize", [False, True, np.True_])
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepts_what_scipy_accepts(case: str, maximize: bool, backend: str) -> None:
    cost = ACCEPTED[case]
    if maximize and case == "+inf forbids":
        cost = -np.asarray(cost)  # -inf forbids a pair when maximising
    ref_rows, ref_cols = scipy_lsa(cost, maximize=maximize)
    rows, cols = linear_sum_assignment(cost, maximize=maximize, backend=backend)
    assert type(rows) is np.ndarray and type(cols) is np.ndarray
    assert rows.dtype == ref_rows.dtype == np.int64 and cols.dtype == np.int64
    np.testing.assert_array_equal(rows, ref_rows)
    if backend == "scipy":
        np.testing.assert_array_equal(cols, ref_cols)
    else:  # ties (the bool cases) may be broken differently: the total is the contract
        values = np.asarray(cost, dtype=np.float64)
        assert values[rows, cols].sum() == values[ref_rows, ref_cols].sum()
        assert len(set(cols.tolist())) == len(cols)


def test_torch_input_gives_torch_output() -> None:
    # scipy reads a CPU tensor through numpy; hybridmatch answers in the caller's kind.
    cost = torch.tensor([[True, False], [False, True]])
    ref_rows, ref_cols = scipy_lsa(cost.numpy())
    rows, cols = linear_sum_assignment(cost)
    assert isinstance(rows, torch.Tensor) and rows.dtype == torch.int64 and cols.dtype == torch.int64
    assert rows.tolist() == ref_rows.tolist() and cols.tolist() == ref_cols.tolist()
    flipped = torch.from_numpy(_SQUARE.copy()).flip(0)  # torch's flip copies; no negative strides
    assert linear_sum_assignment(flipped)[1].tolist() == scipy_lsa(flipped.numpy())[1].tolist()


# name -> (input, maximize, the phrase of scipy's message this test checks)
REFUSED = {
    "0-d array": (np.array(1.0), False, "expected a matrix"),
    "1-d array": (np.zeros(3), False, "expected a matrix"),
    "3-d array": (np.zeros((1, 2, 2)), False, "expected a matrix"),
    "None": (None, False, "expected a matrix"),
    "scalar": (3.0, False, "expected a matrix"),
    "object array": (np.array([[1, 2], [3, 0]], dtype=object), False, "Cannot cast array data"),
    "object array of strings": (np.array([["a", 2], [3, 0]], dtype=object), False, "Cannot cast array data"),
    "string array": (np.array([["1", "2"], ["3", "0"]]), False, "Cannot cast array data"),
    "bytes array": (np.array([[b"1", b"2"]]), False, "Cannot cast array data"),
    "complex array": (np.array([[1 + 0j, 2], [3, 0]]), False, "Cannot cast array data"),
    "datetime array": (np.zeros((2, 2), dtype="datetime64[s]"), False, "Cannot cast array data"),
    "timedelta array": (np.zeros((2, 2), dtype="timedelta64[s]"), False, "Cannot cast array data"),
    "long double array": (np.zeros((2, 2), dtype=np.longdouble), False, "Cannot cast array data"),
    "structured array": (np.zeros((2, 2), dtype=[("a", "f8")]), False, "Cannot cast array data"),
    "list of strings": ([["a", "b"], ["c", "d"]], False, "could not convert string to float"),
    "ragged list": ([[1.0, 2.0], [3.0]], False, "inhomogeneous"),
    "NaN": (np.array([[np.nan, 2.0], [3.0, 0.0]]), False, "matrix contains invalid numeric entries"),
    "-inf when minimising": (np.array([[-INF, 2.0], [3.0, 0.0]]), False, "matrix contains invalid numeric entries"),
    "+inf when maximising": (np.array([[INF, 2.0], [3.0, 0.0]]), True, "matrix contains invalid numeric entries"),
    "blocked row": (np.array([[INF, INF], [3.0, 0.0]]), False, "cost matrix is infeasible"),
    "no blocked line": (np.array([[0.0, INF], [1.0, INF]]), False, "cost matrix is infeasible"),
    "no blocked line, maximising": (np.array([[0.0, -INF], [1.0, -INF]]), True, "cost matrix is infeasible"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(REFUSED))
def test_refuses_what_scipy_refuses_with_its_type_and_phrase(case: str, backend: str) -> None:
    cost, maximize, phrase = REFUSED[case]
    with pytest.raises(Exception) as scipy_error:
        scipy_lsa(cost, maximize=maximize)
    assert phrase in str(scipy_error.value)  # the phrase really is scipy's
    with pytest.raises(type(scipy_error.value)) as ours:
        linear_sum_assignment(cost, maximize=maximize, backend=backend)
    assert phrase in str(ours.value)
    assert isinstance(ours.value, HybridMatchError)  # and it is one of hybridmatch's, with its detail


def test_a_torch_complex_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Cannot cast array data from torch.complex64"):
        linear_sum_assignment(torch.zeros(2, 2, dtype=torch.complex64))
    with pytest.raises(ShapeError, match="Cannot cast array data"):  # the batched API too
        batched_linear_sum_assignment(torch.zeros(1, 2, 2, dtype=torch.complex64))


@pytest.mark.parametrize("maximize", ["False", "True", 0, 1, None, 2.5, [], np.array([True])])
def test_maximize_must_be_a_bool(maximize: object) -> None:
    # "False" is a non-empty string, so truthy: taking it as True would silently maximise.
    cost = np.array([[1.0, 2.0], [3.0, 0.0]])
    with pytest.raises(ConfigurationError, match=r"maximize must be a bool \(True or False\), got"):
        linear_sum_assignment(cost, maximize=maximize)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="maximize must be a bool"):
        batched_linear_sum_assignment(cost, maximize=maximize)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    cost=cost_matrices(max_rows=7, max_cols=7),
    maximize=st.booleans(),
    forbid=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=3),
)
def test_same_optimum_as_scipy(backend: str, cost: np.ndarray, maximize: bool, forbid: list) -> None:
    forbidden = -INF if maximize else INF
    for i, j in forbid:
        if i < cost.shape[0] and j < cost.shape[1]:
            cost[i, j] = forbidden
    try:
        ref_rows, ref_cols = scipy_lsa(cost, maximize=maximize)
    except ValueError as error:
        with pytest.raises(ValueError, match="cost matrix is infeasible"):
            linear_sum_assignment(cost, maximize=maximize, backend=backend)
        assert "infeasible" in str(error)
        return
    rows, cols = linear_sum_assignment(cost, maximize=maximize, backend=backend)
    assert rows.dtype == cols.dtype == np.int64
    assert len(rows) == len(ref_rows) and (np.diff(rows) > 0).all()
    assert len(set(cols.tolist())) == len(cols)
    total, reference = cost[rows, cols].sum(), cost[ref_rows, ref_cols].sum()
    assert abs(total - reference) <= 1e-9 * max(1.0, abs(reference))
    if cost.shape[0] <= cost.shape[1]:
        np.testing.assert_array_equal(rows, ref_rows)  # every row is matched
