"""Benchmark batched assignment solvers on DETR-shaped matching costs.

Usage::

    python benchmarks/solvers.py [--batch 16] [--repeat 5] [--shapes 300x30 1500x30x6 ...]
                                 [--json out.json] [--quick]

A shape ``NxM`` is N queries against M distinct targets; ``NxGxK`` is N queries
against G ground-truth boxes repeated K times (H-DETR's one-to-many branch,
M = G*K columns). Every image of a batch is a different problem.

The cost is DETR-like, ``2 * focal class cost + 5 * L1 + 2 * (-GIoU)``, built
here in float32 from seeded random boxes and logits (half the queries are
jittered copies of a ground-truth box, the others random), so the script
depends on nothing in hybridmatch but the solvers it measures.

Methods, each timed over the whole batch (median of ``--repeat`` runs after one
warm-up run):

- ``scipy loop``: ``scipy.optimize.linear_sum_assignment`` per image on the
  float64 cost; the baseline (speed-up 1.0).
- ``scipy 2 threads``: the same calls spread over a 2-worker thread pool
  (scipy releases the GIL); the pool is created outside the timed region.
- ``lap.lapjv (padded)``: gatagat ``lap.lapjv(cost, extend_cost=True)`` per
  image, queries x targets as a DETR user would call it. It pads to a square
  and is pathologically slow on repeated targets: one problem is first timed in
  a child process and the method is skipped when it takes more than
  ``--lapjv-cap`` seconds; otherwise the probe stands in for the warm-up.
- ``hybridmatch <backend>``: :func:`hybridmatch.solvers.batched_linear_sum_assignment`
  on the float32 (B, N, M) tensor, validation and float64 conversion included,
  for every backend of :func:`hybridmatch.solvers.available_backends`. For
  repeated targets it runs twice: on the materialised (B, N, G*K) cost, and
  with ``capacity=K`` on the (B, N, G) cost.

A method whose batch is so slow that its repeats would take more than
``--method-budget`` seconds is timed fewer times (at least once); the table
says so.

Every result is checked: a valid assignment (each column used at most its
capacity, ``min(N, M)`` pairs) whose total cost equals the scipy loop's to a
relative 1e-9. The script exits with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridmatch.solvers import available_backends, batched_linear_sum_assignment  # noqa: E402

try:
    import lap
except ImportError:  # lap is a dependency, but the benchmark still runs without it
    lap = None

DEFAULT_SHAPES = ["300x30", "900x30", "1500x30x6", "1500x100x6", "3000x100x6"]
NUM_CLASSES = 80
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
WEIGHT_CLASS, WEIGHT_L1, WEIGHT_GIOU = 2.0, 5.0, 2.0
MAX_REL_GAP = 1e-9


# ---------------------------------------------------------------------------
# Shapes and costs


@dataclass(frozen=True)
class Shape:
    """N queries against G ground-truth boxes, each repeated K times (M = G*K)."""

    queries: int
    gt: int
    copies: int = 1

    @property
    def targets(self) -> int:
        return self.gt * self.copies

    @property
    def label(self) -> str:
        base = f"{self.queries}x{self.targets}"
        return f"{base} ({self.gt} GT x{self.copies})" if self.copies > 1 else base


def parse_shape(text: str) -> Shape:
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"shape {text!r} must be NxM (N queries, M distinct targets) or NxGxK "
            "(G ground-truth boxes repeated K times), positive integers, e.g. 1500x30x6"
        )
    return Shape(*numbers)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def _giou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes ``pred (N, 4)`` and ``gt (G, 4)`` -> (N, G)."""
    p, g = pred[:, None, :], gt[None, :, :]
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    inter_w = (torch.minimum(p[..., 2], g[..., 2]) - torch.maximum(p[..., 0], g[..., 0])).clamp(min=0)
    inter_h = (torch.minimum(p[..., 3], g[..., 3]) - torch.maximum(p[..., 1], g[..., 1])).clamp(min=0)
    inter = inter_w * inter_h
    union = area_p + area_g - inter
    hull_w = torch.maximum(p[..., 2], g[..., 2]) - torch.minimum(p[..., 0], g[..., 0])
    hull_h = torch.maximum(p[..., 3], g[..., 3]) - torch.minimum(p[..., 1], g[..., 1])
    hull = hull_w * hull_h
    iou = inter / union
    return iou - (hull - union) / hull


def detr_cost(shape: Shape, batch: int, seed: int) -> torch.Tensor:
    """A seeded DETR-like matching cost, float32 ``(batch, N, G)`` (distinct targets only)."""
    gen = torch.Generator().manual_seed(seed)
    n, g = shape.queries, shape.gt
    costs = []
    for _ in range(batch):
        gt_centre = 0.1 + 0.8 * torch.rand(g, 2, generator=gen)
        gt_size = 0.02 + 0.4 * torch.rand(g, 2, generator=gen)
        gt_boxes = torch.cat((gt_centre, gt_size), dim=1)
        gt_labels = torch.randint(NUM_CLASSES, (g,), generator=gen)

        # Half the queries are jittered copies of a ground-truth box, the rest random.
        near = n // 2
        source = torch.randint(g, (near,), generator=gen)
        centre = gt_boxes[source, :2] + 0.15 * gt_boxes[source, 2:] * torch.randn(near, 2, generator=gen)
        size = gt_boxes[source, 2:] * torch.exp(0.2 * torch.randn(near, 2, generator=gen))
        near_boxes = torch.cat((centre, size), dim=1)
        far_boxes = torch.cat(
            (torch.rand(n - near, 2, generator=gen), 0.02 + 0.5 * torch.rand(n - near, 2, generator=gen)),
            dim=1,
        )
        pred_boxes = torch.cat((near_boxes, far_boxes)).clamp(0.0, 1.0)
        pred_boxes[:, 2:] = pred_boxes[:, 2:].clamp(min=1e-3)

        logits = torch.randn(n, NUM_CLASSES, generator=gen) - 2.0
        logits[torch.arange(near), gt_labels[source]] += 3.0  # near queries lean to their box's class

        prob = logits.sigmoid()
        negative = (1 - FOCAL_ALPHA) * prob**FOCAL_GAMMA * -(1 - prob + 1e-8).log()
        positive = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * -(prob + 1e-8).log()
        class_cost = positive[:, gt_labels] - negative[:, gt_labels]
        l1_cost = torch.cdist(pred_boxes, gt_boxes, p=1)
        giou_cost = -_giou(_cxcywh_to_xyxy(pred_boxes), _cxcywh_to_xyxy(gt_boxes))
        costs.append(WEIGHT_CLASS * class_cost + WEIGHT_L1 * l1_cost + WEIGHT_GIOU * giou_cost)
    return torch.stack(costs).to(torch.float32).contiguous()


# ---------------------------------------------------------------------------
# Methods: each returns (B, N) int64, the column of each query or -1


def _scipy_one(cost: np.ndarray) -> np.ndarray:
    rows, cols = scipy_lsa(cost)
    columns = np.full(cost.shape[0], -1, dtype=np.int64)
    columns[rows] = cols
    return columns


def scipy_loop(cost64: np.ndarray) -> np.ndarray:
    return np.stack([_scipy_one(c) for c in cost64])


def make_scipy_threads(pool: ThreadPoolExecutor) -> Callable[[np.ndarray], np.ndarray]:
    def scipy_threads(cost64: np.ndarray) -> np.ndarray:
        return np.stack(list(pool.map(_scipy_one, cost64)))

    return scipy_threads


def _lapjv_one(cost: np.ndarray) -> np.ndarray:
    _, x, _ = lap.lapjv(cost, extend_cost=cost.shape[0] != cost.shape[1])
    return np.asarray(x[: cost.shape[0]], dtype=np.int64)


def lapjv_loop(cost64: np.ndarray) -> np.ndarray:
    return np.stack([_lapjv_one(c) for c in cost64])


_LAPJV_PROBE = """
import sys, time, numpy as np, lap
cost = np.load(sys.argv[1])
start = time.perf_counter()
lap.lapjv(cost, extend_cost=cost.shape[0] != cost.shape[1])
print(time.perf_counter() - start)
"""


def probe_lapjv(cost: np.ndarray, cap_s: float) -> float | None:
    """Seconds ``lap.lapjv`` takes on one problem, or None when over ``cap_s``.

    Timed in a child process so that a pathological problem can be abandoned.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cost.npy")
        np.save(path, cost)
        try:
            done = subprocess.run(
                [sys.executable, "-c", _LAPJV_PROBE, path],
                capture_output=True, text=True, timeout=cap_s + 5.0, check=True,
            )
        except subprocess.TimeoutExpired:
            return None
        seconds = float(done.stdout.strip())
    return seconds if seconds <= cap_s else None


# ---------------------------------------------------------------------------
# Measuring and checking


@dataclass
class Record:
    shape: str
    method: str
    batch: int
    ms_median: float | None
    ms_min: float | None
    repeats: int
    speedup_vs_scipy_loop: float | None
    total_cost: float | None
    rel_gap: float | None
    form: str  # "distinct", "materialised" (G*K columns) or "capacity" (G columns, capacity=K)
    valid: bool | None = None
    same_total: bool | None = None
    note: str = ""


def time_batches(
    solve: Callable[[], np.ndarray], repeats: int, budget_s: float, warmup: int = 1
) -> tuple[np.ndarray, list[float], str]:
    """Run ``solve`` ``warmup`` times, then time it ``repeats`` times (ms).

    A method whose warm-up shows that the repeats would take more than
    ``budget_s`` seconds gets fewer repeats (at least one), said in the note.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        result = solve()
    once = (time.perf_counter() - start) / warmup if warmup else 0.0
    planned = repeats
    if once > 0 and once * repeats > budget_s:
        planned = max(1, int(budget_s / once))
    times = []
    for _ in range(planned):
        start = time.perf_counter()
        result = solve()
        times.append((time.perf_counter() - start) * 1e3)
    note = f"{planned} of {repeats} repeats (slow)" if planned < repeats else ""
    return result, times, note


def as_numpy(result: object) -> np.ndarray:
    return result.numpy() if isinstance(result, torch.Tensor) else np.asarray(result)


def check(assignment: np.ndarray, cost64: np.ndarray, capacity: int) -> tuple[bool, float]:
    """Validity of ``assignment (B, N)`` on ``cost64 (B, N, M)`` and its total cost."""
    batch, n, m = cost64.shape
    valid = assignment.shape == (batch, n)
    total = 0.0
    for b in range(batch):
        row = assignment[b]
        queries = np.flatnonzero(row >= 0)
        columns = row[queries]
        if columns.size and (columns.max() >= m):
            return False, float("nan")
        counts = np.bincount(columns, minlength=m)
        valid = valid and bool(counts.max(initial=0) <= capacity) and queries.size == min(n, m * capacity)
        total += float(cost64[b, queries, columns].sum())
    return valid, total


def bench_shape(shape: Shape, args: argparse.Namespace, seed: int) -> list[Record]:
    base = detr_cost(shape, args.batch, seed)  # (B, N, G) float32
    k = shape.copies
    # GT-major tiling as in H-DETR: copy c of target j is column c*G + j.
    materialised = base.repeat(1, 1, k) if k > 1 else base
    cost64 = materialised.double().numpy()
    base64 = base.double().numpy()
    form = "materialised" if k > 1 else "distinct"

    records: list[Record] = []
    reference: dict[str, float] = {}

    def add(method: str, result: np.ndarray | None, times: list[float], form: str, capacity: int,
            solved64: np.ndarray, note: str = "") -> None:
        if result is None:
            records.append(Record(shape.label, method, args.batch, None, None, 0, None, None, None,
                                  form, note=note))
            return
        valid, total = check(result, solved64, capacity)
        if not reference:
            reference.update(ms=statistics.median(times), total=total)
        gap = abs(total - reference["total"]) / max(abs(reference["total"]), 1e-12)
        median = statistics.median(times)
        records.append(Record(
            shape.label, method, args.batch, median, min(times), len(times),
            reference["ms"] / median, total, gap, form, valid, valid and gap <= MAX_REL_GAP, note,
        ))
        # Progress for long runs; the table on stdout comes at the end.
        print(f"  {shape.label}: {method}: {median:.2f} ms", file=sys.stderr, flush=True)

    repeats = args.repeat
    budget = args.method_budget
    result, times, note = time_batches(lambda: scipy_loop(cost64), repeats, budget)
    add("scipy loop", result, times, form, 1, cost64, note)

    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = make_scipy_threads(pool)
        result, times, note = time_batches(lambda: threaded(cost64), repeats, budget)
    add("scipy 2 threads", result, times, form, 1, cost64, note)

    if lap is None:
        add("lap.lapjv (padded)", None, [], form, 1, cost64, note="lap is not installed")
    else:
        seconds = probe_lapjv(cost64[0], args.lapjv_cap)
        if seconds is None:
            add("lap.lapjv (padded)", None, [], form, 1, cost64,
                note=f"skipped: one problem takes > {args.lapjv_cap:g} s")
        else:
            # The probe stands in for the warm-up: a batch costs about seconds * batch.
            lap_repeats = max(1, min(repeats, int(budget / max(seconds * args.batch, 1e-9))))
            result, times, _ = time_batches(lambda: lapjv_loop(cost64), lap_repeats, budget, warmup=0)
            note = f"{lap_repeats} of {repeats} repeats (slow), no warm-up" if lap_repeats < repeats else ""
            add("lap.lapjv (padded)", result, times, form, 1, cost64, note)

    for backend in available_backends():
        result, times, note = time_batches(
            lambda: batched_linear_sum_assignment(materialised, backend=backend), repeats, budget
        )
        add(f"hybridmatch {backend}", as_numpy(result), times, form, 1, cost64, note)
        if k > 1:
            result, times, note = time_batches(
                lambda: batched_linear_sum_assignment(base, capacity=k, backend=backend), repeats, budget
            )
            add(f"hybridmatch {backend} capacity={k}", as_numpy(result), times, "capacity", k, base64, note)
    return records


# ---------------------------------------------------------------------------
# Output


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "scipy": scipy.__version__,
        "lap": getattr(lap, "__version__", None) if lap is not None else None,
        "hybridmatch_backends": available_backends(),
        # Other work on the machine skews timings; a load near the CPU count is a warning sign.
        "load_average_at_start": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(records: list[Record]) -> None:
    header = ["shape", "method", "ms/batch", "min ms", "reps", "x scipy loop", "rel gap", "same total", "note"]
    rows = []
    for r in records:
        same = "-" if r.same_total is None else ("yes" if r.same_total else "NO")
        rows.append([
            r.shape, r.method, _fmt(r.ms_median, ".2f"), _fmt(r.ms_min, ".2f"), str(r.repeats),
            _fmt(r.speedup_vs_scipy_loop, ".2f"), _fmt(r.rel_gap, ".1e"), same, r.note,
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    numeric = {2, 3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(header).rstrip())
    print("  ".join("-" * w for w in widths))
    previous = None
    for r, row in zip(records, rows):
        if previous is not None and r.shape != previous:
            print()
        previous = r.shape
        print(line(row).rstrip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="problems per batch (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method (default 5)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                        help="NxM or NxGxK (G GT repeated K times); default: " + " ".join(DEFAULT_SHAPES))
    parser.add_argument("--json", type=Path, default=None, help="write the records and machine info here")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 2, 1 repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lapjv-cap", type=float, default=2.0,
                        help="skip lap.lapjv when one problem takes longer (seconds, default 2)")
    parser.add_argument("--method-budget", type=float, default=60.0,
                        help="seconds of timed repeats per method and shape before the repeats "
                             "are cut (at least one is kept; default 60)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeat = 2, 1
    if args.batch < 1 or args.repeat < 1:
        parser.error(f"--batch and --repeat must be >= 1, got {args.batch} and {args.repeat}")
    if args.shapes is None:
        args.shapes = [parse_shape(s) for s in DEFAULT_SHAPES]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(f"batch {args.batch}, {args.repeat} repeats (median, 1 warm-up); "
          f"{info['cpu_count']} CPUs, torch {info['torch']}, scipy {info['scipy']}, lap {info['lap']}")
    records: list[Record] = []
    for i, shape in enumerate(args.shapes):
        records.extend(bench_shape(shape, args, seed=args.seed + 1000 * i))
    print_table(records)
    info["load_average_at_end"] = _load_average()
    print(f"load average (1, 5, 15 min): {info['load_average_at_start']} at start, "
          f"{info['load_average_at_end']} at end, on {info['cpu_count']} CPUs")

    failures = [r for r in records if r.ms_median is not None and not r.same_total]
    if args.json is not None:
        payload = {
            "machine": info,
            "settings": {"batch": args.batch, "repeat": args.repeat, "seed": args.seed,
                         "shapes": [s.label for s in args.shapes], "max_rel_gap": MAX_REL_GAP},
            "records": [asdict(r) for r in records],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if failures:
        for r in failures:
            print(f"CHECK FAILED: {r.shape} {r.method}: valid={r.valid} rel_gap={r.rel_gap}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
