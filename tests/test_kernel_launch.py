"""CPU-side guard of the CUDA kernel's launch: configuration and memory against H100/H200 limits.

The launch plan is computed by the real code (``csrc/lsap_launch.h``, which
``lsap_cuda.cu`` launches with), compiled here by g++, for every shape the benchmarks
and the end-to-end matching run; the kernel's registers and static shared memory are
read from ptxas for sm_90. The limits are the H100/H200's (compute capability 9.0),
written out here from NVIDIA's tables.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "hybridmatch" / "csrc"
CUDA_DIR = CSRC / "cuda"
CXX = shutil.which("g++")
NVCC = shutil.which("nvcc")

# Compute capability 9.0 (H100, H200).
SMEM_PER_SM = 228 * 1024
SMEM_OPTIN_PER_BLOCK = 227 * 1024
THREADS_PER_BLOCK = 1024
REGISTERS_PER_SM = 65536
REGISTERS_PER_THREAD = 255
MAX_GRID_X = 2**31 - 1
STATIC_SHARED_BOUND = 512  # launch::kStaticSharedBytes
# Column state: dist and v (float64), pred and owner (int32), settled (uint8).
BYTES_PER_COLUMN = 8 + 8 + 4 + 4 + 1
# Row state: u (float64), seen and entry (int32); plus one int32 per assigned slot.
BYTES_PER_ROW = 8 + 4 + 4

# (label, B, N, M, K): benchmarks/solvers.py's GPU section (batch 16 and its smoke
# batch 2; materialised and capacity forms), benchmarks/gpu_matching.py (one-to-one and
# one-to-many groups, up to 100 objects) and the forced global-memory fallback test.
SHAPES = [
    (f"{label} B={b}", b, n, m, k)
    for b in (2, 16)
    for label, n, m, k in [
        ("300x30", 300, 30, 1), ("900x30", 900, 30, 1),
        ("1500x180", 1500, 180, 1), ("1500x30 K=6", 1500, 30, 6),
        ("1500x600", 1500, 600, 1), ("1500x100 K=6", 1500, 100, 6),
        ("3000x600", 3000, 600, 1), ("3000x100 K=6", 3000, 100, 6),
        ("o2o 300x100", 300, 100, 1), ("o2m 1500x100 K=6", 1500, 100, 6),
    ]
]
FALLBACK = ("fallback 10000x20", 2, 10000, 20, 1)

PLAN_MAIN = """
#include <cstdio>
#include "lsap_launch.h"
int main() {
  long long b, n, m, k, limit;
  while (std::scanf("%lld %lld %lld %lld %lld", &b, &n, &m, &k, &limit) == 5) {
    const auto p = hybridmatch::launch::plan(b, n, m, k, limit);
    std::printf("%lld %d %lld %d %lld %lld\\n", (long long)p.grid, p.threads, (long long)p.shared_bytes,
                p.shared_columns ? 1 : 0, (long long)p.workspace_stride, (long long)p.column_bytes);
  }
  std::printf("static %lld\\n", (long long)hybridmatch::launch::kStaticSharedBytes);
}
"""


@pytest.fixture(scope="module")
def planner(tmp_path_factory: pytest.TempPathFactory):
    if CXX is None:
        pytest.skip("g++ not installed")
    folder = tmp_path_factory.mktemp("launch")
    (folder / "plan.cpp").write_text(PLAN_MAIN)
    done = subprocess.run([CXX, "-std=c++17", "-O1", f"-I{CSRC}", str(folder / "plan.cpp"), "-o",
                           str(folder / "plan")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    def plan(shapes: list[tuple], limit: int) -> tuple[list[dict], int]:
        text = "".join(f"{b} {n} {m} {k} {limit}\n" for _, b, n, m, k in shapes)
        out = subprocess.run([str(folder / "plan")], input=text, capture_output=True, text=True, timeout=60)
        lines = out.stdout.splitlines()
        keys = ["grid", "threads", "shared_bytes", "shared_columns", "workspace_stride", "column_bytes"]
        plans = [dict(zip(keys, map(int, line.split()))) for line in lines[:-1]]
        return plans, int(lines[-1].split()[1])

    return plan


def test_every_benchmark_shape_fits_an_h100_block_with_columns_in_shared_memory(planner) -> None:
    limit = SMEM_OPTIN_PER_BLOCK - STATIC_SHARED_BOUND  # what the kernel file raises the limit to
    plans, static = planner(SHAPES, limit)
    assert static == STATIC_SHARED_BOUND
    for (label, b, n, m, k), p in zip(SHAPES, plans):
        columns = max(n, m * k)
        assert p["grid"] == b <= MAX_GRID_X, label
        assert p["threads"] % 32 == 0 and 32 <= p["threads"] <= THREADS_PER_BLOCK, label
        assert p["column_bytes"] == BYTES_PER_COLUMN * columns, label
        assert p["shared_columns"] == 1, f"{label}: {p['column_bytes']} B of columns leave shared memory"
        assert p["shared_bytes"] + static <= SMEM_OPTIN_PER_BLOCK, label
        assert p["shared_bytes"] + static <= SMEM_PER_SM, label
        # The global slice holds the rows after room for the columns, 256-byte aligned.
        need = columns * BYTES_PER_COLUMN + max(n, m) * BYTES_PER_ROW + 4 * columns
        assert need <= p["workspace_stride"] < need + 8 + 256 and p["workspace_stride"] % 256 == 0, label


def test_the_largest_problems_fall_back_to_global_memory(planner) -> None:
    limit = SMEM_OPTIN_PER_BLOCK - STATIC_SHARED_BOUND
    largest_in_shared = limit // BYTES_PER_COLUMN  # 9277 columns on an H100/H200
    shapes = [FALLBACK, ("edge", 1, largest_in_shared, 1, 1), ("edge+1", 1, largest_in_shared + 1, 1, 1)]
    (fallback, edge, beyond), _ = planner(shapes, limit)
    assert fallback["shared_columns"] == 0 and fallback["shared_bytes"] == 0
    assert edge["shared_columns"] == 1 and beyond["shared_columns"] == 0
    # With 48 KiB (no opt-in) it falls back far sooner: 1500 x 600 fits, 3000 x 600 does not.
    (fits, falls), _ = planner([("1500x600", 16, 1500, 600, 1), ("3000x600", 16, 3000, 600, 1)],
                               48 * 1024 - STATIC_SHARED_BOUND)
    assert fits["shared_columns"] == 1 and falls["shared_columns"] == 0


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_kernel_resources_for_sm90(tmp_path: Path) -> None:
    """ptxas's report: no spills, registers for a full block, static shared memory within the bound."""
    done = subprocess.run(
        [NVCC, "-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-c", str(CUDA_DIR / "lsap_cuda.cu"),
         "-o", str(tmp_path / "lsap.o")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = done.stdout + done.stderr
    usage = re.findall(r"Used (\d+) registers.*?(\d+) bytes smem", report)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(usage) == 2 and len(spills) == 2, report  # float32 and float64 kernels
    threads = 256  # launch::kThreads, checked against the header below
    assert "HYBRIDMATCH_CUDA_THREADS 256" in (CSRC / "lsap_launch.h").read_text()
    for registers, smem in usage:
        assert int(registers) <= REGISTERS_PER_THREAD
        assert int(registers) * threads <= REGISTERS_PER_SM
        assert int(smem) <= STATIC_SHARED_BOUND
    assert all(stores == "0" and loads == "0" for stores, loads in spills), report
