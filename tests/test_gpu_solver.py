"""The CUDA solver on a GPU: the global-memory fallback, threads, errors, the binding's checks.

Every test here needs a CUDA GPU (``cuda`` mark; skipped without one; run by
``benchmarks/gpu_check.sh``). References: the CPU target (the same algorithm and tie
rule, so the same indices) and scipy (totals).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch.errors import InfeasibleError, InvalidCostError
from hybridmatch.solvers import _native, batched_linear_sum_assignment

pytestmark = pytest.mark.cuda


def scipy_total(cost: np.ndarray, capacity: int) -> float:
    tiled = np.tile(cost, (1, capacity))
    rows, cols = scipy_lsa(tiled)
    return float(tiled[rows, cols].sum())


def total(cost: np.ndarray, columns: np.ndarray) -> float:
    rows = np.flatnonzero(columns >= 0)
    return float(cost[rows, columns[rows]].sum())


@pytest.mark.parametrize("shape, counts, capacity", [
    ((2, 10000, 20), [20, 13], 1),  # targets side, 10000 columns: past the 227 KiB of shared memory
    ((1, 600, 1000), [1000], 10),   # queries side, 10000 target slots
])
def test_global_memory_fallback_equals_the_cpu_target(shape, counts, capacity) -> None:
    rng = np.random.default_rng(0)
    cost = torch.from_numpy(rng.random(shape).astype(np.float32))
    gpu = batched_linear_sum_assignment(cost.cuda(), counts, capacity=capacity, backend="cuda").cpu()
    cpu = batched_linear_sum_assignment(cost, counts, capacity=capacity, backend="native")
    assert torch.equal(gpu, cpu)
    exact = cost.double().numpy()
    for b, m in enumerate(counts):
        if shape[1] * m <= 2_000_000:  # scipy on the materialised copies, where it is quick
            assert total(exact[b, :, :m], gpu[b].numpy()) == pytest.approx(scipy_total(exact[b, :, :m], capacity),
                                                                            rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_dtype_equals_the_cpu_target(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(1)
    cost = torch.from_numpy(rng.normal(size=(5, 120, 17)) * 10).to(dtype)
    counts = [17, 0, 5, 16, 1]
    gpu = batched_linear_sum_assignment(cost.cuda(), counts, capacity=3, backend="cuda").cpu()
    assert torch.equal(gpu, batched_linear_sum_assignment(cost, counts, capacity=3, backend="native"))


def test_errors_come_back_as_errors_and_the_gpu_stays_usable() -> None:
    cost = torch.rand(4, 30, 6, device="cuda")
    cost[1, 3, 2] = float("nan")
    with pytest.raises(InvalidCostError, match="NaN"):
        batched_linear_sum_assignment(cost, [6, 6, 0, 6], backend="cuda")
    blocked = torch.rand(2, 5, 3, device="cuda")
    blocked[0, :, 1] = float("inf")
    with pytest.raises(InfeasibleError):
        batched_linear_sum_assignment(blocked, backend="cuda")
    cost[1, 3, 2] = 0.5  # the same batch, repaired: the context survived
    result = batched_linear_sum_assignment(cost, [6, 6, 0, 6], backend="cuda").cpu()
    assert torch.equal(result, batched_linear_sum_assignment(cost.cpu(), [6, 6, 0, 6], backend="native"))


def test_host_threads_solving_at_once_agree_with_the_cpu_target() -> None:
    # Sizes on both sides of 48 KiB of shared memory, so the kernels' raised limit matters.
    rng = np.random.default_rng(2)
    costs = [torch.from_numpy(rng.random((4, n, m)).astype(np.float32)) for n, m in [(3000, 60), (300, 30)] * 3]
    expected = [batched_linear_sum_assignment(c, backend="native") for c in costs]
    results: list[torch.Tensor | None] = [None] * len(costs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for _ in range(5):
                    results[i] = batched_linear_sum_assignment(costs[i].cuda(), backend="cuda").cpu()
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(costs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


def _launch(cost: torch.Tensor, counts: torch.Tensor, capacity: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """hybridmatch._lsap_cuda.launch as _native calls it, with counts as given."""
    batch, n, m = cost.shape
    stride, _ = _native._cuda.workspace_bytes(n, m, capacity)
    workspace = torch.empty(max(batch * stride, 1), dtype=torch.uint8, device=cost.device)
    assignment = torch.full((batch, n), -7, dtype=torch.int64, device=cost.device)
    status = torch.full((batch, 3), -7, dtype=torch.int64, device=cost.device)
    _native._cuda.launch(cost, cost.transpose(1, 2).contiguous(), counts, capacity, False, assignment, status,
                         workspace, stride, -1, torch.cuda.current_stream().cuda_stream)
    return assignment, status


def test_binding_checks_the_shapes_it_is_given() -> None:
    cost = torch.rand(2, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="num_targets, assignment and status must be"):
        _launch(cost, torch.tensor([3], device="cuda"))
    with pytest.raises(TypeError):  # counts on the host: the kernel reads them on the device
        _launch(cost, torch.tensor([3, 3]))


def test_kernel_reports_device_counts_outside_the_columns() -> None:
    cost = torch.rand(3, 4, 3, device="cuda")
    assignment, status = _launch(cost, torch.tensor([3, -1, 9], device="cuda"))
    Status = _native.Status
    assert status.cpu().tolist() == [[Status.OK, -1, -1], [Status.BAD_COUNT, -1, 3], [Status.BAD_COUNT, 9, 3]]
    assert (assignment[1:] == -1).all()


def test_native_call_takes_a_cost_that_requires_grad() -> None:
    rng = np.random.default_rng(3)
    cost = torch.from_numpy(rng.random((3, 50, 9)).astype(np.float32)).cuda().requires_grad_()
    counts = [9, 4, 0]
    gpu, status = _native.solve_batch(cost, counts, 2, False, "cuda")
    reference, _ = _native.solve_batch(cost.detach().cpu(), counts, 2, False, "native")
    assert torch.equal(gpu.cpu(), reference)
    assert (status == 0).all() and not gpu.requires_grad


def test_solves_on_the_current_stream() -> None:
    # The launch takes torch's current stream: work queued on a side stream before the
    # solve (filling the cost) is seen by the kernel without a device-wide sync.
    rng = np.random.default_rng(5)
    host = torch.from_numpy(rng.random((4, 200, 20)).astype(np.float32))
    expected = batched_linear_sum_assignment(host, backend="native")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        cost = torch.empty(host.shape, device="cuda")
        cost.copy_(host, non_blocking=False)
        cost.mul_(1.0)
        result = batched_linear_sum_assignment(cost, backend="cuda")
    side.synchronize()
    assert torch.equal(result.cpu(), expected)


def test_queries_side_only_batch_needs_no_transposed_copy() -> None:
    # Every problem queries side (M * K > N): the binding skips the transpose; same answers.
    rng = np.random.default_rng(4)
    cost = torch.from_numpy(rng.random((3, 20, 30)).astype(np.float32))
    counts = [30, 25, 21]
    gpu = batched_linear_sum_assignment(cost.cuda(), counts, backend="cuda").cpu()
    assert torch.equal(gpu, batched_linear_sum_assignment(cost, counts, backend="native"))
