"""Pilot study: on which CPU-sized setting can hybrid matching's mechanism act?

Each *cell* is one setting of the tiny H-Deformable-DETR on the synthetic shapes set (image
size, objects per image, one-to-one queries Q1, one-to-many queries Q2, K, lambda, epochs).
Per seed a cell trains a one-to-one run and a hybrid-branch run from identical initial
weights on the same images in the same order (``python -m examples.detection.train``, one
thread each); one-to-one runs depend only on the data and Q1, so cells that differ in the
branch alone share them. The readout, fixed before any result was seen (see
``benchmarks/PILOT.md``):

* AP (COCO, %) of the one-to-one queries (the deployable detector, no NMS) on 200
  validation images;
* early: after epoch E/2; end: the mean over the last three epochs (E-2, E-1, E);
* per seed the paired difference branch - one2one, then its mean, a 95 % paired-t
  interval and the number of seeds where the branch is ahead.

Every finished run is written at once to ``benchmarks/pilot/runs/<run>.json`` (its settings,
AP at the evaluated epochs, CPU seconds); an interrupted study resumes where it stopped
(finished runs are skipped, a run with a checkpoint continues from it).

    python benchmarks/pilot.py                           # stage 1: every cell, seeds 0-2
    python benchmarks/pilot.py --cells c05 --seeds 3 4 5 6 7
    python benchmarks/pilot.py --report                  # the table of benchmarks/PILOT.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

__all__ = ["CELLS", "Cell", "main", "paired_summary", "report"]

RESULTS = ROOT / "benchmarks" / "pilot" / "runs"
VAL_IMAGES = 200
TRAIN_IMAGES = 160
STRIDES = (8, 16)  # the tiny backbone's feature maps


@dataclass(frozen=True)
class Cell:
    """One setting of the sweep; ``name`` is for the table only."""

    name: str
    size: int = 128
    max_objects: int = 4
    q1: int = 30
    q2: int = 90
    k: int = 6
    lam: float = 1.0
    epochs: int = 12
    dec_layers: int = 2
    scheme: str = "branch"
    note: str = ""

    @property
    def baseline_queries(self) -> int:
        """Queries of the paired one-to-one run: the branch's Q1 (what it deploys), or the one group
        of Q1 + Q2 that the epoch and layer schemes train and deploy (the paper's baseline for them)."""
        return self.q1 if self.scheme == "branch" else self.q1 + self.q2

    def _model(self) -> str:
        return "" if self.dec_layers == 2 else f"-d{self.dec_layers}"

    def one2one_key(self, seed: int) -> str:
        return (f"one2one-s{self.size}-o{self.max_objects}-q{self.baseline_queries}{self._model()}-e{self.epochs}"
                f"-seed{seed}")

    def branch_key(self, seed: int) -> str:
        """The key of the hybrid run (whatever its scheme)."""
        return (f"{self.scheme}-s{self.size}-o{self.max_objects}-q{self.q1}+{self.q2}-k{self.k}-l{self.lam:g}"
                f"{self._model()}-e{self.epochs}-seed{seed}")

    @property
    def early_epoch(self) -> int:
        return self.epochs // 2

    @property
    def end_epochs(self) -> tuple[int, ...]:
        return (self.epochs - 2, self.epochs - 1, self.epochs)

    def positions(self, side: int) -> int:
        return sum(math.ceil(side / s) ** 2 for s in STRIDES)


_SPARSE_128 = Cell("", size=128, max_objects=4)
_SPARSE_192 = Cell("", size=192, max_objects=4)
#: The sweep, in the order it runs. c01 is the previous demo's setting.
CELLS: tuple[Cell, ...] = (
    replace(_SPARSE_192, name="c05", note="192 px, sparse"),
    replace(_SPARSE_128, name="c02", note="128 px, sparse"),
    replace(_SPARSE_192, name="c15", lam=0.25, note="lambda 0.25"),
    replace(_SPARSE_192, name="c16", scheme="layer", k=10, note="hybrid layer (1 of 2 layers one-to-many)"),
    replace(_SPARSE_192, name="c17", scheme="epoch", k=10, note="hybrid epoch (first 2/3 one-to-many)"),
    replace(_SPARSE_128, name="c13", epochs=24, note="24 epochs"),
    Cell("c01", size=128, max_objects=20, note="previous demo: dense, few positions"),
    replace(_SPARSE_192, name="c07", lam=0.5, note="lambda 0.5"),
    replace(_SPARSE_192, name="c06", q2=150, note="Q2 = 5 Q1"),
    Cell("c04", size=192, max_objects=20, note="192 px, dense"),
    replace(_SPARSE_128, name="c03", q2=150, note="Q2 = 5 Q1"),
    replace(_SPARSE_192, name="c08", lam=2.0, note="lambda 2"),
    replace(_SPARSE_192, name="c09", k=3, note="K 3"),
    replace(_SPARSE_192, name="c10", k=10, note="K 10"),
    replace(_SPARSE_192, name="c11", q1=20, q2=100, note="Q1 20, Q2 = 5 Q1"),
    Cell("c12", size=256, max_objects=4, q2=150, note="256 px, Q2 = 5 Q1"),
    replace(_SPARSE_192, name="c14", dec_layers=6, note="6 decoder layers (H-DETR's)"),
)


def _train_argv(cell: Cell, scheme: str, seed: int, out: Path, data: Path) -> list[str]:
    evaluated = sorted({cell.early_epoch, *cell.end_epochs})
    argv = [
        "--data", "synthetic", "--data-path", str(data), "--scheme", scheme, "--config", "tiny",
        "--epochs", str(cell.epochs), "--batch-size", "4", "--lr", "4e-4",
        "--num-queries-one2one", str(cell.q1 if scheme != "one2one" else cell.baseline_queries),
        "--num-queries-one2many", str(cell.q2 if scheme != "one2one" else 0),
        "--k", str(cell.k), "--lambda-one2many", str(cell.lam), "--dec-layers", str(cell.dec_layers),
        "--synthetic-train-images", str(TRAIN_IMAGES), "--synthetic-val-images", str(VAL_IMAGES),
        "--synthetic-size", str(cell.size), "--synthetic-classes", "4",
        "--synthetic-max-objects", str(cell.max_objects), "--seed", str(seed),
        "--output-dir", str(out), "--device", "cpu", "--quiet",
        "--eval-epochs", *map(str, evaluated),
    ]
    if (out / "checkpoint.pth").is_file():
        argv += ["--resume", str(out / "checkpoint.pth")]
    return argv


def _data_dir(cell: Cell, work: Path) -> Path:
    return work / "data" / f"s{cell.size}-o{cell.max_objects}"


def _prepare_data(cells: Iterable[Cell], work: Path) -> None:
    from examples.detection.synthetic import generate_synthetic_coco

    for cell in cells:
        root = _data_dir(cell, work)
        for split, count in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
            if not (root / "annotations" / f"instances_{split}.json").is_file():
                generate_synthetic_coco(root, num_images=count, image_size=(cell.size, cell.size), num_classes=4,
                                        max_objects=cell.max_objects, seed=0, split=split)


def _run(cell: Cell, scheme: str, seed: int, work: Path) -> dict[str, Any]:
    key = cell.one2one_key(seed) if scheme == "one2one" else cell.branch_key(seed)
    out = work / "runs" / key
    argv = _train_argv(cell, scheme, seed, out, _data_dir(cell, work))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "output.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "examples.detection.train", *argv], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        # wait4: this child's own CPU time (concurrent runs share RUSAGE_CHILDREN).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{key} failed (exit {proc.returncode}):\n{(out / 'output.txt').read_text()[-3000:]}")
    annotations = json.loads((_data_dir(cell, work) / "annotations" / "instances_train.json").read_text())
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    ap = {r["epoch"] + 1: 100 * r["coco"]["AP"] for r in records if "coco" in r}
    result = {
        "key": key, "scheme": scheme, "seed": seed,
        "settings": {k: v for k, v in asdict(cell).items() if k not in ("name", "note")},
        "ap": {str(e): round(v, 3) for e, v in sorted(ap.items())},
        "train_seconds": round(sum(r.get("train_time_s", 0.0) for r in records), 1),
        "eval_seconds": round(sum(r.get("eval_time_s", 0.0) for r in records), 1),
        "wall_seconds": round(time.time() - started, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "objects_per_image": round(len(annotations["annotations"]) / len(annotations["images"]), 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f"{key}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(RESULTS / f"{key}.json")
    (out / "checkpoint.pth").unlink(missing_ok=True)
    return result


def _load(key: str) -> dict[str, Any] | None:
    path = RESULTS / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _t_quantile_975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_summary(differences: Sequence[float]) -> dict[str, float]:
    """Mean, 95 % paired-t interval and sign count of per-seed differences (needs >= 2)."""
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1)) if n > 1 else float("nan")
    half = _t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "ahead": sum(d > 0 for d in differences)}


def _readout(result: Mapping[str, Any], epochs: Iterable[int]) -> float | None:
    values = [result["ap"].get(str(e)) for e in epochs]
    return None if any(v is None for v in values) else sum(values) / len(values)


def cell_summary(cell: Cell) -> dict[str, Any]:
    """Per-cell numbers over the seeds that have both runs finished."""
    rows = []
    for seed in range(100):
        a, b = _load(cell.one2one_key(seed)), _load(cell.branch_key(seed))
        if a and b:
            rows.append((seed, a, b))
    out: dict[str, Any] = {"cell": cell.name, "seeds": [s for s, _, _ in rows]}
    if not rows:
        return out
    for label, epochs in (("early", (cell.early_epoch,)), ("end", cell.end_epochs)):
        one = [_readout(a, epochs) for _, a, _ in rows]
        two = [_readout(b, epochs) for _, _, b in rows]
        out[label] = {"one2one": sum(one) / len(one), "branch": sum(two) / len(two),
                      "paired": paired_summary([y - x for x, y in zip(one, two)])}
    out["cpu_pair_s"] = sum(a["cpu_seconds"] + b["cpu_seconds"] for _, a, b in rows) / len(rows)
    out["objects"] = rows[0][1]["objects_per_image"]
    return out


def _interval(p: Mapping[str, float]) -> str:
    if p["n"] < 2:
        return f"{p['mean']:+.1f} (1 seed)"
    return f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]"


def report(cells: Sequence[Cell] = CELLS) -> str:
    """The Markdown table of every cell that has at least one finished pair."""
    head = ("| cell | scheme | setting | size | obj/img (max) | Q1 + Q2 | K | lambda | dec layers | epochs | positions / queries "
            "(min scale, eval) | seeds | one2one end | hybrid end | end: hybrid - one2one [95 % CI] | ahead "
            "| early: hybrid - one2one [95 % CI] | ahead | CPU s per pair |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cell in cells:
        s = cell_summary(cell)
        if not s["seeds"]:
            continue
        queries = cell.q1 + cell.q2
        low = max(16, (3 * cell.size // 4) // 8 * 8)
        ratio = f"{cell.positions(low) / queries:.1f}, {cell.positions(cell.size) / queries:.1f}"
        end, early = s["end"], s["early"]
        lines.append(
            f"| {cell.name} | {cell.scheme} | {cell.note} | {cell.size} | {s['objects']:.1f} ({cell.max_objects}) | {cell.q1} + {cell.q2} | {cell.k} | "
            f"{cell.lam:g} | {cell.dec_layers} | {cell.epochs} | {ratio} | {len(s['seeds'])} | {end['one2one']:.1f} | "
            f"{end['branch']:.1f} | {_interval(end['paired'])} | {end['paired']['ahead']}/{len(s['seeds'])} | "
            f"{_interval(early['paired'])} | {early['paired']['ahead']}/{len(s['seeds'])} | "
            f"{s['cpu_pair_s']:.0f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("benchmarks/pilot.py", description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=None, help="cell names (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "pilot")
    p.add_argument("--report", action="store_true", help="print the table and exit")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    by_name = {c.name: c for c in CELLS}
    unknown = sorted(set(args.cells or ()) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown cells {unknown}; known: {sorted(by_name)}")
    cells = [by_name[n] for n in args.cells] if args.cells else list(CELLS)
    if args.report:
        print(report(cells))
        return
    _prepare_data(cells, args.work_dir)
    jobs: dict[str, tuple[Cell, str, int]] = {}
    for cell in cells:
        for seed in args.seeds:
            for scheme in (cell.scheme, "one2one"):
                key = cell.one2one_key(seed) if scheme == "one2one" else cell.branch_key(seed)
                if key not in jobs and _load(key) is None:
                    jobs[key] = (cell, scheme, seed)
    print(f"pilot: {len(jobs)} runs to do on {args.workers} workers", file=sys.stderr, flush=True)
    started = time.time()
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(_run, *job, args.work_dir): key for key, job in jobs.items()}
        for done, future in enumerate(as_completed(futures), 1):
            key = futures[future]
            try:
                r = future.result()
            except Exception as error:  # report and go on: the other cells still count
                print(f"[{done}/{len(jobs)}] {key}: FAILED {error}", file=sys.stderr, flush=True)
                continue
            print(f"[{done}/{len(jobs)}] {key}: AP {r['ap']} ({r['wall_seconds']:.0f}s; "
                  f"{time.time() - started:.0f}s in all)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
