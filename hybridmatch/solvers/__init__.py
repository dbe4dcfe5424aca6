"""Linear sum assignment on batches of cost matrices.

One validated entry point, :func:`batched_linear_sum_assignment`, solves a
batch ``cost (Tensor[B, N, M])`` of minimum-cost assignments of N queries to M
targets and returns ``Tensor[B, N]`` int64: the target of each query, or -1.
:func:`linear_sum_assignment` is the scipy-compatible form for one matrix.

The contract, the same for every backend:

- ``+inf`` marks a forbidden pair (``-inf`` when ``maximize=True``); the other
  infinity and NaN raise :class:`~hybridmatch.errors.InvalidCostError` naming
  the entry, unless ``nan_policy="worst"``.
- A problem with no complete assignment that avoids forbidden pairs raises
  :class:`~hybridmatch.errors.InfeasibleError`.
- ``min(N, M * capacity)`` pairs are assigned; with ``M = 0`` every query gets -1.
- ``capacity=K`` lets each target take up to K queries (H-DETR's repeated
  ground truth): the optimum equals matching against K copies of each target.
- Every backend solves in float64. A float64 cost beyond ``2**500`` in magnitude
  is first scaled by a power of two (exact), so the solvers' sums cannot overflow;
  an int64 cost beyond what float64 holds exactly is first reduced by its row (or
  column) minima, in int64, and solved exactly, or, when still too large, solved
  with one warning.
- Results are deterministic. Ties are broken by the backend's rule; the total
  cost is optimal for every backend, the indices may differ between backends
  when several assignments are optimal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Union, overload

import numpy as np
import torch

from .._warnings import warn_once
from ..targets import split_repeated_index
from ..errors import (
    BackendUnavailableError,
    HybridMatchError,
    InfeasibleError,
    InvalidCostError,
    ShapeError,
)
from ..validation import NanPolicy, check_bool, check_choice, check_int, check_nan_policy, check_tensor, with_context
from . import _native
from ._backends import BACKENDS, INSTALL_HINT, SAFE_MAGNITUDE, _Infeasible
from ._validate import (
    ArrayLike,
    as_scipy_matrix,
    check_dtype,
    check_large_integers,
    check_num_targets,
    raise_infeasible,
    sanitise,
    to_host_float64,
)

__all__ = [
    "BACKEND_NAMES",
    "linear_sum_assignment",
    "batched_linear_sum_assignment",
    "available_backends",
    "assignment_to_pairs",
    "pairs_to_assignment",
]

# Registers torch.ops.hybridmatch.batched_linear_sum_assignment (its body: _solve_tensor).
from ._op import assignment_op  # noqa: E402

Backend = Literal["auto", "cuda", "native", "scipy", "lap"]
NATIVE = ("cuda", "native")
#: Every name ``backend=`` accepts (whether it can run here: :func:`available_backends`).
BACKEND_NAMES = ("auto", *NATIVE, *BACKENDS)
NumTargets = Union[Sequence[int], torch.Tensor, np.ndarray, None]
CAPACITY_HINT = "1 is one-to-one matching, K lets a target take K queries"


def available_backends() -> list[str]:
    """Names of the solver backends that can run here, in ``auto``'s order of preference.

    ``native`` is listed when the package was installed with its compiled C++ solver
    (built at install time where a compiler is), ``cuda`` when it was built with its CUDA
    solver (``HYBRIDMATCH_CUDA=1``) and torch sees a GPU.

    Example:
        >>> from hybridmatch import available_backends
        >>> backends = available_backends()
        >>> "scipy" in backends, backends[-1] in ("scipy", "lap")
        (True, True)
    """
    names = [name for name, missing in (("cuda", _native.cuda_missing), ("native", _native.cpu_missing)) if missing() is None]
    return names + [name for name, (_, present) in BACKENDS.items() if present()]


def _native_ready(name: str) -> BackendUnavailableError | None:
    """The reason a native backend cannot run here, if it cannot."""
    missing = (_native.cuda_missing if name == "cuda" else _native.cpu_missing)()
    if missing is None:
        return None
    return BackendUnavailableError(f"backend {name!r} is unavailable: {missing}")


def _resolve_backend(backend: str, on_cuda: bool) -> str:
    if backend == "auto":
        candidates = (["cuda"] if on_cuda else []) + ["native"]
        for name in candidates:
            reason = _native_ready(name)
            if reason is None:
                return name
            warn_once(f"auto_fallback_{name}", f"backend='auto' skips {name!r}: {reason} (said once)")
        names = [name for name, (_, present) in BACKENDS.items() if present()]
        if not names:
            raise BackendUnavailableError("no solver backend is available: install scipy (pip install scipy)")
        return names[0]
    if backend in NATIVE:
        reason = _native_ready(backend)
        if reason is not None:
            raise reason
        if backend == "cuda" and not on_cuda:
            raise ShapeError(
                "backend 'cuda' solves a cost that is on a CUDA device, got one on the CPU; "
                "move it with cost.cuda(), or use backend='native'"
            )
        return backend
    check_choice(backend, "backend", BACKEND_NAMES)
    if not BACKENDS[backend][1]():
        raise BackendUnavailableError(
            f"backend {backend!r} is not installed here: {INSTALL_HINT[backend]}, "
            f"or use backend='auto' (available: {available_backends()})"
        )
    return backend


def _describe(cost: ArrayLike, backend: str) -> str:
    if isinstance(cost, torch.Tensor):
        kind = f"tensor {tuple(cost.shape)} {cost.dtype} on {cost.device}"
    elif isinstance(cost, np.ndarray):
        kind = f"array {cost.shape} {cost.dtype}"
    else:
        kind = type(cost).__name__
    return f"cost {kind}, backend {backend!r}"


def _solve_all(
    host: np.ndarray,
    num_targets: list[int],
    capacity: int,
    maximize: bool,
    nan_policy: NanPolicy,
    backend: str,
    batched: bool,
) -> np.ndarray:
    """Solve every problem of ``host (B, N, M)`` (any real dtype); return ``(B, N)`` int64 target or -1."""
    solve = BACKENDS[backend][0]
    batch, num_queries, _ = host.shape
    result = np.full((batch, num_queries), -1, dtype=np.int64)
    for b in range(batch):
        m = num_targets[b]
        if m == 0 or num_queries == 0:
            continue
        cost = sanitise(to_host_float64(host[b, :, :m]), b, batched, maximize, nan_policy)
        # Repeated ground truth, GT-major like H-DETR (hybridmatch.targets.repeated_index).
        work = np.tile(cost, (1, capacity)) if capacity > 1 else cost
        try:
            columns = solve(work)
        except _Infeasible:
            raise_infeasible(cost, b, batched, capacity)
        result[b] = np.where(columns >= 0, split_repeated_index(columns, m)[1], -1)
    return result


def _scaled_down(cost: torch.Tensor) -> torch.Tensor:
    """A float64 ``cost`` times a power of two (exact), so no finite entry exceeds SAFE_MAGNITUDE.

    Only float64 can hold costs whose sums overflow the solver's float64 duals; reading the
    peak is one pass over the cost (a device sync for a float64 cost on a GPU).
    """
    if cost.dtype != torch.float64 or cost.numel() == 0:
        return cost
    peak = float(torch.where(torch.isfinite(cost), cost.abs(), 0.0).max())
    if peak <= SAFE_MAGNITUDE:
        return cost
    return cost * 2.0 ** -math.ceil(math.log2(peak / SAFE_MAGNITUDE))


def _solve_native(
    cost: torch.Tensor,
    num_targets: list[int],
    capacity: int,
    maximize: bool,
    nan_policy: NanPolicy,
    backend: str,
    batched: bool,
) -> torch.Tensor:
    """One native call for the whole batch; problems it flags go through the shared checks.

    The native core reports NaN, a bad infinity or infeasibility per problem; such a
    problem is then checked on the host by the same code as every other backend, so the
    errors are identical, and with ``nan_policy="worst"`` it is solved again sanitised.
    """
    if backend == "native":
        cost = cost.detach().cpu()
    cost = _scaled_down(cost)
    assignment, status = _native.solve_batch(cost, num_targets, capacity, maximize, backend)
    status = status.cpu()  # B x 3 int64: the one host transfer of a CUDA solve
    codes = _native.Status
    if bool((status[:, 0] == codes.BAD_COUNT).any()):  # the kernel's own check: never from host counts
        raise RuntimeError(
            f"hybridmatch CUDA solver: num_targets out of range reached the kernel ({num_targets}); "
            "this is a bug in hybridmatch, please report it"
        )
    for b in torch.nonzero(status[:, 0] != codes.OK).flatten().tolist():
        m = num_targets[b]
        real = to_host_float64(cost[b, :, :m])
        work = sanitise(real, b, batched, maximize, nan_policy)  # raises unless NaN is allowed
        if int(status[b, 0]) != codes.INFEASIBLE:
            fixed = torch.from_numpy(work).to(cost.device)[None]
            again, again_status = _native.solve_batch(fixed, [m], capacity, False, backend)
            if int(again_status[0, 0]) == codes.OK:
                assignment[b] = again[0]
                continue
        raise_infeasible(work, b, batched, capacity)
    return assignment


def _solve_tensor(
    cost: torch.Tensor,
    num_targets: NumTargets,
    capacity: int,
    maximize: bool,
    backend: str,
    nan_policy: str,
    batched: bool,
) -> torch.Tensor:
    """Solve a ``(B, N, M)`` torch batch (options checked): ``(B, N)`` int64 on its device.

    The body of ``torch.ops.hybridmatch.batched_linear_sum_assignment`` (``_op.py``): it
    runs eagerly, under ``torch.compile`` too.
    """
    name = backend
    try:
        name = _resolve_backend(backend, cost.is_cuda)
        counts = check_num_targets(num_targets, cost.shape[0], cost.shape[2])
        cost = check_large_integers(cost, counts, capacity)
        # A target can never take more than all N queries: a larger K changes nothing.
        capacity = min(capacity, max(cost.shape[1], 1))
        if name in NATIVE:
            result = _solve_native(cost, counts, capacity, maximize, nan_policy, name, batched)  # type: ignore[arg-type]
        else:
            # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
            wide = cost.float() if cost.dtype == torch.bfloat16 else cost
            host = wide.detach().cpu().numpy()
            result = torch.from_numpy(_solve_all(host, counts, capacity, maximize, nan_policy, name, batched))  # type: ignore[arg-type]
    except HybridMatchError as error:
        shown = cost if batched else cost[0]
        raise with_context(error, _describe(shown, name)) from None
    return result.to(cost.device)


def batched_linear_sum_assignment(
    cost: ArrayLike,
    num_targets: NumTargets = None,
    *,
    capacity: int = 1,
    maximize: bool = False,
    backend: str = "auto",
    nan_policy: NanPolicy = "raise",
) -> ArrayLike:
    """Solve a batch of assignment problems: each query to at most one target.

    Args:
        cost (Tensor[B, N, M] or Tensor[N, M]): cost of assigning query n to
            target m; torch or numpy, any real dtype (solved in float64).
        num_targets (Sequence[int] or Tensor[B], optional): problem ``b`` uses
            only its first ``num_targets[b]`` columns; the rest are padding and
            never read, whatever they hold. Default: all M columns are real.
        capacity (int): how many queries one target may take (``K`` of
            H-DETR's repeated ground truth). Default 1: one-to-one.
        maximize (bool): maximise the total instead of minimising it; a bool
            (Python or numpy), anything else raises ConfigurationError.
        backend (str): ``"auto"`` (the fastest available: ``"cuda"`` for a cost on a GPU,
            else ``"native"``, falling back to ``"scipy"`` with one warning), ``"cuda"``,
            ``"native"`` (C++, threads over the batch), ``"scipy"`` or ``"lap"``.
            See :func:`available_backends`.
        nan_policy (str): ``"raise"`` (default) raises on NaN; ``"worst"``
            treats NaN as worse than any finite cost and warns once.

    Returns:
        Tensor[B, N] int64 (or Tensor[N] for a single matrix): the target index
        of each query, -1 = unmatched; on the cost's device. A numpy cost gives
        a numpy array.

    Raises:
        ShapeError: ``cost`` is not 2-D or 3-D, or ``num_targets`` does not fit; for a
            dtype that is not a real number (object, string, complex, date) it is also a
            ``TypeError``, as in scipy.
        ConfigurationError: ``capacity``, ``maximize``, ``backend`` or ``nan_policy`` is invalid.
        InvalidCostError: NaN (with ``nan_policy="raise"``) or the "best" infinity.
        InfeasibleError: the +inf pairs leave no complete assignment.
        BackendUnavailableError: the backend named cannot run here.

    Example:
        >>> cost = torch.tensor([[[4.0, 1.0], [2.0, 0.0], [5.0, 2.5]]])
        >>> batched_linear_sum_assignment(cost)
        tensor([[ 1,  0, -1]])
        >>> batched_linear_sum_assignment(cost, capacity=2)  # each target takes up to 2 queries
        tensor([[1, 0, 1]])
    """
    name = backend
    try:
        capacity = check_int(capacity, "capacity", minimum=1, hint=CAPACITY_HINT)
        nan_policy = check_nan_policy(nan_policy)
        maximize = check_bool(maximize, "maximize")
        if not isinstance(backend, str):
            raise ConfigurationError(f"backend must be a str, one of {list(BACKEND_NAMES)}; got {backend!r}")
        if not isinstance(cost, (torch.Tensor, np.ndarray)):
            raise ShapeError(f"cost must be a torch.Tensor or numpy.ndarray, got {type(cost).__name__}")
        if isinstance(cost, np.ndarray):
            cost = np.asarray(cost)  # a np.matrix cannot be indexed as a batch
        else:
            check_tensor(cost, "cost")  # refuses the meta device
            # A lazily negated or conjugated view (x.conj().imag, torch._neg_view) has no
            # numpy form; materialise it once here.
            cost = cost.resolve_neg().resolve_conj()
        check_dtype(cost)
        if cost.ndim not in (2, 3):
            shape = tuple(cost.shape)
            raise ShapeError(
                f"cost must be (B, N, M) or (N, M), got {shape}; stack the problems of a batch "
                "(pad targets and pass num_targets) or pass one matrix"
            )
        batched = cost.ndim == 3
        if not batched and num_targets is not None:
            raise ShapeError("num_targets is for a (B, N, M) batch; slice a single (N, M) matrix instead")
        problems = cost if batched else cost[None]
        counts, count_tensor = None, None
        if isinstance(problems, torch.Tensor):
            # Under torch.compile: torch.ops.hybridmatch.batched_linear_sum_assignment, one node
            # of the graph. Counts given as ints are checked here; a tensor of counts inside.
            if num_targets is not None and not isinstance(num_targets, torch.Tensor):
                counts = check_num_targets(num_targets, problems.shape[0], problems.shape[2])
            count_tensor = num_targets if isinstance(num_targets, torch.Tensor) else None
    except HybridMatchError as error:
        raise with_context(error, _describe(cost, name)) from None
    # The solves add the call's context to their own errors (they know the backend chosen).
    if isinstance(problems, np.ndarray):
        result_np = _solve_array(problems, num_targets, capacity, maximize, nan_policy, backend, batched)
        return np.asarray(result_np if batched else result_np[0])
    if torch.compiler.is_compiling():
        result = assignment_op(problems, counts, count_tensor, capacity, maximize, backend, nan_policy, batched)
    else:  # the op's body, without the dispatcher (whose first call imports torch._dynamo)
        given = count_tensor if count_tensor is not None else counts
        result = _solve_tensor(problems, given, capacity, maximize, backend, nan_policy, batched)
    return result if batched else result[0]


def _solve_array(
    problems: np.ndarray,
    num_targets: NumTargets,
    capacity: int,
    maximize: bool,
    nan_policy: NanPolicy,
    backend: str,
    batched: bool,
) -> np.ndarray:
    """Solve a ``(B, N, M)`` numpy batch (options checked): ``(B, N)`` int64."""
    name = backend
    try:
        name = _resolve_backend(backend, False)
        counts = check_num_targets(num_targets, problems.shape[0], problems.shape[2])
        problems = check_large_integers(problems, counts, capacity)
        # A target can never take more than all N queries: a larger K changes nothing.
        capacity = min(capacity, max(problems.shape[1], 1))
        if name in NATIVE:
            if problems.dtype in (np.float16, np.float32, np.float64):
                # torch takes no negative strides (a reversed view): copy those.
                tensor = torch.from_numpy(np.ascontiguousarray(problems))
            else:  # integers, long double: solved in float64 like every other backend
                tensor = torch.from_numpy(np.ascontiguousarray(problems, dtype=np.float64))
            return _solve_native(tensor, counts, capacity, maximize, nan_policy, name, batched).numpy()
        # Each problem's real block is widened to float64 on its own (cheaper than widening
        # the padded batch).
        return _solve_all(problems, counts, capacity, maximize, nan_policy, name, batched)
    except HybridMatchError as error:
        shown = problems if batched else problems[0]
        raise with_context(error, _describe(shown, name)) from None


@overload
def linear_sum_assignment(
    cost: torch.Tensor, maximize: bool = ..., *, backend: str = ..., nan_policy: NanPolicy = ...
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def linear_sum_assignment(
    cost: object, maximize: bool = ..., *, backend: str = ..., nan_policy: NanPolicy = ...
) -> tuple[np.ndarray, np.ndarray]: ...
def linear_sum_assignment(
    cost: object, maximize: bool = False, *, backend: str = "auto", nan_policy: NanPolicy = "raise"
) -> tuple[ArrayLike, ArrayLike]:
    """Solve one assignment problem, a drop-in for :func:`scipy.optimize.linear_sum_assignment`.

    It accepts what scipy accepts (nested lists, bool, integer and floating arrays,
    views of any strides) and refuses what scipy refuses with the same exception
    type and a message holding scipy's phrase, so code written against scipy keeps
    working: ``ValueError`` "expected a matrix" (not 2-D), "matrix contains invalid
    numeric entries" (NaN, or the infinity that would be the best cost), "cost
    matrix is infeasible"; ``TypeError`` "Cannot cast array data" (object, string,
    complex, date arrays). The errors are hybridmatch's, which subclass those.

    Args:
        cost (Tensor[N, M], ndarray[N, M] or nested sequence): the cost matrix; a
            torch tensor of any real dtype (bool too), or anything scipy accepts.
        maximize (bool): maximise instead of minimise; must be a bool.
        backend (str): as in :func:`batched_linear_sum_assignment`.
        nan_policy (str): as in :func:`batched_linear_sum_assignment` (scipy has no such
            option: it always raises on NaN, like the default ``"raise"``).

    Returns:
        ``(row_ind, col_ind)`` int64, ``min(N, M)`` pairs sorted by row: torch tensors
        on the cost's device for a tensor, numpy arrays for anything else.

    Example:
        >>> row, col = linear_sum_assignment([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
        >>> row.tolist(), col.tolist()
        ([0, 1, 2], [1, 0, 2])
    """
    maximize = check_bool(maximize, "maximize")
    matrix = as_scipy_matrix(cost)
    try:
        columns = batched_linear_sum_assignment(matrix, maximize=maximize, backend=backend, nan_policy=nan_policy)
    except InvalidCostError as error:
        raise InvalidCostError(f"cost matrix contains invalid numeric entries: {error}") from None
    except InfeasibleError as error:
        raise InfeasibleError(f"cost matrix is infeasible: {error}") from None
    if isinstance(columns, torch.Tensor):
        rows = torch.nonzero(columns >= 0).flatten()
        return rows, columns[rows]
    rows_np = np.flatnonzero(columns >= 0).astype(np.int64)
    return rows_np, columns[rows_np]


def assignment_to_pairs(
    assignment: torch.Tensor, device: torch.device | str | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Convert ``(B, N)`` "target of each query or -1" into DETR's index pairs.

    Args:
        assignment (Tensor[B, N] int64): as returned by :func:`batched_linear_sum_assignment`.
        device: where the pairs live; default the assignment's device.

    Returns:
        list of B ``(pred_idx, tgt_idx)`` pairs of int64 tensors, sorted by ``pred_idx``,
        target indices local to each image.

    Example:
        >>> assignment_to_pairs(torch.tensor([[-1, 1, 0]]))
        [(tensor([1, 2]), tensor([1, 0]))]
    """
    if not isinstance(assignment, torch.Tensor) or assignment.ndim != 2:
        shape = tuple(assignment.shape) if isinstance(assignment, torch.Tensor) else type(assignment).__name__
        raise ShapeError(f"assignment must be a (B, N) int64 tensor, got {shape}")
    assignment = (assignment.to(device) if device is not None else assignment).long()
    if assignment.device.type == "cpu":  # numpy's nonzero costs a fraction of torch's per image
        pairs = []
        for row in assignment.numpy():
            queries = np.flatnonzero(row >= 0).astype(np.int64, copy=False)
            pairs.append((torch.from_numpy(queries), torch.from_numpy(row[queries])))
        return pairs
    return [(queries, row[queries]) for row in assignment for queries in [torch.nonzero(row >= 0).flatten()]]


def pairs_to_assignment(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], num_queries: int
) -> torch.Tensor:
    """Convert DETR's index pairs into ``(B, N)`` "target of each query or -1".

    Args:
        pairs: B ``(pred_idx, tgt_idx)`` pairs of integer tensors (any order).
        num_queries (int): N, the number of queries per image.

    Returns:
        Tensor[B, N] int64 on the device of the first pair (CPU when B = 0).

    Example:
        >>> pairs_to_assignment([(torch.tensor([2, 1]), torch.tensor([0, 1]))], num_queries=3)
        tensor([[-1,  1,  0]])
    """
    device = pairs[0][0].device if len(pairs) else torch.device("cpu")
    result = torch.full((len(pairs), num_queries), -1, dtype=torch.int64, device=device)
    for b, (queries, targets) in enumerate(pairs):
        queries = torch.as_tensor(queries, device=device).long()
        targets = torch.as_tensor(targets, device=device).long()
        if queries.shape != targets.shape or queries.ndim != 1:
            raise ShapeError(
                f"pairs[{b}] must be two 1-D tensors of equal length, got "
                f"{tuple(queries.shape)} and {tuple(targets.shape)}"
            )
        if queries.numel() and (int(queries.min()) < 0 or int(queries.max()) >= num_queries):
            raise ShapeError(f"pairs[{b}] holds a query index outside [0, {num_queries})")
        if torch.unique(queries).numel() != queries.numel():
            raise ShapeError(f"pairs[{b}] assigns one query twice; each query takes at most one target")
        result[b, queries] = targets
    return result
