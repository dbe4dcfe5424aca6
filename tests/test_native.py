"""What is particular to the native backends: fallback, threads, dtypes, CUDA source.

The solver contract itself (optimality, capacity, ties, errors) runs over every
backend in test_solvers.py, native and cuda included.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch.errors import BackendUnavailableError, HybridMatchWarning, ShapeError
from hybridmatch.solvers import _native, available_backends, batched_linear_sum_assignment

CSRC = Path(__file__).resolve().parent.parent / "hybridmatch" / "csrc"
needs_native = pytest.mark.skipif("native" not in available_backends(), reason="no C++ compiler")


def reference_total(cost: np.ndarray, capacity: int) -> float:
    tiled = np.tile(cost, (1, capacity))
    rows, cols = scipy_lsa(tiled)
    return float(tiled[rows, cols].sum())


def total(cost: np.ndarray, assignment: np.ndarray) -> float:
    rows = np.flatnonzero(assignment >= 0)
    return float(cost[rows, assignment[rows]].sum())


@needs_native
def test_thread_count_does_not_change_the_answer() -> None:
    rng = np.random.default_rng(0)
    cost = torch.from_numpy(rng.integers(0, 5, size=(12, 90, 15)).astype(np.float32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = batched_linear_sum_assignment(cost, capacity=4, backend="native")
        torch.set_num_threads(2)
        two = batched_linear_sum_assignment(cost, capacity=4, backend="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_every_dtype_is_solved_exactly(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(1)
    cost = torch.from_numpy(rng.normal(size=(3, 40, 7)) * 10).to(dtype)
    exact = cost.double().numpy()  # the values the solver sees, widened exactly
    result = batched_linear_sum_assignment(cost, capacity=3, backend="native").numpy()
    for b in range(3):
        assert total(exact[b], result[b]) == pytest.approx(reference_total(exact[b], 3), rel=1e-12, abs=1e-9)


@needs_native
def test_ragged_batch_with_both_orientations() -> None:
    # Image 0: 3 targets x K=2 <= 10 queries (targets side); image 1: 8 x 2 > 10 (queries side).
    rng = np.random.default_rng(2)
    cost = rng.random((2, 10, 8))
    result = batched_linear_sum_assignment(cost, [3, 8], capacity=2, backend="native")
    assert total(cost[0, :, :3], result[0]) == pytest.approx(reference_total(cost[0, :, :3], 2), rel=1e-12)
    assert total(cost[1], result[1]) == pytest.approx(reference_total(cost[1], 2), rel=1e-12)
    assert (result[1] >= 0).all()  # 16 slots for 10 queries: every query is matched


def _without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the package had been installed where no C++ compiler was."""
    monkeypatch.setattr(_native, "_cpu", None)
    monkeypatch.setattr(_native, "_cpu_error", None)
    monkeypatch.setattr(_native, "_cuda", None)
    monkeypatch.setattr(_native, "_cuda_error", None)


def test_explicit_native_without_the_extension_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_extension(monkeypatch)
    assert "native" not in available_backends()
    with pytest.raises(BackendUnavailableError, match="installed without its compiled solver .*reinstall"):
        batched_linear_sum_assignment(torch.zeros(1, 3, 2), backend="native")


def test_auto_falls_back_once_and_says_why_at_the_callers_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_extension(monkeypatch)
    cost = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.warns(HybridMatchWarning, match="skips 'native': .*without its compiled solver") as record:
        assert batched_linear_sum_assignment(cost).tolist() == [[1, 0]]
    # The solver runs inside torch's dispatcher (a custom op): the warning still names this file.
    assert [Path(w.filename).name for w in record] == [Path(__file__).name]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched_linear_sum_assignment(cost)


def test_fallback_warning_names_the_callers_line_through_a_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Matcher.forward runs under torch.no_grad's decorator and nn.Module.__call__.
    from hybridmatch.matchers import HungarianMatcher

    _without_extension(monkeypatch)
    matcher = HungarianMatcher()
    outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.warns(HybridMatchWarning, match="skips 'native'") as record:
        matcher(outputs, targets)
    assert [Path(w.filename).name for w in record] == [Path(__file__).name]


def test_cuda_backend_without_a_gpu_names_the_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' is unavailable: .*(without its CUDA solver|CUDA support|GPU)"):
        batched_linear_sum_assignment(torch.zeros(1, 3, 2), backend="cuda")


@pytest.mark.cuda
def test_cuda_backend_needs_the_cost_on_the_gpu() -> None:
    with pytest.raises(ShapeError, match="move it with cost.cuda"):
        batched_linear_sum_assignment(torch.zeros(1, 3, 2), backend="cuda")


@pytest.mark.cuda
def test_cuda_matches_native_on_detr_shapes() -> None:
    rng = np.random.default_rng(3)
    for n, m, k in [(300, 30, 1), (900, 30, 1), (1500, 30, 6), (200, 50, 6)]:
        cost = torch.from_numpy(rng.random((4, n, m)).astype(np.float32))
        counts = [m, m // 2, 0, 1]
        gpu = batched_linear_sum_assignment(cost.cuda(), counts, capacity=k, backend="cuda").cpu()
        cpu = batched_linear_sum_assignment(cost, counts, capacity=k, backend="native")
        assert torch.equal(gpu, cpu)  # one algorithm, one tie rule: the same indices


# ------------------------------------------------------------ CUDA source checks

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_kernel_compiles(arch: str, tmp_path: Path) -> None:
    source = CSRC / "cuda" / "lsap_cuda.cu"
    result = subprocess.run(
        [NVCC, "-std=c++17", "-O3", f"-arch={arch}", "-Werror", "all-warnings", "-c", str(source),
         "-o", str(tmp_path / "lsap.o")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr

# The binding (csrc/cuda/lsap_cuda_binding.cpp) is compiled with the kernel by the package's
# own build: test_native_install.py::test_cuda_solver_builds_when_requested_and_is_skipped_otherwise.
