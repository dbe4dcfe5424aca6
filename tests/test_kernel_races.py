"""The CUDA kernel under an adversarial SIMT emulation with a race detector.

``csrc/cuda/lsap_cuda.cu`` is compiled by g++ with ``tests/emulation/race/cuda_runtime.h``
standing in for the CUDA runtime (see that header): each thread of a block is a fiber,
a seeded random scheduler switches threads at barriers, shuffles and memory accesses,
every access to shared memory, the workspace and the outputs is recorded through
ThreadSanitizer's instrumentation, and two threads touching one byte between the same
pair of barriers (one of them writing) is reported, as are threads meeting at different
barrier sites, deadlocks and endless searches. The kernel as shipped must be clean and
equal the CPU target (the same algorithm, run one thread per problem) on random ragged
batches, under several schedules each.

The mutation tests show the detector can fail: the kernel with any one barrier
deleted, or with one set of warp partials instead of the two alternating sets, must be
caught (a finding, or a result that differs from the CPU target).
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hybridmatch.solvers import available_backends

from .test_kernel_emulation import CUDA_DIR, emulated_source, random_batch, run_cpu_target

RACE = Path(__file__).resolve().parent / "emulation" / "race"
CXX = shutil.which("g++")
STATIC_SHARED = re.compile(r"__shared__ (\w+) (\w+);")
BARRIER = "__syncthreads();"

pytestmark = [
    pytest.mark.skipif(CXX is None, reason="g++ not installed"),
    pytest.mark.skipif("native" not in available_backends(), reason="installed without the CPU target"),
]


def race_source(source: str) -> str:
    """The kernel file rewritten for the race emulation: launch, dynamic and static shared memory."""
    source = emulated_source(source)
    source, count = STATIC_SHARED.subn(r'static \1 \2; ::hm_emu::watch(&\2, sizeof(\2), "static shared \2");', source)
    assert count == 1, "lsap_cuda.cu changed shape: update the rewrite in this test"
    return source


def build(folder: Path, source: str, name: str) -> ctypes.CDLL:
    """Compile with ThreadSanitizer's instrumentation, link without its runtime (cached by content)."""
    header = (RACE / "cuda_runtime.h").read_text()
    digest = hashlib.sha256((source + header).encode()).hexdigest()[:16]
    library = folder / f"{name}-{digest}.so"
    if not library.exists():
        cpp, obj = folder / f"{name}-{digest}.cpp", folder / f"{name}-{digest}.o"
        cpp.write_text(source)
        for command in (
            [CXX, "-std=c++20", "-O1", "-fsanitize=thread", "-fPIC", "-w", f"-I{RACE}", f"-I{CUDA_DIR}", "-c",
             str(cpp), "-o", str(obj)],
            [CXX, "-shared", "-Wl,-Bsymbolic", str(obj), "-o", str(library)],
        ):
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
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
    lib.hm_emu_watch.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.hm_emu_reset.argtypes = [ctypes.c_ulonglong]
    lib.hm_emu_report.restype = ctypes.c_char_p
    return lib


def run_kernel(lib: ctypes.CDLL, cost: np.ndarray, counts: np.ndarray, capacity: int, maximize: bool,
               shared: bool, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One emulated launch under schedule ``seed``: assignment, status and the detector's findings."""
    batch, n, m = cost.shape
    cost = np.ascontiguousarray(cost)
    cost_t = np.ascontiguousarray(cost.transpose(0, 2, 1))
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    shared_bytes = ctypes.c_int64()
    stride = lib.hybridmatch_workspace_bytes(n, m, capacity, ctypes.byref(shared_bytes))
    workspace = np.full(max(batch * stride, 1), 0xFF, dtype=np.uint8)
    assignment = np.full((batch, n), -7, dtype=np.int64)
    status = np.full((batch, 3), -7, dtype=np.int64)
    lib.hm_emu_reset(seed)
    for array, name in ((workspace, b"workspace"), (assignment, b"assignment"), (status, b"status")):
        lib.hm_emu_watch(array.ctypes.data, array.nbytes, name)
    error = lib.hybridmatch_launch_lsap(
        0 if cost.dtype == np.float32 else 1, cost.ctypes.data, cost_t.ctypes.data, counts.ctypes.data, batch, n, m,
        capacity, int(maximize), assignment.ctypes.data, status.ctypes.data, workspace.ctypes.data, stride,
        -1 if shared else 0, None,
    )
    report = lib.hm_emu_report().decode()
    assert (error == 0) == (report == ""), (error, report)
    return assignment, status, report


def first_problem(lib: ctypes.CDLL, cases: int, schedules: int, seed: int = 11) -> str | None:
    """The first disagreement with the CPU target or finding, over random batches and schedules; None if clean."""
    rng = np.random.default_rng(seed)
    for case in range(cases):
        cost, counts, capacity, maximize = random_batch(rng, case, 64)
        expected = run_cpu_target(cost, counts, capacity, maximize)
        for schedule in range(schedules):
            for shared in (True, False):
                assignment, status, report = run_kernel(lib, cost, counts, capacity, maximize, shared, 1 + schedule)
                context = f"case {case} {cost.shape} K={capacity} shared={shared} schedule {schedule}"
                if report:
                    return f"{context}: {report}"
                if not (np.array_equal(status, expected[1]) and np.array_equal(assignment, expected[0])):
                    return f"{context}: result differs from the CPU target"
    return None


KERNEL = (CUDA_DIR / "lsap_cuda.cu").read_text()
CORE = (CUDA_DIR.parent / "lsap_core.h").read_text()


def with_core_inlined(kernel: str, core: str) -> str:
    """The kernel with lsap_core.h pasted in (so that a mutation of the core reaches this build only)."""
    include = '#include "../lsap_core.h"\n'
    assert include in kernel
    return kernel.replace(include, core.replace("#pragma once", "") + "\n")


def barrier_mutants() -> list[tuple[str, str]]:
    """(label, kernel source) with one barrier deleted, for every barrier of the kernel and the core."""
    mutants = []
    for where, text in (("lsap_cuda.cu", KERNEL), ("lsap_core.h", CORE)):
        token = BARRIER if where == "lsap_cuda.cu" else "exec.sync();"
        starts = [match.start() for match in re.finditer(re.escape(token), text)]
        for k, start in enumerate(starts):
            line = text.count("\n", 0, start) + 1
            mutated = text[:start] + text[start + len(token):]
            if where == "lsap_cuda.cu":
                mutants.append((f"{where}:{line}", with_core_inlined(mutated, CORE)))
            else:
                mutants.append((f"{where}:{line}", with_core_inlined(KERNEL, mutated)))
    return mutants


def one_partial_set() -> str:
    """The kernel with one set of warp partials instead of two alternating ones."""
    anchor = "    Candidate* set = partial + parity * kWarps;\n"
    assert anchor in KERNEL, "lsap_cuda.cu changed shape: update this test's anchor"
    return with_core_inlined(KERNEL.replace(anchor, "    Candidate* set = partial;\n"), CORE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("races")


def small(source: str) -> str:
    """Two warps per block: the smallest block where warps exchange partials."""
    return "#define HYBRIDMATCH_CUDA_THREADS 64\n" + race_source(source)


@pytest.mark.slow
def test_kernel_as_shipped_has_no_race_and_equals_the_cpu_target(folder: Path) -> None:
    lib = build(folder, small(KERNEL), "shipped")
    assert first_problem(lib, cases=14, schedules=3) is None


@pytest.mark.slow
def test_detector_reports_a_planted_race(folder: Path) -> None:
    # A race put in on purpose: every thread writes the first column's distance before the
    # first search, with no barrier between. The report names it.
    anchor = "  exec.for_each(p.cols, [&](int32_t j) {\n    w.v[j] = 0.0;"
    assert anchor in CORE
    broken = CORE.replace(anchor, "  w.dist[0] = 1.0;\n" + anchor)
    lib = build(folder, small(with_core_inlined(KERNEL, broken)), "planted")
    cost = np.random.default_rng(0).random((1, 70, 5))
    _, _, report = run_kernel(lib, cost, np.array([5]), 1, False, True, seed=1)
    assert report.startswith("race (write / write) on dynamic shared byte 0 between threads")


MUTANTS = [*barrier_mutants(), ("one set of warp partials", one_partial_set())]


@pytest.mark.slow
@pytest.mark.parametrize("label, source", MUTANTS, ids=[label for label, _ in MUTANTS])
def test_mutant_is_caught(folder: Path, label: str, source: str) -> None:
    lib = build(folder, small(source), "mutant")
    problem = first_problem(lib, cases=14, schedules=3)
    assert problem is not None, f"{label}: no race, divergence or wrong result found"
