"""Solver backends: each solves one validated problem.

A backend is a function ``solve(cost) -> columns`` where ``cost (n, m)`` is a
float64 minimisation problem whose +inf entries are forbidden pairs (no NaN,
no -inf: the entry point has checked), and ``columns (n,)`` int64 gives each
row's column or -1. A backend raises :class:`_Infeasible` when no complete
assignment avoids the forbidden pairs; the entry point turns that into the
user-facing :class:`~hybridmatch.errors.InfeasibleError`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import numpy as np

Solve = Callable[[np.ndarray], np.ndarray]


class _Infeasible(Exception):
    """Raised by a backend; carries no message, the entry point writes it."""


def _unassigned(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


#: The largest cost magnitude handed to scipy and the native core: their duals and path
#: lengths add and subtract costs, which overflow to inf near float64's limit (1.8e308)
#: and lose the optimum; a power-of-two scale into this range is exact (see
#: :func:`_scaled_down`).
SAFE_MAGNITUDE = 2.0**500


def solve_scipy(cost: np.ndarray) -> np.ndarray:
    """scipy's ``linear_sum_assignment``, on costs scaled (exactly) into ``[-SAFE_MAGNITUDE, SAFE_MAGNITUDE]``."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    columns = _unassigned(cost.shape[0])
    try:
        rows, cols = scipy_lsa(_scaled_down(cost, SAFE_MAGNITUDE))
    except ValueError as error:
        if "infeasible" in str(error):
            raise _Infeasible from None
        raise
    columns[rows] = cols
    return columns


def dominating_cost(cost: np.ndarray) -> float:
    """A finite cost worse than any re-arrangement of ``cost``'s finite entries.

    One more pair at this cost outweighs the whole spread of the finite pairs of any
    assignment, so an optimum uses as few such pairs as it can.
    """
    finite = cost[np.isfinite(cost)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return high + (high - low + 1.0) * (min(cost.shape) + 1)


#: The largest cost magnitude handed to lap.lapjv. lapjv takes any reduced cost at or
#: above its internal "infinity" (``LARGE`` = 1e6 in its lapjv.h) for a forbidden pair
#: and silently answers wrong; reduced costs stay within a few times the cost spread,
#: far below 1e6 from here (random trials go wrong from about 1e6 up).
LAP_SAFE_MAGNITUDE = 2.0**16


def _scaled_down(cost: np.ndarray, limit: float) -> np.ndarray:
    """``cost`` times a power of two, so that no finite entry exceeds ``limit`` in magnitude.

    A power of two changes the exponent only: every entry, sum and comparison the
    solver makes keeps its exact value relative to the others, so the optimum and its
    ties are those of the original costs (barring underflow of entries more than
    ~2**1000 times smaller than the largest, which float64 sums ignore anyway).
    """
    finite = cost[np.isfinite(cost)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    if peak <= limit:
        return cost
    return np.ldexp(cost, -math.ceil(math.log2(peak / limit)))


def solve_lap(cost: np.ndarray) -> np.ndarray:
    """gatagat ``lap.lapjv`` on the problem oriented targets x queries.

    ``lapjv`` only solves square problems and pads a rectangular one with zero
    rows or columns. Padding extra *columns* (queries x targets with more queries)
    makes it pathologically slow on repeated targets, so the problem is turned so
    that the padding adds rows instead.

    ``lapjv`` treats costs of 1e6 (its ``LARGE``) and above as infinite; the costs
    are scaled by a power of two into ``[-2**16, 2**16]`` first, which is exact.
    """
    import lap

    n, m = cost.shape
    allowed = np.isfinite(cost)
    transposed = n > m
    # Within +-1 first, so that the stand-in for +inf below cannot overflow.
    work = _scaled_down(np.ascontiguousarray(cost.T if transposed else cost), 1.0)
    if not allowed.all():
        # A finite stand-in for +inf: the optimum uses one only when the problem is infeasible.
        work = np.where(allowed.T if transposed else allowed, work, dominating_cost(work))
    work = _scaled_down(work, LAP_SAFE_MAGNITUDE)
    _, x, _ = lap.lapjv(work, extend_cost=work.shape[0] != work.shape[1], return_cost=True)
    x = np.asarray(x[: work.shape[0]], dtype=np.int64)
    # x[r] is the column of row r in the oriented problem.
    columns = _unassigned(n)
    if transposed:
        matched = x >= 0
        columns[x[matched]] = np.flatnonzero(matched)
    else:
        columns[:] = np.where(x < work.shape[1], x, -1)
    rows = np.flatnonzero(columns >= 0)
    if not allowed[rows, columns[rows]].all():
        raise _Infeasible
    return columns


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# Name -> (solve, is it importable here). Order = preference of "auto" on the CPU.
BACKENDS: dict[str, tuple[Solve, Callable[[], bool]]] = {
    "scipy": (solve_scipy, lambda: _has_module("scipy")),
    "lap": (solve_lap, lambda: _has_module("lap")),
}

INSTALL_HINT = {
    "scipy": "pip install scipy",
    "lap": "pip install lap (the gatagat package; never install lapx beside it: both import as 'lap')",
}
