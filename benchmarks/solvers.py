"""Benchmark batched assignment solvers on DETR-shaped matching costs.

Usage::

    python benchmarks/solvers.py [--batch 16] [--repeat 5] [--threads 2]
                                 [--shapes 300x30 1500x30x6 ...] [--lapx-python PATH]
                                 [--include-slow] [--json out.json] [--quick]

A shape ``NxM`` is N queries against M distinct targets; ``NxGxK`` is N queries
against G ground-truth boxes repeated K times (H-DETR's one-to-many branch,
M = G*K columns). Every image of a batch is a different problem.

The cost is DETR-like, ``2 * focal class cost + 5 * L1 + 2 * (-GIoU)``, built
here in float32 from seeded random boxes and logits (half the queries are
jittered copies of a ground-truth box, the others random), so the script
depends on nothing in hybridmatch but the solvers it measures.

``--threads T`` (default 2) is the thread count every multi-threaded method
gets: ``torch.set_num_threads(T)`` (hybridmatch ``native`` solves the batch
with that many threads), the scipy thread pool and lapx's ``n_threads``.

CPU methods, each timed over the whole batch (median of ``--repeat`` runs
after one warm-up run):

- ``scipy loop``: ``scipy.optimize.linear_sum_assignment`` per image on the
  float64 cost; the baseline (speed-up 1.0).
- ``scipy T threads``: the same calls spread over a T-worker thread pool
  (scipy releases the GIL); the pool is created outside the timed region.
- ``lapx lapjvh_batch (T threads)``: ``lap.lapjvh_batch(cost, extend_cost=True,
  n_threads=T)`` of the lapx package on the float64 batch. lapx installs under
  the import name ``lap`` like gatagat ``lap``, so it runs in a worker process
  of another Python (``--lapx-python``, else ``$HYBRIDMATCH_LAPX_PYTHON``, else
  ``.venv-lapx/bin/python`` at the repository root): the batch goes over in a
  temporary ``.npy``, the worker (this file with ``--lapx-worker``; it imports
  numpy and lap only) times it with the same rules and sends the assignments
  and times back. Skipped, with a note, when no such Python is found.
- ``lap.lapjv (padded)``: gatagat ``lap.lapjv(cost, extend_cost=True)`` per
  image, queries x targets as a DETR user would call it. It pads to a square
  and is pathologically slow on repeated targets: one problem is first timed in
  a child process and the method is skipped when it takes more than
  ``--lapjv-cap`` seconds; otherwise the probe stands in for the warm-up.
- ``hybridmatch <backend>``: :func:`hybridmatch.solvers.batched_linear_sum_assignment`
  on the float32 (B, N, M) tensor, validation and float64 conversion included,
  for every CPU backend of :func:`hybridmatch.solvers.available_backends`. For
  repeated targets it runs twice: on the materialised (B, N, G*K) cost, and
  with ``capacity=K`` on the (B, N, G) cost. The ``lap`` backend takes seconds
  per batch beyond small shapes: it is timed only up to 900 x 30
  (``N * M <= 27000``) unless ``--include-slow`` is given.

A method whose batch is so slow that its repeats would take more than
``--method-budget`` seconds is timed fewer times (at least once); the table
says so.

After the table, a best-peer summary: for each shape, hybridmatch ``native``
(and ``native capacity=K`` on repeated shapes) against the best of the peers
``scipy T threads`` and ``lapx lapjvh_batch``, against the scipy loop, and
``capacity=K`` against ``native`` on the materialised copies, with the
project's targets (native >= 1.5x the best peer on 1500x180, 1500x600 and
3000x600; capacity=K faster than the materialised copies).

GPU section, only when torch sees a GPU and the ``cuda`` backend is available:
per shape, ``hybridmatch cuda`` on a float32 CUDA cost (the whole call,
validation included, ``torch.cuda.synchronize()`` before the clock stops),
``scipy loop incl. host copy`` (``cost.cpu()``, float64, scipy per image: what
DETR code pays today, the GPU section's baseline) and
``torch_linear_assignment.batch_linear_assignment`` when that package imports.

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

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Timing, shared by this process and the lapx worker (numpy only above this line)


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


# ---------------------------------------------------------------------------
# The lapx worker: runs under another Python whose ``lap`` is lapx. It must not
# import torch, scipy or hybridmatch (nor gatagat lap, which shares the name).

_FORBIDDEN_IN_WORKER = ("torch", "scipy", "hybridmatch")


def _worker_modules() -> list[str]:
    return sorted(name for name in _FORBIDDEN_IN_WORKER if name in sys.modules)


def lapx_worker(argv: list[str]) -> int:
    """``--lapx-worker --info`` or ``--lapx-worker COST.npy OUT.npz --threads T --repeat R --budget S``.

    ``--info`` prints ``{"lap": version, "lapjvh_batch": bool, "python": ...}``
    as JSON. Otherwise the (B, N, M) float64 batch in COST.npy is solved with
    ``lap.lapjvh_batch`` (one warm-up, R timed runs, fewer when they would
    exceed S seconds) and OUT.npz receives ``assignment`` (B, N) int64 (-1 =
    unmatched), ``times_ms``, ``note`` and ``info`` (JSON text).
    """
    parser = argparse.ArgumentParser(prog="solvers.py --lapx-worker")
    parser.add_argument("--info", action="store_true")
    parser.add_argument("cost", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0)
    args = parser.parse_args(argv)

    import lap  # lapx, in this interpreter

    info = {
        "lap": getattr(lap, "__version__", None),
        "lapjvh_batch": hasattr(lap, "lapjvh_batch"),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if args.info:
        info["modules"] = _worker_modules()
        print(json.dumps(info))
        return 0
    if args.cost is None or args.out is None:
        parser.error("COST.npy and OUT.npz are required without --info")
    if not info["lapjvh_batch"]:
        print(f"this lap ({info['lap']}) has no lapjvh_batch: it is not lapx", file=sys.stderr)
        return 2

    cost = np.load(args.cost)
    batch, n, m = cost.shape

    def solve() -> np.ndarray:
        rows, cols = lap.lapjvh_batch(cost, extend_cost=n != m, return_cost=False, n_threads=args.threads)
        assignment = np.full((batch, n), -1, dtype=np.int64)
        for b in range(batch):
            assignment[b, rows[b]] = cols[b]
        return assignment

    assignment, times, note = time_batches(solve, args.repeat, args.budget)
    info["modules"] = _worker_modules()
    np.savez(args.out, assignment=assignment, times_ms=np.asarray(times, dtype=np.float64),
             note=np.asarray(note), info=np.asarray(json.dumps(info)))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--lapx-worker"]:
    sys.exit(lapx_worker(sys.argv[2:]))


# ---------------------------------------------------------------------------
# Everything below runs in the benchmark process only.

import scipy  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment as scipy_lsa  # noqa: E402

# Run from a checkout without installing the package.
sys.path.insert(0, str(REPO))

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
# hybridmatch's "lap" backend (gatagat lap.lapjv, padded) is timed up to this N * M by default.
SLOW_LAP_MAX_PAIRS = 900 * 30
# The project's targets: native >= 1.5x the best peer on these (queries, targets) shapes.
TARGET_SHAPES = ((1500, 180), (1500, 600), (3000, 600))
TARGET_X_BEST_PEER = 1.5
LAPX_ENV = "HYBRIDMATCH_LAPX_PYTHON"


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


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


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
# lapx, through the worker in another interpreter


def find_lapx_python(given: str | None) -> str | None:
    """``--lapx-python``, else ``$HYBRIDMATCH_LAPX_PYTHON``, else ``.venv-lapx/bin/python``, else None."""
    if given:
        return given
    if os.environ.get(LAPX_ENV):
        return os.environ[LAPX_ENV]
    local = REPO / ".venv-lapx" / "bin" / "python"
    return str(local) if local.exists() else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def lapx_info(python: str | None) -> tuple[dict | None, str]:
    """What the lapx worker's interpreter offers, or None and the reason it cannot be used."""
    if python is None:
        return None, f"lapx not available: give --lapx-python PATH or set {LAPX_ENV}"
    if not Path(python).exists():
        return None, f"lapx not available: {python} does not exist"
    try:
        done = subprocess.run([python, str(Path(__file__).resolve()), "--lapx-worker", "--info"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"lapx not available: {python}: {error}"
    if done.returncode != 0:
        return None, f"lapx not available: {python}: {_last_line(done.stderr) or 'worker failed'}"
    info = json.loads(done.stdout)
    if not info.get("lapjvh_batch"):
        return None, f"lapx not available: the lap of {python} ({info.get('lap')}) has no lapjvh_batch"
    if info.get("modules"):
        return None, f"lapx worker imported {info['modules']}: refusing to time it"
    return info, ""


def run_lapx(python: str, cost64: np.ndarray, threads: int, repeats: int,
             budget_s: float) -> tuple[np.ndarray | None, list[float], str]:
    """Time ``lap.lapjvh_batch`` on ``cost64`` in the worker: (assignment, times in ms, note)."""
    with tempfile.TemporaryDirectory() as tmp:
        cost_path, out_path = os.path.join(tmp, "cost.npy"), os.path.join(tmp, "out.npz")
        np.save(cost_path, np.ascontiguousarray(cost64, dtype=np.float64))
        command = [python, str(Path(__file__).resolve()), "--lapx-worker", cost_path, out_path,
                   "--threads", str(threads), "--repeat", str(repeats), "--budget", str(budget_s)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=3 * budget_s + 120)
        except subprocess.TimeoutExpired:
            return None, [], "skipped: the lapx worker timed out"
        if done.returncode != 0 or not os.path.exists(out_path):
            return None, [], f"lapx worker failed: {_last_line(done.stderr) or done.returncode}"
        with np.load(out_path, allow_pickle=False) as out:
            modules = json.loads(str(out["info"])).get("modules")
            if modules:
                return None, [], f"lapx worker imported {modules}: not timed"
            return out["assignment"].astype(np.int64), out["times_ms"].tolist(), str(out["note"])


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
    # CPU section: over the scipy loop; GPU section: over "scipy loop incl. host copy".
    speedup_vs_scipy_loop: float | None
    total_cost: float | None
    rel_gap: float | None
    form: str  # "distinct", "materialised" (G*K columns) or "capacity" (G columns, capacity=K)
    valid: bool | None = None
    same_total: bool | None = None
    note: str = ""


def as_numpy(result: object) -> np.ndarray:
    return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)


def check(assignment: np.ndarray, cost64: np.ndarray, capacity: int) -> tuple[bool, float]:
    """Validity of ``assignment (B, N)`` on ``cost64 (B, N, M)`` and its total cost."""
    batch, n, m = cost64.shape
    valid = assignment.shape == (batch, n)
    if not valid:
        return False, float("nan")
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


class Recorder:
    """The records of one shape in one section; the first method added is the reference."""

    def __init__(self, shape: Shape, batch: int) -> None:
        self.shape, self.batch = shape, batch
        self.records: list[Record] = []
        self.reference: dict[str, float] = {}

    def skip(self, method: str, form: str, note: str) -> None:
        self.records.append(Record(self.shape.label, method, self.batch, None, None, 0, None, None, None,
                                   form, note=note))
        print(f"  {self.shape.label}: {method}: {note}", file=sys.stderr, flush=True)

    def add(self, method: str, result: np.ndarray, times: list[float], form: str, capacity: int,
            solved64: np.ndarray, note: str = "") -> None:
        valid, total = check(result, solved64, capacity)
        median = statistics.median(times)
        if not self.reference:
            self.reference.update(ms=median, total=total)
        gap = abs(total - self.reference["total"]) / max(abs(self.reference["total"]), 1e-12)
        self.records.append(Record(
            self.shape.label, method, self.batch, median, min(times), len(times),
            self.reference["ms"] / median, total, gap, form, valid, valid and gap <= MAX_REL_GAP, note,
        ))
        # Progress for long runs; the table on stdout comes at the end.
        print(f"  {self.shape.label}: {method}: {median:.2f} ms", file=sys.stderr, flush=True)


def _costs(shape: Shape, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, N, G) float32 cost and its GT-major materialisation (B, N, G*K) (copy c of j is c*G + j)."""
    base = detr_cost(shape, batch, seed)
    materialised = base.repeat(1, 1, shape.copies) if shape.copies > 1 else base
    return base, materialised


def cpu_backends() -> list[str]:
    return [name for name in available_backends() if name != "cuda"]


def bench_shape(shape: Shape, args: argparse.Namespace, seed: int) -> list[Record]:
    base, materialised = _costs(shape, args.batch, seed)
    k = shape.copies
    cost64 = materialised.double().numpy()
    base64 = base.double().numpy()
    form = "materialised" if k > 1 else "distinct"
    rec = Recorder(shape, args.batch)
    repeats, budget, threads = args.repeat, args.method_budget, args.threads

    result, times, note = time_batches(lambda: scipy_loop(cost64), repeats, budget)
    rec.add("scipy loop", result, times, form, 1, cost64, note)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        threaded = make_scipy_threads(pool)
        result, times, note = time_batches(lambda: threaded(cost64), repeats, budget)
    rec.add(f"scipy {_threads(threads)}", result, times, form, 1, cost64, note)

    lapx_method = f"lapx lapjvh_batch ({_threads(threads)})"
    if args.lapx_python is None:
        rec.skip(lapx_method, form, args.lapx_note)
    else:
        result, times, note = run_lapx(args.lapx_python, cost64, threads, repeats, budget)
        if result is None:
            rec.skip(lapx_method, form, note)
        else:
            rec.add(lapx_method, result, times, form, 1, cost64, note)

    if lap is None:
        rec.skip("lap.lapjv (padded)", form, "lap is not installed")
    else:
        seconds = probe_lapjv(cost64[0], args.lapjv_cap)
        if seconds is None:
            rec.skip("lap.lapjv (padded)", form, f"skipped: one problem takes > {args.lapjv_cap:g} s")
        else:
            # The probe stands in for the warm-up: a batch costs about seconds * batch.
            lap_repeats = max(1, min(repeats, int(budget / max(seconds * args.batch, 1e-9))))
            result, times, _ = time_batches(lambda: lapjv_loop(cost64), lap_repeats, budget, warmup=0)
            note = f"{lap_repeats} of {repeats} repeats (slow), no warm-up" if lap_repeats < repeats else ""
            rec.add("lap.lapjv (padded)", result, times, form, 1, cost64, note)

    for backend in cpu_backends():
        method = f"hybridmatch {backend}"
        if backend == "lap" and not args.include_slow and shape.queries * shape.targets > SLOW_LAP_MAX_PAIRS:
            note = "skipped: seconds per batch here (--include-slow times it)"
            rec.skip(method, form, note)
            if k > 1:
                rec.skip(f"{method} capacity={k}", "capacity", note)
            continue
        result, times, note = time_batches(
            lambda: batched_linear_sum_assignment(materialised, backend=backend), repeats, budget
        )
        rec.add(method, as_numpy(result), times, form, 1, cost64, note)
        if k > 1:
            result, times, note = time_batches(
                lambda: batched_linear_sum_assignment(base, capacity=k, backend=backend), repeats, budget
            )
            rec.add(f"{method} capacity={k}", as_numpy(result), times, "capacity", k, base64, note)
    return rec.records


# ---------------------------------------------------------------------------
# GPU section


def gpu_unavailable_reason() -> str | None:
    """Why the GPU section cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "GPU section skipped: torch sees no GPU"
    if "cuda" not in available_backends():
        return "GPU section skipped: hybridmatch's cuda backend is not available here"
    return None


def _torch_linear_assignment() -> tuple[Callable | None, str]:
    try:
        from torch_linear_assignment import batch_linear_assignment
    except Exception as error:  # ImportError, or a build/runtime error of its extension
        return None, f"torch-linear-assignment not importable ({type(error).__name__}): pip install torch-linear-assignment"
    return batch_linear_assignment, ""


def _falls_back_to_the_cpu(solve: Callable[[], object]) -> str:
    """Run ``solve`` once; a note when torch-linear-assignment warned that it used SciPy on the CPU."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solve()
    said = [str(w.message) for w in caught if "SciPy" in str(w.message) or "CPU" in str(w.message)]
    return f"ran on the CPU, not the GPU: {said[0][:120]}" if said else ""


def bench_gpu_shape(shape: Shape, args: argparse.Namespace, seed: int, device: str = "cuda") -> list[Record]:
    """The same costs as the CPU section (same seed), timed on the GPU, synchronised.

    ``device`` is for dry runs of this code on a machine without a GPU.
    """
    base, materialised = _costs(shape, args.batch, seed)
    k = shape.copies
    cost64 = materialised.double().numpy()
    base64 = base.double().numpy()
    form = "materialised" if k > 1 else "distinct"
    on_gpu = torch.device(device).type == "cuda"
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    base_gpu, materialised_gpu = base.to(device), materialised.to(device)
    synchronize()
    rec = Recorder(shape, args.batch)
    repeats, budget = args.repeat, args.method_budget

    def synced(solve: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            out = solve()
            synchronize()
            return out

        return run

    # What DETR code pays today: the cost leaves the GPU, then scipy per image.
    result, times, note = time_batches(
        synced(lambda: scipy_loop(materialised_gpu.cpu().double().numpy())), repeats, budget
    )
    rec.add("scipy loop incl. host copy", result, times, form, 1, cost64, note)

    def attempt(method: str, solve: Callable[[], object], form: str, capacity: int, solved64: np.ndarray) -> None:
        try:
            result, times, note = time_batches(synced(solve), repeats, budget)
        except Exception as error:  # report and go on: one failing peer must not end the run
            rec.skip(method, form, f"failed: {type(error).__name__}: {error}"[:200])
            return
        rec.add(method, as_numpy(result), times, form, capacity, solved64, note)

    attempt("hybridmatch cuda", lambda: batched_linear_sum_assignment(materialised_gpu, backend="cuda"),
            form, 1, cost64)
    if k > 1:
        attempt(f"hybridmatch cuda capacity={k}",
                lambda: batched_linear_sum_assignment(base_gpu, capacity=k, backend="cuda"),
                "capacity", k, base64)
    tla, why = _torch_linear_assignment()
    if tla is None:
        rec.skip("torch_linear_assignment", form, why)
    else:
        attempt("torch_linear_assignment", lambda: tla(materialised_gpu), form, 1, cost64)
        fallback = _falls_back_to_the_cpu(lambda: tla(materialised_gpu)) if on_gpu else ""
        if fallback and rec.records[-1].method == "torch_linear_assignment":
            rec.records[-1].note = "; ".join(filter(None, [rec.records[-1].note, fallback]))
    return rec.records


# ---------------------------------------------------------------------------
# Best-peer summary


def summarise(records: list[Record], shapes: list[Shape], threads: int) -> list[dict]:
    """Per shape: hybridmatch native (and capacity=K) against the best peer and the scipy loop."""
    peers = (f"scipy {_threads(threads)}", f"lapx lapjvh_batch ({_threads(threads)})")
    rows = []
    for shape in shapes:
        done = {r.method: r for r in records if r.shape == shape.label and r.ms_median is not None and r.same_total}
        scipy_loop_ms = done["scipy loop"].ms_median if "scipy loop" in done else None
        ran = [done[p] for p in peers if p in done]
        best = min(ran, key=lambda r: r.ms_median) if ran else None
        missing = [p for p in peers if p not in done]
        materialised = done.get("hybridmatch native")
        targeted = (shape.queries, shape.targets) in TARGET_SHAPES
        methods = ["hybridmatch native"] + ([f"hybridmatch native capacity={shape.copies}"] if shape.copies > 1 else [])
        for method in methods:
            mine = done.get(method)
            row: dict = {
                "shape": shape.label, "method": method, "ms": mine.ms_median if mine else None,
                "best_peer": best.method if best else None, "best_peer_ms": best.ms_median if best else None,
                "x_best_peer": None, "x_scipy_loop": None, "x_materialised": None,
                "targets": [], "target_met": None,
                "note": ("peers missing: " + ", ".join(missing)) if missing else "",
            }
            if mine is None:
                row["note"] = (row["note"] + "; " if row["note"] else "") + f"{method} did not run or failed its check"
                rows.append(row)
                continue
            if best is not None:
                row["x_best_peer"] = best.ms_median / mine.ms_median
            if scipy_loop_ms is not None:
                row["x_scipy_loop"] = scipy_loop_ms / mine.ms_median
            capacity = method != "hybridmatch native"
            if capacity and materialised is not None:
                row["x_materialised"] = materialised.ms_median / mine.ms_median
            checks = []
            if targeted and row["x_best_peer"] is not None:
                checks.append((f">= {TARGET_X_BEST_PEER:g}x best peer", row["x_best_peer"] >= TARGET_X_BEST_PEER))
            if capacity and row["x_materialised"] is not None:
                checks.append(("faster than materialised", row["x_materialised"] > 1.0))
            row["targets"] = [{"target": name, "met": met} for name, met in checks]
            row["target_met"] = all(met for _, met in checks) if checks else None
            rows.append(row)
    return rows


def print_summary(rows: list[dict], threads: int) -> None:
    print()
    print(f"Best-peer summary (peers: scipy {_threads(threads)}, lapx lapjvh_batch ({_threads(threads)}); "
          f"targets: native >= {TARGET_X_BEST_PEER:g}x best peer on "
          + ", ".join(f"{n}x{m}" for n, m in TARGET_SHAPES) + "; capacity=K faster than materialised)")
    header = ["shape", "method", "ms/batch", "best peer", "peer ms", "x best peer", "x scipy loop",
              "x materialised", "target", "note"]
    table = []
    for r in rows:
        target = "; ".join(f"{t['target']}: {'yes' if t['met'] else 'NO'}" for t in r["targets"]) or "-"
        table.append([
            r["shape"], r["method"].removeprefix("hybridmatch "), _fmt(r["ms"], ".2f"), r["best_peer"] or "-",
            _fmt(r["best_peer_ms"], ".2f"), _fmt(r["x_best_peer"], ".2f"), _fmt(r["x_scipy_loop"], ".2f"),
            _fmt(r["x_materialised"], ".2f"), target, r["note"],
        ])
    _print_rows(header, table, numeric={2, 4, 5, 6, 7}, groups=[r["shape"] for r in rows])


# ---------------------------------------------------------------------------
# Output


def machine_info(args: argparse.Namespace) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threads": args.threads,
        "scipy": scipy.__version__,
        "lap": getattr(lap, "__version__", None) if lap is not None else None,
        "lapx": args.lapx_info.get("lap") if args.lapx_info else None,
        "lapx_python": args.lapx_python,
        "lapx_note": args.lapx_note,
        "hybridmatch_backends": available_backends(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # Other work on the machine skews timings; a load near the CPU count is a warning sign.
        "load_average_at_start": _load_average(),
    }
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_rows(header: list[str], rows: list[list[str]], numeric: set[int], groups: list[str]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(header).rstrip())
    print("  ".join("-" * w for w in widths))
    previous = None
    for group, row in zip(groups, rows):
        if previous is not None and group != previous:
            print()
        previous = group
        print(line(row).rstrip())


def print_table(records: list[Record], baseline: str = "x scipy loop") -> None:
    header = ["shape", "method", "ms/batch", "min ms", "reps", baseline, "rel gap", "same total", "note"]
    rows = []
    for r in records:
        same = "-" if r.same_total is None else ("yes" if r.same_total else "NO")
        rows.append([
            r.shape, r.method, _fmt(r.ms_median, ".2f"), _fmt(r.ms_min, ".2f"), str(r.repeats),
            _fmt(r.speedup_vs_scipy_loop, ".2f"), _fmt(r.rel_gap, ".1e"), same, r.note,
        ])
    _print_rows(header, rows, numeric={2, 3, 4, 5, 6}, groups=[r.shape for r in records])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="problems per batch (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method (default 5)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for hybridmatch native (torch.set_num_threads), the scipy "
                             "thread pool and lapx's n_threads (default 2)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                        help="NxM or NxGxK (G GT repeated K times); default: " + " ".join(DEFAULT_SHAPES))
    parser.add_argument("--lapx-python", default=None, metavar="PATH",
                        help=f"a Python whose `lap` is lapx, for the lapx peer (default: ${LAPX_ENV}, "
                             "else .venv-lapx/bin/python at the repository root, else skipped)")
    parser.add_argument("--include-slow", action="store_true",
                        help="also time hybridmatch's lap backend beyond 900x30 (seconds per batch)")
    parser.add_argument("--json", type=Path, default=None, help="write the records and machine info here")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 2, 1 repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lapjv-cap", type=float, default=2.0,
                        help="skip lap.lapjv when one problem takes longer (seconds, default 2)")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the GPU section (benchmarks/gpu_check.sh runs this on the GPU machine)")
    parser.add_argument("--gpu-dry-run", action="store_true",
                        help="run the GPU section's code on the CPU (no GPU numbers; its cuda methods fail)")
    parser.add_argument("--method-budget", type=float, default=60.0,
                        help="seconds of timed repeats per method and shape before the repeats "
                             "are cut (at least one is kept; default 60)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeat = 2, 1
    if args.batch < 1 or args.repeat < 1 or args.threads < 1:
        parser.error(f"--batch, --repeat and --threads must be >= 1, got {args.batch}, {args.repeat}, {args.threads}")
    if args.shapes is None:
        args.shapes = [parse_shape(s) for s in DEFAULT_SHAPES]
    return args


def _warm_backends() -> None:
    """Build native backends (compiled on first use) before any clock runs."""
    tiny = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]])
    for backend in cpu_backends():
        batched_linear_sum_assignment(tiny, backend=backend)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.gpu_only:  # no CPU section: no lapx worker either
        args.lapx_info, args.lapx_note, args.lapx_python = None, "", None
    else:
        args.lapx_info, args.lapx_note = lapx_info(find_lapx_python(args.lapx_python))
        args.lapx_python = None if args.lapx_info is None else find_lapx_python(args.lapx_python)
    _warm_backends()
    info = machine_info(args)
    lapx_text = f"lapx {info['lapx']}" if info["lapx"] else "no lapx"
    print(f"batch {args.batch}, {args.repeat} repeats (median, 1 warm-up), {_threads(args.threads)}; "
          f"{info['cpu_count']} CPUs, torch {info['torch']}, scipy {info['scipy']}, lap {info['lap']}, "
          f"{lapx_text}")
    if args.lapx_note:
        print(args.lapx_note)
    records: list[Record] = []
    summary: list[dict] = []
    if not args.gpu_only:
        for i, shape in enumerate(args.shapes):
            records.extend(bench_shape(shape, args, seed=args.seed + 1000 * i))
        print_table(records)
        summary = summarise(records, args.shapes, args.threads)
        print_summary(summary, args.threads)
        print()

    gpu_note = gpu_unavailable_reason()
    gpu_device = "cuda"
    if gpu_note is not None and args.gpu_dry_run:
        gpu_note, gpu_device = "GPU section dry run on the CPU: no GPU numbers", "cpu"
        info["cuda_device"] = "cpu (dry run)"
    gpu_records: list[Record] = []
    if gpu_note is None or gpu_device == "cpu":
        for i, shape in enumerate(args.shapes):
            gpu_records.extend(bench_gpu_shape(shape, args, seed=args.seed + 1000 * i, device=gpu_device))
    if gpu_records:
        print(f"GPU ({info['cuda_device']}): ms per batch, synchronised; "
              "speed-up over the scipy loop incl. host copy")
        print_table(gpu_records, baseline="x scipy+copy")
    else:
        print(gpu_note + " (no GPU numbers measured)")
    info["load_average_at_end"] = _load_average()
    print(f"load average (1, 5, 15 min): {info['load_average_at_start']} at start, "
          f"{info['load_average_at_end']} at end, on {info['cpu_count']} CPUs")

    failures = [r for r in records + gpu_records if r.ms_median is not None and not r.same_total]
    if gpu_device == "cuda" and gpu_note is None:
        # A cuda method that raised is a failure of the GPU run, not a skip.
        failures += [r for r in gpu_records if r.method.startswith("hybridmatch cuda") and r.ms_median is None]
    if args.json is not None:
        payload = {
            "machine": info,
            "settings": {"batch": args.batch, "repeat": args.repeat, "seed": args.seed, "threads": args.threads,
                         "shapes": [s.label for s in args.shapes], "max_rel_gap": MAX_REL_GAP,
                         "include_slow": args.include_slow, "method_budget_s": args.method_budget},
            "records": [asdict(r) for r in records],
            "summary": {
                "peers": [f"scipy {_threads(args.threads)}", f"lapx lapjvh_batch ({_threads(args.threads)})"],
                "target_shapes": [f"{n}x{m}" for n, m in TARGET_SHAPES],
                "target_x_best_peer": TARGET_X_BEST_PEER,
                "rows": summary,
            },
            "gpu": {"note": gpu_note, "device": gpu_device if gpu_records else None,
                    "records": [asdict(r) for r in gpu_records]},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if failures:
        for r in failures:
            print(f"CHECK FAILED: {r.shape} {r.method}: valid={r.valid} rel_gap={r.rel_gap}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
