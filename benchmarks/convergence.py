"""Convergence of the four training schemes: COCO AP after every epoch on the dense synthetic set.

Trains the tiny H-Deformable-DETR with ``one2one`` (Deformable-DETR), ``branch``, ``epoch`` and
``layer`` (H-DETR's three hybrid schemes) for each seed, evaluating after every epoch, in
parallel worker processes of one thread each, on the setting of the demo
(:mod:`examples.detection.task`, ``COMPARISON``): up to 20 objects per image, 30 one-to-one + 90
one-to-many queries (one group of 120 for ``epoch`` / ``layer``). Each seed's runs start
from the same weights (the branch adds only its one-to-many query rows). Writes
``convergence.json`` (every run's per-epoch COCO stats and losses, the mean/min/max AP curve
per scheme, and the branch's one-to-many group with NMS as ``branch o2m+NMS``) and
``convergence.png`` (AP per epoch, mean over seeds, min-max band).

    python benchmarks/convergence.py --seeds 0 1 2 --epochs 12 --output-dir out/
    python benchmarks/convergence.py --quick      # a smoke test, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

# A script next to the repository's examples/: make them importable when run by path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.common.comparison import prepare_data, train_worker  # noqa: E402
from examples.detection.criterion import SCHEMES  # noqa: E402
from examples.detection.task import TASK  # noqa: E402

__all__ = ["main", "plot"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("benchmarks/convergence.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-images", type=int, default=160)
    p.add_argument("--val-images", type=int, default=80)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-objects", type=int, default=20)
    p.add_argument("--num-queries-one2one", type=int, default=30)
    p.add_argument("--num-queries-one2many", type=int, default=90)
    p.add_argument("--k", type=int, default=None,
                   help="GT copies for every hybrid scheme (default: the paper's, branch 6, epoch/layer 10)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs in parallel, one thread each")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/convergence"))
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 epochs, 8 training and 4 validation images of 64x64")
    return p


def _run_args(options: argparse.Namespace, scheme: str, seed: int) -> list[str]:
    out = options.output_dir / "runs" / f"{scheme}-seed{seed}"
    return [
        "--data", "synthetic", "--data-path", str(options.output_dir / "data"), "--scheme", scheme,
        "--config", "tiny", "--epochs", str(options.epochs), "--batch-size", str(options.batch_size),
        "--lr", str(options.lr), "--num-queries-one2one", str(options.num_queries_one2one),
        "--num-queries-one2many", str(options.num_queries_one2many),
        "--synthetic-train-images", str(options.train_images),
        "--synthetic-val-images", str(options.val_images), "--synthetic-size", str(options.image_size),
        "--synthetic-max-objects", str(options.max_objects), "--device", "cpu",
        "--seed", str(seed), "--output-dir", str(out), "--eval-every", "1", "--quiet",
        *(["--eval-one2many"] if scheme == "branch" else []),
        *(["--k", str(options.k)] if options.k is not None else []),
    ]


def plot(summary: dict[str, Any], path: Path) -> None:
    """AP (percent) per epoch, one line per scheme (mean over seeds) with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for scheme, curves in summary["ap_per_epoch"].items():
        epochs = list(range(1, len(curves["mean"]) + 1))
        axis.plot(epochs, [100 * v for v in curves["mean"]], marker="o", label=scheme)
        if len(curves["runs"]) > 1:
            axis.fill_between(epochs, [100 * v for v in curves["min"]], [100 * v for v in curves["max"]], alpha=0.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel("COCO AP (%)")
    axis.set_title(f"tiny H-Deformable-DETR, synthetic shapes, seeds {summary['seeds']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every scheme and seed; write JSON and PNG; return the summary."""
    options = _parser().parse_args(argv)
    if options.quick:
        options.epochs, options.train_images, options.val_images, options.image_size = 2, 8, 4, 64
        options.batch_size, options.seeds, options.max_objects = 2, options.seeds[:1], 6
    options.output_dir.mkdir(parents=True, exist_ok=True)
    # Generate the data once, before the workers start (the runs skip ready sets).
    prepare_data(TASK, _run_args(options, options.schemes[0], options.seeds[0]))
    jobs = [(scheme, seed) for seed in options.seeds for scheme in options.schemes]
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=options.workers, mp_context=get_context("spawn")) as pool:
        started = time.perf_counter()
        futures = {job: pool.submit(train_worker, "examples.detection.task:TASK", f"{job[0]} seed {job[1]}",
                                    _run_args(options, *job)) for job in jobs}
        for (scheme, seed), future in futures.items():
            history = future.result()
            runs.append({"scheme": scheme, "seed": seed, "history": history,
                         "train_eval_seconds": round(sum(r["train_time_s"] + r.get("eval_time_s", 0)
                                                         for r in history), 1)})
            print(f"{scheme:8s} seed {seed}: AP per epoch "
                  + " ".join(f"{100 * r['coco']['AP']:.1f}" for r in history)
                  + f" ({time.perf_counter() - started:.0f}s since start)", file=sys.stderr, flush=True)
    curves: dict[str, Any] = {}
    lines = [(scheme, scheme, "coco") for scheme in options.schemes]
    if "branch" in options.schemes:
        lines.append(("branch o2m+NMS", "branch", "coco_one2many_nms"))
    for name, scheme, key in lines:
        per_run = [[r[key]["AP"] for r in run_["history"]] for run_ in runs if run_["scheme"] == scheme]
        columns = list(zip(*per_run))
        curves[name] = {"runs": per_run, "mean": [sum(c) / len(c) for c in columns],
                        "min": [min(c) for c in columns], "max": [max(c) for c in columns]}
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "seeds": options.seeds,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads_per_run": 1, "workers": options.workers},
        "ap_per_epoch": curves,
        "runs": runs,
    }
    (options.output_dir / "convergence.json").write_text(json.dumps(summary, indent=1))
    plot(summary, options.output_dir / "convergence.png")
    print("final AP (mean over seeds): " + ", ".join(
        f"{scheme} {100 * curve['mean'][-1]:.1f}" for scheme, curve in curves.items()))
    print(f"wrote {options.output_dir / 'convergence.json'} and {options.output_dir / 'convergence.png'}")
    return summary


if __name__ == "__main__":
    main()
