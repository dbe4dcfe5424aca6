"""The solver contract, run over every available backend.

References are independent of hybridmatch: scipy called directly on the
materialised problem, and brute-force enumeration on tiny problems.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch.errors import (
    BackendUnavailableError,
    HybridMatchWarning,
    InfeasibleError,
    InvalidCostError,
    ShapeError,
)
from hybridmatch.solvers import (
    assignment_to_pairs,
    available_backends,
    batched_linear_sum_assignment,
    linear_sum_assignment,
    pairs_to_assignment,
)

from .conftest import cpu_and_cuda
from .strategies import cost_matrices, padded_batches

BACKENDS = available_backends()
INF = float("inf")


def brute_force_total(cost: np.ndarray, capacity: int = 1) -> float:
    """Minimum total over every assignment of min(N, M*K) pairs, by enumeration."""
    n, m = cost.shape
    need = min(n, m * capacity)
    best = INF
    for choice in itertools.product(range(-1, m), repeat=n):
        if sum(c >= 0 for c in choice) != need:
            continue
        if any(choice.count(j) > capacity for j in range(m)):
            continue
        total = sum(cost[i, j] for i, j in enumerate(choice) if j >= 0)
        best = min(best, total)
    return best


def reference_total(cost: np.ndarray, capacity: int = 1) -> float:
    """scipy on K explicit copies of each column."""
    if cost.shape[1] == 0:
        return 0.0
    rows, cols = scipy_lsa(np.tile(cost, (1, capacity)))
    return float(np.tile(cost, (1, capacity))[rows, cols].sum())


def check_valid(columns: np.ndarray, cost: np.ndarray, capacity: int = 1) -> float:
    """Assert ``columns`` is a complete valid assignment of ``cost``; return its total."""
    n, m = cost.shape
    assert columns.shape == (n,)
    assert columns.dtype == np.int64
    assert ((columns >= -1) & (columns < max(m, 1))).all()
    matched = columns[columns >= 0]
    assert matched.size == min(n, m * capacity)
    if matched.size:
        assert np.bincount(matched, minlength=m).max() <= capacity
    rows = np.flatnonzero(columns >= 0)
    return float(cost[rows, columns[rows]].sum())


def solve(cost, *args, backend: str, **kwargs):
    """Run a backend on ``cost`` on the device it needs; the result comes back as ``cost``'s kind."""
    if backend != "cuda":
        return batched_linear_sum_assignment(cost, *args, backend=backend, **kwargs)
    tensor = torch.as_tensor(cost).cuda()
    result = batched_linear_sum_assignment(tensor, *args, backend=backend, **kwargs).cpu()
    return result.numpy() if isinstance(cost, np.ndarray) else result


def solve_np(cost: np.ndarray, backend: str, **kwargs) -> np.ndarray:
    return solve(cost, backend=backend, **kwargs)


# ----------------------------------------------------------------- optimality


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=5, max_cols=4))
def test_optimal_against_brute_force(backend: str, cost: np.ndarray) -> None:
    columns = solve_np(cost, backend)
    total = check_valid(columns, cost)
    assert total == pytest.approx(brute_force_total(cost), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=5, max_cols=3, integers=True), capacity=st.integers(1, 3))
def test_capacity_against_brute_force(backend: str, cost: np.ndarray, capacity: int) -> None:
    columns = solve_np(cost, backend, capacity=capacity)
    total = check_valid(columns, cost, capacity)
    assert total == pytest.approx(brute_force_total(cost, capacity), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=40, max_cols=25, min_rows=1, min_cols=1))
def test_optimal_against_scipy(backend: str, cost: np.ndarray) -> None:
    total = check_valid(solve_np(cost, backend), cost)
    reference = reference_total(cost)
    assert abs(total - reference) <= 1e-9 * max(1.0, abs(reference))


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=30, max_cols=6, min_rows=1, min_cols=1), capacity=st.integers(2, 6))
def test_capacity_equals_materialised_copies(backend: str, cost: np.ndarray, capacity: int) -> None:
    total = check_valid(solve_np(cost, backend, capacity=capacity), cost, capacity)
    reference = reference_total(cost, capacity)
    assert abs(total - reference) <= 1e-9 * max(1.0, abs(reference))


@pytest.mark.parametrize("backend", BACKENDS)
def test_detr_shaped_problem_with_repeated_targets(backend: str) -> None:
    # 300 queries, 20 targets repeated 6 times as H-DETR does: 120 identical-in-groups columns.
    rng = np.random.default_rng(0)
    cost = rng.random((300, 20))
    total = check_valid(solve_np(cost, backend, capacity=6), cost, 6)
    assert total == pytest.approx(reference_total(cost, 6), rel=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_input_is_within_float32_rounding(backend: str) -> None:
    rng = np.random.default_rng(1)
    cost32 = rng.normal(size=(4, 60, 15)).astype(np.float32)
    result = solve(torch.from_numpy(cost32), backend=backend).numpy()
    for b in range(4):
        exact = cost32[b].astype(np.float64)
        total = check_valid(result[b], exact)
        assert abs(total - reference_total(exact)) <= 1e-6 * max(1.0, abs(total))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_low_precision_and_integer_costs(backend: str, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(4)
    cost = torch.from_numpy(rng.normal(size=(2, 20, 6)) * 8).to(dtype)
    exact = cost.double().numpy()  # the values every backend sees, widened exactly
    result = solve(cost, backend=backend, capacity=2).numpy()
    for b in range(2):
        assert check_valid(result[b], exact[b], 2) == pytest.approx(reference_total(exact[b], 2), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=6, max_cols=6, min_rows=1, min_cols=1))
def test_maximize_is_minimising_the_negation(backend: str, cost: np.ndarray) -> None:
    total = check_valid(solve_np(cost, backend, maximize=True), cost)
    rows, cols = scipy_lsa(cost, maximize=True)
    assert total == pytest.approx(cost[rows, cols].sum(), rel=1e-9, abs=1e-9)


# ------------------------------------------------------------ ties, determinism


def test_scipy_backend_gives_identity_on_a_constant_cost() -> None:
    # scipy's tie rule: a constant square cost is solved by the identity.
    columns = solve_np(np.full((5, 5), 3.0), "scipy")
    np.testing.assert_array_equal(columns, np.arange(5))


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=8, max_cols=8, integers=True))
def test_ties_still_give_a_valid_optimal_assignment(backend: str, cost: np.ndarray) -> None:
    total = check_valid(solve_np(cost, backend), cost)
    assert total == pytest.approx(reference_total(cost), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_identical_columns(backend: str) -> None:
    # Three identical columns: any 3 of the 5 queries; the optimum takes the 3 cheapest rows.
    column = np.array([[5.0], [1.0], [4.0], [2.0], [3.0]])
    columns = solve_np(np.tile(column, (1, 3)), backend)
    assert sorted(np.flatnonzero(columns >= 0).tolist()) == [1, 3, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_answer_on_every_run(backend: str) -> None:
    rng = np.random.default_rng(2)
    cost = torch.from_numpy(rng.integers(0, 3, size=(3, 50, 12)).astype(np.float32))
    first = solve(cost, backend=backend, capacity=3)
    for _ in range(3):
        assert torch.equal(solve(cost, backend=backend, capacity=3), first)


# ------------------------------------------------------------ padding, batching


@pytest.mark.parametrize("backend", BACKENDS)
@given(batch=padded_batches())
def test_padded_batch_equals_each_problem_alone(backend: str, batch) -> None:
    cost, counts = batch
    # Padding columns may hold anything, even values that would raise if they were read.
    padded = cost.copy()
    for b, m in enumerate(counts):
        padded[b, :, m:] = np.nan
        if padded.shape[1] and padded.shape[2] > m:
            padded[b, 0, m] = -INF
    together = solve(torch.from_numpy(padded), counts, backend=backend)
    assert together.shape == cost.shape[:2]
    for b, m in enumerate(counts):
        alone = solve(torch.from_numpy(cost[b, :, :m].copy()), backend=backend)
        assert torch.equal(together[b], alone)


@pytest.mark.parametrize("backend", BACKENDS)
@given(cost=cost_matrices(max_rows=10, max_cols=6, min_rows=1, min_cols=1), seed=st.integers(0, 2**16))
def test_permuting_queries_permutes_the_assignment(backend: str, cost: np.ndarray, seed: int) -> None:
    # Continuous random costs have a unique optimum, so the assignment follows the permutation.
    perm = np.random.default_rng(seed).permutation(cost.shape[0])
    direct = solve_np(cost, backend)
    permuted = solve_np(cost[perm], backend)
    total_direct = check_valid(direct, cost)
    total_permuted = check_valid(permuted, cost[perm])
    assert total_permuted == pytest.approx(total_direct, rel=1e-12, abs=1e-12)
    if len(set(cost.ravel().tolist())) == cost.size:
        np.testing.assert_array_equal(permuted, direct[perm])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_loop_of_single_calls(backend: str) -> None:
    rng = np.random.default_rng(3)
    cost = torch.from_numpy(rng.random((6, 30, 8)))
    together = solve(cost, backend=backend)
    for b in range(6):
        single = cost[b].cuda() if backend == "cuda" else cost[b]
        rows, cols = (t.cpu() for t in linear_sum_assignment(single, backend=backend))
        expected = torch.full((30,), -1, dtype=torch.int64)
        expected[rows] = cols
        assert torch.equal(together[b], expected)


# ------------------------------------------------------------------- infinities


@pytest.mark.parametrize("backend", BACKENDS)
def test_plus_inf_is_a_forbidden_pair(backend: str) -> None:
    # Without the +inf, query 0 -> target 0 would be the cheap choice.
    cost = np.array([[INF, 1.0], [0.0, 5.0], [3.0, 4.0]])
    columns = solve_np(cost, backend)
    assert columns.tolist() == [1, 0, -1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_is_the_forbidden_pair_when_maximising(backend: str) -> None:
    cost = np.array([[-INF, 1.0], [0.0, 5.0]])
    assert solve_np(cost, backend, maximize=True).tolist() == [1, 0]
    with pytest.raises(InvalidCostError, match=r"cost\[0, 1\] is \+inf.*maximising"):
        solve_np(np.array([[1.0, INF], [0.0, 5.0]]), backend, maximize=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_problem_names_the_blocked_query(backend: str) -> None:
    cost = np.array([[[1.0, 2.0, 3.0], [INF, INF, INF]]])
    with pytest.raises(InfeasibleError, match=r"query 1 of problem 0 has \+inf.*every target"):
        solve(cost, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_problem_names_the_blocked_target(backend: str) -> None:
    cost = np.array([[1.0, INF], [2.0, INF], [3.0, INF]])
    with pytest.raises(InfeasibleError, match=r"target 1 has \+inf.*every query"):
        solve_np(cost, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_without_a_fully_blocked_line(backend: str) -> None:
    # Both queries may only take target 0: every row and column has a finite entry.
    cost = np.array([[0.0, INF], [1.0, INF]])
    with pytest.raises(InfeasibleError, match=r"^problem \(2 x 2\) is infeasible: no assignment of all 2"):
        solve_np(cost, backend)
    with pytest.raises(InfeasibleError, match=r"^problem 0 \(2 x 2\) is infeasible"):
        solve(cost[None], backend=backend)
    # With capacity 2, target 0 can take both queries: feasible.
    assert solve_np(cost, backend, capacity=2).tolist() == [0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasibility_ignores_padding(backend: str) -> None:
    cost = np.array([[[1.0, INF], [2.0, INF]]])
    assert solve(cost, [1], backend=backend).tolist() == [[0, -1]]


# ------------------------------------------------------------------------ NaN


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_raises_naming_problem_query_and_target(backend: str) -> None:
    cost = torch.zeros(4, 20, 6)
    cost[3, 17, 5] = float("nan")
    with pytest.raises(InvalidCostError, match=r"cost\[3, 17, 5\] is NaN.*nan_policy='worst'") as info:
        solve(cost, backend=backend)
    # The entry point adds the call's context once.
    assert "(4, 20, 6)" in str(info.value) and repr(backend) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_raises(backend: str) -> None:
    cost = np.zeros((3, 2))
    cost[2, 1] = -INF
    with pytest.raises(InvalidCostError, match=r"cost\[2, 1\] is -inf.*use \+inf to forbid"):
        solve_np(cost, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_policy_worst_avoids_nan_and_warns_once(backend: str) -> None:
    # Query 0's NaN entry would be free under a NaN -> 0 patch; "worst" avoids it.
    cost = np.array([[[np.nan, 9.0], [1.0, 1.0], [8.0, 1.0]]])
    with pytest.warns(HybridMatchWarning, match="NaN") as record:
        first = solve(cost, backend=backend, nan_policy="worst")
    assert record[0].filename == __file__  # the warning points at the caller, not the library
    # Query 0 -> target 1 and query 1 -> target 0 would total 10; queries 1 and 2 total 2.
    assert first.tolist() == [[-1, 0, 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(cost, backend=backend, nan_policy="worst")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_policy_worst_uses_nan_only_when_forced(backend: str) -> None:
    # Query 1 has only NaN and +inf costs; a full assignment needs its NaN pair.
    cost = np.array([[1.0, 2.0], [np.nan, INF]])
    with pytest.warns(HybridMatchWarning):
        assert solve_np(cost, backend, nan_policy="worst").tolist() == [1, 0]


# ------------------------------------------------------------------ degenerate


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 5, 0), (2, 0, 3), (0, 4, 3), (5, 0)])
def test_empty_dimensions(backend: str, shape: tuple[int, ...]) -> None:
    result = solve(torch.zeros(shape), backend=backend)
    assert result.shape == shape[:-1]
    assert result.dtype == torch.int64
    assert (result == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_targets_than_queries(backend: str) -> None:
    cost = np.array([[3.0, 1.0, 2.0], [1.0, 5.0, 0.5]])
    assert solve_np(cost, backend).tolist() == [1, 2]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_result_is_int64_on_the_cost_device(device: str) -> None:
    cost = torch.rand(2, 5, 3, device=device, dtype=torch.float16)
    result = batched_linear_sum_assignment(cost)
    assert result.dtype == torch.int64 and result.device == cost.device


def test_numpy_in_numpy_out_and_integer_costs() -> None:
    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    rows, cols = linear_sum_assignment(cost)
    assert isinstance(rows, np.ndarray) and rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    rows_t, cols_t = linear_sum_assignment(torch.from_numpy(cost))
    assert isinstance(cols_t, torch.Tensor) and cols_t.tolist() == [1, 0, 2]


@given(cost=cost_matrices(max_rows=7, max_cols=7))
def test_linear_sum_assignment_matches_scipy(cost: np.ndarray) -> None:
    rows, cols = linear_sum_assignment(cost, backend="scipy")
    ref_rows, ref_cols = scipy_lsa(cost)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(cols, ref_cols)


# ---------------------------------------------------------------- bad arguments


def test_wrong_rank_names_the_shape() -> None:
    with pytest.raises(ShapeError, match=r"\(B, N, M\) or \(N, M\), got \(2, 3, 4, 5\)"):
        batched_linear_sum_assignment(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ShapeError, match="2-D"):
        linear_sum_assignment(np.zeros((2, 2, 2)))
    with pytest.raises(ShapeError, match="torch.Tensor or numpy.ndarray"):
        batched_linear_sum_assignment([[1.0, 2.0]])  # type: ignore[arg-type]


def test_bad_dtype() -> None:
    with pytest.raises(ShapeError, match="dtype torch.bool"):
        batched_linear_sum_assignment(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="complex"):
        batched_linear_sum_assignment(np.zeros((2, 2), dtype=np.complex64))


@pytest.mark.parametrize(
    ("num_targets", "message"),
    [
        ([1, 2], "2 entries but the cost holds 3 problems"),
        ([1, 5, 0], r"num_targets\[1\] = 5 is outside \[0, 4\]"),
        ([1, -1, 0], r"num_targets\[1\] = -1"),
        ([1, 2.0, 0], r"num_targets\[1\] must be an int"),
        (torch.tensor([1.0, 2.0, 0.0]), "integers"),
        (torch.ones(3, 1, dtype=torch.long), "1-D"),
    ],
)
def test_bad_num_targets(num_targets, message: str) -> None:
    with pytest.raises(ShapeError, match=message):
        batched_linear_sum_assignment(torch.zeros(3, 5, 4), num_targets)


def test_num_targets_as_tensor() -> None:
    cost = torch.tensor([[[0.0, 9.0], [9.0, 0.0]]])
    assert batched_linear_sum_assignment(cost, torch.tensor([1])).tolist() == [[0, -1]]
    assert batched_linear_sum_assignment(cost, np.array([2])).tolist() == [[0, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_capacity_beyond_the_query_count_changes_nothing(backend: str) -> None:
    # No target can take more than all N queries; a huge K must neither allocate K copies nor fail.
    cost = np.array([[[1.0, 5.0], [2.0, 6.0], [3.0, 0.0]]] * 2)
    for capacity in (3, 2**31):
        assert solve(cost, backend=backend, capacity=capacity).tolist() == [[0, 0, 1]] * 2


@pytest.mark.parametrize("capacity", [0, -2, 1.5, True, "2"])
def test_bad_capacity(capacity) -> None:
    with pytest.raises(ValueError, match="capacity"):
        batched_linear_sum_assignment(torch.zeros(1, 2, 2), capacity=capacity)


def test_bad_nan_policy_and_backend() -> None:
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        batched_linear_sum_assignment(torch.zeros(2, 2), nan_policy="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend 'hungarian'"):
        batched_linear_sum_assignment(torch.zeros(2, 2), backend="hungarian")


def test_missing_backend_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridmatch.solvers import _backends

    solve, _ = _backends.BACKENDS["lap"]
    monkeypatch.setitem(_backends.BACKENDS, "lap", (solve, lambda: False))
    assert "lap" not in available_backends()
    with pytest.raises(BackendUnavailableError, match="pip install lap"):
        batched_linear_sum_assignment(torch.zeros(2, 2), backend="lap")


# -------------------------------------------------------------- index helpers


@given(st.lists(st.lists(st.integers(-1, 4), min_size=0, max_size=7), min_size=1, max_size=4))
def test_pairs_round_trip(rows: list[list[int]]) -> None:
    width = max(len(r) for r in rows)
    assignment = torch.full((len(rows), width), -1, dtype=torch.int64)
    for b, row in enumerate(rows):
        assignment[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
    pairs = assignment_to_pairs(assignment)
    for b, (queries, targets) in enumerate(pairs):
        expected = [(i, t) for i, t in enumerate(assignment[b].tolist()) if t >= 0]
        assert list(zip(queries.tolist(), targets.tolist())) == expected
        assert queries.dtype == torch.int64 and targets.dtype == torch.int64
    assert torch.equal(pairs_to_assignment(pairs, width), assignment)


def test_pairs_to_assignment_errors() -> None:
    with pytest.raises(ShapeError, match=r"pairs\[0\] holds a query index outside \[0, 3\)"):
        pairs_to_assignment([(torch.tensor([3]), torch.tensor([0]))], 3)
    with pytest.raises(ShapeError, match="assigns one query twice"):
        pairs_to_assignment([(torch.tensor([1, 1]), torch.tensor([0, 1]))], 3)
    with pytest.raises(ShapeError, match="equal length"):
        pairs_to_assignment([(torch.tensor([1, 2]), torch.tensor([0]))], 3)
    with pytest.raises(ShapeError, match=r"\(B, N\)"):
        assignment_to_pairs(torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------- large magnitudes
# lap.lapjv takes any reduced cost at or above its internal LARGE = 1e6 for
# infinity; every backend must stay optimal well beyond that.


@pytest.mark.parametrize("backend", BACKENDS)
def test_costs_beyond_a_million(backend: str) -> None:
    # Query 0 takes the cheaper target 1 (2e6 < 3e6); lap alone returns target 0.
    assert solve_np(np.array([[3e6, 2e6]]), backend).tolist() == [1]
    # The only allowed pair costs 2e6: feasible (lap alone calls it infeasible).
    assert solve_np(np.array([[INF, 2e6]]), backend).tolist() == [1]
    assert solve_np(np.array([[-3e6, -2e6]]), backend).tolist() == [0]
    assert solve_np(np.array([[3e6, 2e6]]), backend, maximize=True).tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [9.9e5, 1e6, 1.01e6, 4e6, 1e9, 1e15, 1e300, -1e6, -1e12])
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (9, 9)])
def test_optimal_near_and_beyond_lap_limit(backend: str, scale: float, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(abs(int(np.log10(abs(scale)) * 100)) + shape[0])
    cost = rng.random(shape) * scale
    cost[rng.random(shape) < 0.15] = INF  # forbidden pairs too
    try:
        reference = reference_total(cost)
    except ValueError:  # infeasible: every backend must say so
        with pytest.raises(InfeasibleError):
            solve_np(cost, backend)
        return
    total = check_valid(solve_np(cost, backend), cost)
    assert total == pytest.approx(reference, rel=1e-12)
    # A large offset with small differences and many ties: the optimum is still exact.
    ties = 1e7 + rng.integers(0, 4, shape).astype(np.float64)
    assert check_valid(solve_np(ties, backend), ties) == reference_total(ties)
