"""The solver-specific input checks, shared by every solver backend.

Every backend's input passes through these checks, or, for the native backends,
every problem the native core flags does: so every backend raises the same errors.
The generic argument checks (ints, bools, names, ``nan_policy``) are
:mod:`hybridmatch.validation`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from .._warnings import warn_once
from ..errors import CostDtypeError, InfeasibleError, InvalidCostError, ShapeError
from ..validation import NanPolicy
from ._backends import dominating_cost

ArrayLike = Union[torch.Tensor, np.ndarray]


def _cannot_cast(dtype: object, name: str) -> CostDtypeError:
    return CostDtypeError(
        f"Cannot cast array data from {dtype} to dtype('float64'): {name} must hold real numbers "
        "(integer or floating), convert it first, e.g. cost.astype(np.float64)"
    )


def check_dtype(cost: ArrayLike, name: str = "cost") -> None:
    """Refuse non-numeric dtypes (bool, complex, object, string, dates)."""
    if isinstance(cost, torch.Tensor):
        if cost.dtype == torch.bool:
            raise CostDtypeError(
                f"{name} must be a real floating or integer tensor, got dtype {cost.dtype}; "
                f"a mask is not a cost: use {name}.float() for 0/1 costs"
            )
        if cost.is_complex():
            raise _cannot_cast(cost.dtype, name)
    elif isinstance(cost, np.ndarray):
        if cost.dtype == np.bool_:
            raise CostDtypeError(
                f"{name} must be a real floating or integer array, got dtype bool; "
                f"a mask is not a cost: use {name}.astype(np.float64) for 0/1 costs"
            )
        if cost.dtype.kind not in "iuf":
            raise _cannot_cast(repr(cost.dtype), name)
    else:
        raise ShapeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(cost).__name__}")


def as_scipy_matrix(cost: object) -> ArrayLike:
    """``cost`` read the way :func:`scipy.optimize.linear_sum_assignment` reads it.

    A tensor stays a tensor (bool becomes uint8); an array (any subclass: matrix,
    masked) is accepted when numpy casts its dtype safely to float64, as scipy
    requires; anything else (nested lists, tuples) is converted to float64 as scipy
    does. The result is 2-D and of a real dtype that
    :func:`batched_linear_sum_assignment` accepts.
    """
    if isinstance(cost, torch.Tensor):
        if cost.is_complex():
            raise _cannot_cast(cost.dtype, "cost")
        matrix: ArrayLike = cost.to(torch.uint8) if cost.dtype == torch.bool else cost
        kind = "tensor"
    elif isinstance(cost, np.ndarray):
        array = np.asarray(cost)  # drops np.matrix / masked-array behaviour, as scipy does
        if not np.can_cast(array.dtype, np.float64, "safe"):
            raise _cannot_cast(repr(array.dtype), "cost")
        matrix = array.astype(np.uint8) if array.dtype == np.bool_ else array
        kind = "array"
    else:
        try:
            matrix = np.asarray(cost, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ShapeError(
                f"cost could not be read as a matrix of numbers ({type(cost).__name__}): {error}"
            ) from None
        kind = type(cost).__name__
    if matrix.ndim != 2:
        raise ShapeError(
            f"expected a matrix (2-D array), got a {matrix.ndim}-D {kind} of shape {tuple(matrix.shape)}; "
            "use batched_linear_sum_assignment for a batch of (N, M) problems"
        )
    return matrix


def to_host_float64(cost: ArrayLike, name: str = "cost") -> np.ndarray:
    """Copy ``cost`` to a float64 numpy array, refusing non-numeric dtypes."""
    check_dtype(cost, name)
    if isinstance(cost, torch.Tensor):
        return cost.detach().to("cpu", torch.float64).numpy()
    return np.asarray(cost, dtype=np.float64)


#: float64 holds every integer up to this magnitude exactly.
EXACT_FLOAT64_INTEGER = 2**53


def check_large_integers(problems: ArrayLike, num_targets: list[int], capacity: int) -> ArrayLike:
    """An int64 cost that float64 cannot solve exactly, reduced so that it can, or warned about.

    Every backend solves in float64. Integers up to 2**53 are exact there, but an
    assignment's total and the solver's duals add up to N entries, so an integer cost is
    exact only while ``(N + 1) * max|cost|`` stays within 2**53. A larger int64 cost is
    first reduced exactly, in int64: each problem's row minima are subtracted when every
    query is assigned (``N <= M * capacity``), else its column minima (every target slot
    is filled); either changes every assignment's total by the same constant, so the
    optimum is kept. When the reduced cost is still too large, it is solved as it is with
    one warning. Other dtypes are returned unchanged without reading their values (an
    int64 cost is read: a device sync on a GPU).
    """
    is_tensor = isinstance(problems, torch.Tensor)
    wide = (torch.int64, torch.uint64) if is_tensor else (np.dtype(np.int64), np.dtype(np.uint64))
    if problems.dtype not in wide or min(problems.shape) == 0:
        return problems
    work = problems if is_tensor else torch.from_numpy(np.ascontiguousarray(problems))
    batch, num_queries, width = work.shape
    real = torch.arange(width, device=work.device)[None, :] < torch.as_tensor(num_targets, device=work.device)[:, None]
    real = real[:, None, :].expand(batch, num_queries, width)
    if _exact_in_float64(work, real) or work.dtype != torch.int64:
        if not _exact_in_float64(work, real):
            _warn_large_integers(work, real)
        return problems
    rows_first = torch.tensor([num_queries <= m * capacity for m in num_targets], device=work.device)
    high = torch.iinfo(torch.int64).max
    row_min = torch.where(real, work, high).amin(dim=2, keepdim=True)  # (B, N, 1)
    column_min = torch.where(real, work, high).amin(dim=1, keepdim=True)  # (B, 1, M)
    shift = torch.where(rows_first[:, None, None], row_min, column_min)
    spread = torch.where(real, work.double() - shift.double(), 0.0).abs().max()
    if float(spread) >= 2.0**62:  # the subtraction itself would overflow int64
        _warn_large_integers(work, real)
        return problems
    reduced = torch.where(real, work - shift, 0)
    if not _exact_in_float64(reduced, real):
        _warn_large_integers(work, real)
        return problems
    return reduced if is_tensor else reduced.numpy()


def _exact_in_float64(cost: torch.Tensor, real: torch.Tensor) -> bool:
    peak = float(torch.where(real, cost.double().abs(), 0.0).max())
    return peak * (cost.shape[1] + 1) <= EXACT_FLOAT64_INTEGER


def _warn_large_integers(cost: torch.Tensor, real: torch.Tensor) -> None:
    peak = float(torch.where(real, cost.double().abs(), 0.0).max())
    warn_once(
        "large_integer_cost",
        f"the {cost.dtype} cost holds integers up to {peak:.3g} in magnitude, too far apart to "
        "reduce below 2**53: every backend solves in float64, where sums of such integers round, "
        "so the assignment may miss the exact optimum by the rounding (said once)",
    )


def check_num_targets(num_targets: object, batch: int, width: int) -> list[int]:
    """Turn ``num_targets`` into a list of ``batch`` ints in ``[0, width]``."""
    if num_targets is None:
        return [width] * batch
    if isinstance(num_targets, torch.Tensor):
        if num_targets.is_floating_point() or num_targets.dtype == torch.bool:
            raise ShapeError(f"num_targets must hold integers, got dtype {num_targets.dtype}")
        values = num_targets.reshape(-1).tolist() if num_targets.ndim <= 1 else None
        if values is None:
            raise ShapeError(f"num_targets must be 1-D (B,), got shape {tuple(num_targets.shape)}")
    elif isinstance(num_targets, np.ndarray):
        if not np.issubdtype(num_targets.dtype, np.integer) or num_targets.ndim > 1:
            raise ShapeError(
                f"num_targets must be a 1-D integer array (B,), got {num_targets.dtype} {num_targets.shape}"
            )
        values = num_targets.reshape(-1).tolist()
    elif isinstance(num_targets, Sequence):
        values = list(num_targets)
    else:
        raise ShapeError(
            f"num_targets must be None, a sequence of ints or an int tensor (B,), got {type(num_targets).__name__}"
        )
    if len(values) != batch:
        raise ShapeError(f"num_targets has {len(values)} entries but the cost holds {batch} problems")
    for b, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ShapeError(f"num_targets[{b}] must be an int, got {value!r}")
        if not 0 <= value <= width:
            raise ShapeError(
                f"num_targets[{b}] = {value} is outside [0, {width}]: the cost has {width} target columns"
            )
    return [int(v) for v in values]


def _first(mask: np.ndarray) -> tuple[int, int]:
    i, j = np.argwhere(mask)[0]
    return int(i), int(j)


def sanitise(
    cost: np.ndarray, index: int, batched: bool, maximize: bool, nan_policy: NanPolicy
) -> np.ndarray:
    """Return the minimisation form of one problem's real columns, checked.

    NaN raises (or, with ``nan_policy="worst"``, becomes a cost worse than any
    assignment that avoids it); the infinity that would mean "best" raises; the
    other infinity marks a forbidden pair and becomes +inf.
    """
    where = (lambda i, j: f"cost[{index}, {i}, {j}]") if batched else (lambda i, j: f"cost[{i}, {j}]")
    finite = np.isfinite(cost)
    if finite.all():
        return -cost if maximize else cost
    nan = np.isnan(cost)
    if nan.any() and nan_policy == "raise":
        i, j = _first(nan)
        raise InvalidCostError(
            f"{where(i, j)} is NaN: the inputs of {'problem ' + str(index) + ', ' if batched else ''}"
            f"query {i} or target {j} hold NaN (AMP overflow or a diverging loss are the usual causes); "
            "fix the inputs, or pass nan_policy='worst' to treat NaN as the worst cost"
        )
    bad_inf = np.isneginf(cost) if not maximize else np.isposinf(cost)
    if bad_inf.any():
        i, j = _first(bad_inf)
        sign = "+inf" if maximize else "-inf"
        good = "-inf" if maximize else "+inf"
        raise InvalidCostError(
            f"{where(i, j)} is {sign}, which is not a valid cost when "
            f"{'maximising' if maximize else 'minimising'}; use {good} to forbid a pair, "
            "or clamp the cost to a finite value"
        )
    work = -cost if maximize else cost.copy()
    if nan.any():
        # Lexicographic "worst": one more NaN pair always costs more than any
        # re-arrangement of the finite pairs, so NaN pairs are used only when forced.
        work[nan] = dominating_cost(work)
        warn_once(
            "nan_policy_worst",
            f"{where(*_first(nan))} is NaN; nan_policy='worst' treats NaN costs as worse than any "
            "finite cost (said once)",
        )
    return work


def raise_infeasible(cost: np.ndarray, index: int, batched: bool, capacity: int = 1) -> None:
    """Raise :class:`InfeasibleError` for one problem, naming a blocked row or column if any.

    ``cost (n, m)`` holds the problem's real columns before any capacity copies.
    """
    n, m = cost.shape
    where = f" of problem {index}" if batched else ""
    allowed = np.isfinite(cost)
    if n <= m * capacity:
        blocked = np.flatnonzero(~allowed.any(axis=1))
        if blocked.size:
            raise InfeasibleError(
                f"query {blocked[0]}{where} has +inf (forbidden) cost to every target, so no assignment "
                f"covers all {n} queries; allow at least one target per query"
            )
    else:
        blocked = np.flatnonzero(~allowed.any(axis=0))
        if blocked.size:
            raise InfeasibleError(
                f"target {blocked[0]}{where} has +inf (forbidden) cost to every query, so no "
                f"assignment fills all {m * capacity} target slots; allow at least one query per target"
            )
    slots = f" with capacity {capacity}" if capacity > 1 else ""
    raise InfeasibleError(
        f"problem{' ' + str(index) if batched else ''} ({n} x {m}{slots}) is infeasible: no assignment of all {min(n, m * capacity)} "
        "queries/target slots avoids the +inf (forbidden) pairs"
    )
