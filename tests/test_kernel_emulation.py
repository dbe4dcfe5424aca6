"""The CUDA kernel's own source, run on the CPU under a SIMT emulation, against the CPU target.

``csrc/cuda/lsap_cuda.cu`` is compiled by g++ with ``tests/emulation/cuda_runtime.h``
standing in for the CUDA runtime: one block's 256 threads are ``std::thread``s,
``__syncthreads`` is a ``std::barrier``, warp shuffles go through per-warp slots and
barriers, ``atomicMin`` is atomic. The only edits to the source are textual: the
``<<<...>>>`` launch and the ``extern __shared__`` declaration (C++ cannot parse
them). Assignments and status rows must equal the CPU target's
(``csrc/cpu/lsap_cpu.cpp``, the same algorithm run one thread per problem) on random
ragged batches: float32/float64, min/max, heavy ties, +inf, NaN, -inf, infeasible
problems, counts 0..M, capacity 1..3, column state in shared memory and in the
global-memory fallback. The CPU target is itself checked against scipy in
test_solvers.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridmatch.solvers import _native, available_backends

REPO = Path(__file__).resolve().parents[1]
CUDA_DIR = REPO / "hybridmatch" / "csrc" / "cuda"
EMULATION = Path(__file__).resolve().parent / "emulation"
CXX = shutil.which("g++")

pytestmark = [
    pytest.mark.skipif(CXX is None, reason="g++ not installed"),
    pytest.mark.skipif("native" not in available_backends(), reason="installed without the CPU target"),
]

Status = _native.Status  # the C++ enum (csrc/lsap_core.h), None without the extension
LAUNCH = re.compile(r"(\w+<\w+>)<<<(.*?)>>>\(", re.S)
DYNAMIC_SHARED = re.compile(r"extern __shared__ (?:__align__\(\d+\) )?(\w+) (\w+)\[\];")


def emulated_source(source: str) -> str:
    """The kernel file with the launch and the dynamic shared array rewritten for g++."""
    source, launches = LAUNCH.subn(r"hm_emu::launch(\1, \2)(", source)
    source, shared = DYNAMIC_SHARED.subn(r"\1* \2 = reinterpret_cast<\1*>(hm_emu::dynamic_shared());", source)
    assert launches == 2 and shared == 1, "lsap_cuda.cu changed shape: update the rewrite in this test"
    return source + (
        '\nextern "C" int hm_emu_set_attribute_calls() { return hm_emu::set_attribute_calls; }\n'
        'extern "C" int hm_emu_max_dynamic_set() { return hm_emu::max_dynamic_set; }\n'
    )


def build(tmp: Path, source: str, name: str) -> ctypes.CDLL:
    """Compile the rewritten kernel file into a shared library (cached by content)."""
    digest = hashlib.sha256((source + (EMULATION / "cuda_runtime.h").read_text()).encode()).hexdigest()[:16]
    library = tmp / f"{name}-{digest}.so"
    if not library.exists():
        cpp = tmp / f"{name}-{digest}.cpp"
        cpp.write_text(source)
        done = subprocess.run(
            [CXX, "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-fvisibility-inlines-hidden", "-w", f"-I{EMULATION}", f"-I{CUDA_DIR}",
             str(cpp), "-o", str(library)],
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-4000:]
    lib = ctypes.CDLL(str(library))
    lib.hybridmatch_launch_lsap.restype = ctypes.c_int
    lib.hybridmatch_launch_lsap.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.hybridmatch_workspace_bytes.restype = ctypes.c_int64
    lib.hybridmatch_workspace_bytes.argtypes = [ctypes.c_int64] * 3 + [ctypes.POINTER(ctypes.c_int64)]
    return lib


@pytest.fixture(scope="session")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The kernel as shipped: blocks of 256 threads."""
    source = emulated_source((CUDA_DIR / "lsap_cuda.cu").read_text())
    return build(tmp_path_factory.mktemp("emulation"), source, "lsap_emulated")


@pytest.fixture(scope="session")
def emulated_small(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The same kernel with blocks of 64 threads (two warps): the same code paths, 4x fewer OS threads."""
    source = "#define HYBRIDMATCH_CUDA_THREADS 64\n" + emulated_source((CUDA_DIR / "lsap_cuda.cu").read_text())
    return build(tmp_path_factory.mktemp("emulation"), source, "lsap_emulated_64")


def run_kernel(lib: ctypes.CDLL, cost: np.ndarray, counts: np.ndarray, capacity: int, maximize: bool,
               shared: bool) -> tuple[np.ndarray, np.ndarray]:
    """One emulated launch on a (B, N, M) batch, as the binding would prepare it."""
    batch, n, m = cost.shape
    cost = np.ascontiguousarray(cost)
    cost_t = np.ascontiguousarray(cost.transpose(0, 2, 1))
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    shared_bytes = ctypes.c_int64()
    stride = lib.hybridmatch_workspace_bytes(n, m, capacity, ctypes.byref(shared_bytes))
    assert stride % 256 == 0 and shared_bytes.value >= 0
    workspace = np.full(max(batch * stride, 1), 0xFF, dtype=np.uint8)  # poisoned: unread state shows
    assignment = np.full((batch, n), -7, dtype=np.int64)
    status = np.full((batch, 3), -7, dtype=np.int64)
    error = lib.hybridmatch_launch_lsap(
        0 if cost.dtype == np.float32 else 1, cost.ctypes.data, cost_t.ctypes.data, counts.ctypes.data, batch, n, m,
        capacity, int(maximize), assignment.ctypes.data, status.ctypes.data, workspace.ctypes.data, stride,
        -1 if shared else 0, None,
    )
    assert error == 0
    return assignment, status


def run_cpu_target(cost: np.ndarray, counts: np.ndarray, capacity: int, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
    assignment, status = _native.solve_batch(
        torch.from_numpy(cost), [int(c) for c in counts], capacity, maximize, "native"
    )
    return assignment.numpy(), status.numpy()


def random_batch(rng: np.random.Generator, case: int, stride: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """A ragged batch of one of several flavours; some problems are degenerate on purpose.

    Every seventh batch has more queries than a block has threads (``stride``).
    """
    batch = int(rng.integers(1, 5))
    n = int(rng.integers(0, 14)) if case % 7 else int(rng.integers(stride, stride + 20))
    m = int(rng.integers(0, 9))
    capacity = int(rng.integers(1, 4))
    maximize = bool(rng.integers(0, 2))
    dtype = np.float32 if case % 2 else np.float64
    if case % 3 == 0:  # heavy ties: a handful of integer values
        cost = rng.integers(0, 3, size=(batch, n, m)).astype(dtype)
    else:
        cost = (rng.normal(size=(batch, n, m)) * 10).astype(dtype)
    counts = rng.integers(0, m + 1, size=batch)
    forbidden = np.inf if not maximize else -np.inf
    for b in range(batch):
        flavour = rng.integers(0, 8)
        if flavour == 0 and n and counts[b]:  # forbidden pairs
            cost[b][rng.random((n, m)) < 0.3] = forbidden
        elif flavour == 1 and n and counts[b]:  # NaN somewhere real
            cost[b, rng.integers(0, n), rng.integers(0, counts[b])] = np.nan
        elif flavour == 2 and n and counts[b]:  # the bad infinity (and a NaN after it in the same row)
            q, t = rng.integers(0, n), rng.integers(0, counts[b])
            cost[b, q, t] = -forbidden
            cost[b, q, t + 1:] = np.nan
        elif flavour == 3 and n and counts[b]:  # infeasible: one real target blocked for every query
            cost[b, :, rng.integers(0, counts[b])] = forbidden
        if counts[b] < m:  # padding columns hold garbage that must never be read
            cost[b, :, counts[b]:] = rng.choice([np.nan, -np.inf, np.inf, 1e30])
    return cost, counts, capacity, maximize


def compare_on_random_batches(lib: ctypes.CDLL, seed: int, cases: int, stride: int) -> set[int]:
    # Slow on a CPU (every barrier wakes up to 256 OS threads), hence few, small cases;
    # HYBRIDMATCH_EMULATION_CASES=N runs N of them (e.g. 200 before a GPU session).
    """Emulated kernel (shared and global columns) == CPU target; the status codes seen."""
    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    cases = int(os.environ.get("HYBRIDMATCH_EMULATION_CASES", cases))
    for case in range(cases):
        cost, counts, capacity, maximize = random_batch(rng, case, stride)
        expected = run_cpu_target(cost, counts, capacity, maximize)
        for shared in (True, False):
            assignment, status = run_kernel(lib, cost, counts, capacity, maximize, shared)
            context = (f"case {case}: shape {cost.shape} {cost.dtype}, counts {counts}, K={capacity}, "
                       f"maximize={maximize}, shared={shared}")
            np.testing.assert_array_equal(status, expected[1], err_msg=context)
            np.testing.assert_array_equal(assignment, expected[0], err_msg=context)
        seen.update(expected[1][:, 0].tolist())
    return seen


@pytest.mark.slow
def test_emulated_kernel_equals_cpu_target_on_random_batches(emulated_small: ctypes.CDLL) -> None:
    seen = compare_on_random_batches(emulated_small, seed=20261130, cases=28, stride=64)
    assert seen == {Status.OK, Status.NAN, Status.BAD_INFINITY, Status.INFEASIBLE}  # every outcome was exercised


@pytest.mark.slow
def test_emulated_kernel_as_shipped_equals_cpu_target(emulated: ctypes.CDLL) -> None:
    compare_on_random_batches(emulated, seed=5, cases=8, stride=256)


@pytest.mark.slow
def test_emulated_kernel_on_a_detr_shaped_problem_both_orientations(emulated_small: ctypes.CDLL) -> None:
    # 100 queries (more than the 64-thread block's stride): 7 targets x K=6 (targets
    # side) and 20 x 6 (queries side), ties included.
    rng = np.random.default_rng(7)
    cost = np.round(rng.random((2, 100, 20)), 1).astype(np.float32)
    counts = np.array([7, 20])
    expected = run_cpu_target(cost, counts, 6, False)
    for shared in (True, False):
        assignment, status = run_kernel(emulated_small, cost, counts, 6, False, shared)
        np.testing.assert_array_equal(status, expected[1])
        np.testing.assert_array_equal(assignment, expected[0])


def test_emulated_kernel_reports_counts_outside_the_columns(emulated_small: ctypes.CDLL) -> None:
    cost = np.ones((3, 4, 2), dtype=np.float32)
    assignment, status = run_kernel(emulated_small, cost, np.array([3, -1, 2]), 1, False, True)
    assert status.tolist() == [[Status.BAD_COUNT, 3, 2], [Status.BAD_COUNT, -1, 2], [Status.OK, -1, -1]]
    assert (assignment[:2] == -1).all() and sorted(assignment[2].tolist()) == [-1, -1, 0, 1]


def test_shared_memory_limit_is_raised_once_to_the_device_limit(tmp_path: Path) -> None:
    # A library of its own: the count starts at zero whatever ran before.
    source = "#define HYBRIDMATCH_CUDA_THREADS 32\n" + emulated_source((CUDA_DIR / "lsap_cuda.cu").read_text())
    lib = build(tmp_path, source, "lsap_attribute")
    cost = np.ones((1, 3, 2), dtype=np.float32)
    for _ in range(3):
        run_kernel(lib, cost, np.array([2]), 1, False, True)
        run_kernel(lib, cost.astype(np.float64), np.array([2]), 1, False, True)
    assert lib.hm_emu_set_attribute_calls() == 2  # once per kernel (float32, float64), not per call
    assert lib.hm_emu_max_dynamic_set() == 232448 - 512  # opt-in limit minus the static bound


def test_launch_beyond_48_kib_needs_the_raised_limit(tmp_path: Path) -> None:
    # 2000 queries x 1 target: 2000 columns, 50,000 bytes of shared memory (over 48 KiB).
    cost = np.random.default_rng(3).random((1, 2000, 1)).astype(np.float32)
    source = (CUDA_DIR / "lsap_cuda.cu").read_text()
    raise_call = "  return cudaFuncSetAttribute(lsap_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,\n"
    assert raise_call in source, "lsap_cuda.cu changed shape: update this test's anchor"
    shipped = build(tmp_path, "#define HYBRIDMATCH_CUDA_THREADS 32\n" + emulated_source(source), "lsap_raised")
    assignment, status = run_kernel(shipped, cost, np.array([1]), 1, False, True)
    assert status.tolist() == [[Status.OK, -1, -1]] and int((assignment >= 0).sum()) == 1
    # The kernel file without the raise: the emulated launch is refused, as the GPU would.
    unraised = source.replace(raise_call, "  return cudaSuccess;\n  (void)cudaFuncSetAttribute(lsap_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,\n")
    lib = build(tmp_path, "#define HYBRIDMATCH_CUDA_THREADS 32\n" + emulated_source(unraised), "lsap_unraised")
    with pytest.raises(AssertionError):  # run_kernel asserts the launch returned 0
        run_kernel(lib, cost, np.array([1]), 1, False, True)


def test_a_batch_beyond_the_grid_limit_is_refused(emulated_small: ctypes.CDLL) -> None:
    # 2**31 problems: one block each would pass gridDim.x's 2**31 - 1; refused before any block runs.
    batch, n, m = 2**31, 3, 2
    shared_bytes = ctypes.c_int64()
    stride = emulated_small.hybridmatch_workspace_bytes(n, m, 1, ctypes.byref(shared_bytes))
    tiny = np.zeros(16, dtype=np.float64)
    error = emulated_small.hybridmatch_launch_lsap(
        1, tiny.ctypes.data, tiny.ctypes.data, tiny.ctypes.data, batch, n, m, 1, 0, tiny.ctypes.data,
        tiny.ctypes.data, tiny.ctypes.data, stride, -1, None,
    )
    assert error == 9  # cudaErrorInvalidConfiguration

# Mutations (each barrier deleted, one set of warp partials): tests/test_kernel_races.py, whose
# adversarial scheduler and race detector catch each of them deterministically.
