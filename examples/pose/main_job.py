"""The pose comparison (``make pose-demo``): one-to-one vs the hybrid branch, over several seeds.

Trains the tiny keypoint DETR (:mod:`examples.pose.model`) on the dense synthetic stick
figures (:mod:`examples.pose.synthetic`), twice per seed: with one-to-one matching only and
with H-DETR's hybrid branch (20 one-to-one + 60 one-to-many queries, K = 5), for several
seeds in parallel worker processes (one thread each). Each pair starts from identical
weights (the branch only adds its one-to-many query rows) and reads the same images in the
same order. After every epoch both are evaluated with pycocotools' keypoint AP (OKS, the
figure's sigmas) on the validation images, the branch on its 20 one-to-one queries: the
same query budget and the same deployable model as the one-to-one run.

It prints the table of :func:`examples.detection.main_job.format_report` (mean [min, max]
over seeds at an early epoch and at the end, and the paired per-seed difference) and writes
``pose_ap.png`` and ``pose.json`` to ``--output-dir``.

    python -m examples.pose.main_job [--seeds 0 1 2] [--epochs 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from examples.detection.main_job import format_report, plot_curves, summarize

__all__ = ["LINES", "main"]

#: The curves reported: (name, scheme of the run, key of its evaluation).
LINES: tuple[tuple[str, str, str], ...] = (("one2one", "one2one", "coco_kp"), ("branch o2o", "branch", "coco_kp"))

CAVEAT = """\
What this can and cannot show. A 2+2-layer, 64-wide model trained for a few CPU minutes on
64-pixel stick figures: absolute keypoint APs are low and move between seeds, so read the
min-max and the paired difference, not one mean. "branch o2o" is the deployable model (the
same 20 one-to-one queries as one2one, no NMS); the one-to-many queries only train."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("examples.pose.main_job", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one pair of runs per seed")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--early-epoch", type=int, default=None, help="the early column (default: a quarter of --epochs)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel, 1 thread each")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/pose-demo"))
    g = p.add_argument_group("synthetic data (examples.pose.synthetic)")
    g.add_argument("--train-images", type=int, default=256)
    g.add_argument("--val-images", type=int, default=64)
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--max-figures", type=int, default=10, help="most figures per image (5.5 on average at 10)")
    g = p.add_argument_group("model and training")
    g.add_argument("--num-queries-one2one", type=int, default=20)
    g.add_argument("--num-queries-one2many", type=int, default=60)
    g.add_argument("--k", type=int, default=5, help="GT copies of the one-to-many group")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    return p


def _train_args(scheme: str, seed: int, options: argparse.Namespace) -> list[str]:
    """The :mod:`.train` command line of one run."""
    return [
        "--data", "synthetic", "--data-path", str(options.output_dir / "data"), "--scheme", scheme,
        "--config", "tiny", "--epochs", str(options.epochs), "--batch-size", str(options.batch_size),
        "--lr", str(options.lr), "--k", str(options.k),
        "--num-queries-one2one", str(options.num_queries_one2one),
        "--num-queries-one2many", str(options.num_queries_one2many),
        "--synthetic-train-images", str(options.train_images), "--synthetic-val-images", str(options.val_images),
        "--synthetic-size", str(options.image_size), "--synthetic-max-figures", str(options.max_figures),
        "--seed", str(seed), "--output-dir", str(options.output_dir / "runs" / f"{scheme}-seed{seed}"),
        "--device", "cpu", "--eval-every", "1", "--quiet",
    ]


def _worker(argv: list[str]) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    from .engine import cleanup_distributed, get_args_parser, run

    try:
        return run(get_args_parser().parse_args(argv))
    finally:
        cleanup_distributed()


def _prepare_data(options: argparse.Namespace) -> float:
    """Generate the synthetic splits once (before the workers start); return figures per image."""
    from .engine import synthetic_ready
    from .synthetic import generate_synthetic_keypoints

    root = options.output_dir / "data"
    for split, count in (("train", options.train_images), ("val", options.val_images)):
        if not synthetic_ready(root, split, count, options.image_size, options.max_figures):
            generate_synthetic_keypoints(root, num_images=count, image_size=options.image_size,
                                         max_figures=options.max_figures, seed=0, split=split)
    data = json.loads((root / "annotations" / "person_keypoints_train.json").read_text())
    return len(data["annotations"]) / len(data["images"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; return its summary (:func:`examples.detection.main_job.summarize`) and curves."""
    parser = _parser()
    options = parser.parse_args(argv)
    if options.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {options.epochs}")
    early = options.early_epoch if options.early_epoch is not None else max(1, math.ceil(options.epochs / 4))
    if not 1 <= early <= options.epochs:
        parser.error(f"--early-epoch must be in 1..{options.epochs}, got {early}")
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}")
    started = time.perf_counter()
    options.output_dir.mkdir(parents=True, exist_ok=True)
    per_image = _prepare_data(options)
    print(f"== {len(options.seeds)} seeds x (one2one, branch), {options.epochs} epochs of {options.train_images} "
          f"images ({per_image:.1f} figures per image, at most {options.max_figures}); {options.workers} "
          f"parallel runs of 1 thread", file=sys.stderr, flush=True)
    jobs = [(scheme, seed) for seed in options.seeds for scheme in ("branch", "one2one")]
    histories: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=options.workers, mp_context=get_context("spawn")) as pool:
        futures = {job: pool.submit(_worker, _train_args(*job, options)) for job in jobs}
        for job, future in futures.items():
            histories[job] = future.result()
            if not options.quiet:
                ap = " ".join(f"{100 * r['coco_kp']['AP']:.1f}" for r in histories[job])
                print(f"   {job[0]:8s} seed {job[1]}: AP per epoch {ap}", file=sys.stderr, flush=True)
    curves = {name: {seed: [r[key]["AP"] for r in histories[(scheme, seed)]] for seed in options.seeds}
              for name, scheme, key in LINES}
    summary = summarize(curves, early)
    seconds = time.perf_counter() - started
    out = options.output_dir
    plot_curves(summary, out / "pose_ap.png",
                title=f"tiny keypoint DETR, synthetic figures (<= {options.max_figures} per image), "
                      f"seeds {options.seeds}")
    summary.update({"curves": curves, "seconds": round(seconds, 1), "figures_per_image": per_image,
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}})
    (out / "pose.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_report(summary, val_images=options.val_images).replace("COCO AP", "COCO keypoint AP", 1))
    print()
    print(CAVEAT)
    print(f"\nwrote {out / 'pose_ap.png'} and {out / 'pose.json'}; {seconds:.0f}s in all")
    return summary


if __name__ == "__main__":
    main()
