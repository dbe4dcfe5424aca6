"""A small CUDA-solver workload for compute-sanitizer (memcheck, racecheck).

Solves ragged batches that take every path of the kernel: empty problems (no
targets, no queries), +inf entries, capacity > 1, both orientations, float32 and
float64, the global-memory fallback, and problems that must come back as errors
(an infeasible one, a NaN one, a bad infinity when maximising), never as device
asserts. Each result is checked against the CPU target. Exit status 0 when all
agree; benchmarks/gpu_check.sh runs it as
``compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py``.

    python benchmarks/gpu_sanitize.py [--device cpu]   # cpu: the same calls on the native backend
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridmatch.errors import InfeasibleError, InvalidCostError  # noqa: E402
from hybridmatch.solvers import batched_linear_sum_assignment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    backend = "cuda" if args.device.startswith("cuda") else "native"
    rng = np.random.default_rng(0)
    checks = 0

    def agree(cost: torch.Tensor, counts: list[int], capacity: int, maximize: bool = False) -> None:
        nonlocal checks
        got = batched_linear_sum_assignment(cost.to(args.device), counts, capacity=capacity, maximize=maximize,
                                            backend=backend).cpu()
        want = batched_linear_sum_assignment(cost, counts, capacity=capacity, maximize=maximize, backend="native")
        if not torch.equal(got, want):
            raise SystemExit(f"mismatch: shape {tuple(cost.shape)} counts {counts} K={capacity}")
        checks += 1

    def fails(error: type[Exception], cost: torch.Tensor, counts: list[int], maximize: bool = False) -> None:
        nonlocal checks
        try:
            batched_linear_sum_assignment(cost.to(args.device), counts, maximize=maximize, backend=backend)
        except error:
            checks += 1
            return
        raise SystemExit(f"expected {error.__name__} for shape {tuple(cost.shape)}")

    for dtype in (torch.float32, torch.float64):
        # Ragged: empty problem, targets side with K=3, queries side, +inf pairs, ties.
        cost = torch.from_numpy(rng.integers(0, 4, size=(6, 40, 12))).to(dtype)
        cost[3][torch.from_numpy(rng.random((40, 12)) < 0.2)] = float("inf")
        for capacity in (1, 3):
            agree(cost, [12, 0, 5, 12, 1, 9], capacity)
        agree(cost.clamp(max=9), [12, 0, 5, 12, 1, 9], 2, maximize=True)
        agree(torch.zeros(3, 0, 4, dtype=dtype), [4, 0, 2], 1)  # no queries
        # Errors, with a healthy problem beside the bad one in the same launch.
        infeasible = torch.rand(3, 8, 4, dtype=dtype)
        infeasible[1, :, 2] = float("inf")
        fails(InfeasibleError, infeasible, [4, 4, 4])
        nan = torch.rand(3, 8, 4, dtype=dtype)
        nan[2, 5, 1] = float("nan")
        fails(InvalidCostError, nan, [4, 4, 4])
        fails(InvalidCostError, torch.where(nan.isnan(), torch.tensor(float("inf"), dtype=dtype), nan), [4, 4, 4],
              maximize=True)
    # The global-memory fallback (columns past the shared-memory limit), briefly.
    agree(torch.from_numpy(rng.random((2, 10000, 3)).astype(np.float32)), [3, 2], 1)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"gpu_sanitize: {checks} checks passed on {args.device} (backend {backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
