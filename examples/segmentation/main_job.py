"""The segmentation demo (``make segmentation-demo``): one-to-one vs the hybrid branch, several seeds.

Trains the tiny segmentation DETR (:mod:`.model`: 2+2 layers, 64 wide, 64-pixel images) on a
dense synthetic shapes set with instance masks (:mod:`.synthetic`), twice per seed: with
one-to-one matching only, and with H-DETR's hybrid branch (30 one-to-one + 90 one-to-many
queries, K = 6, masks shared by the K copies); mask logits at stride 2 (32 x 32). Each pair
starts from identical weights (the branch only adds its one-to-many query rows) and reads the
same images in the same order.
The runs go in parallel worker processes of one thread each.

After every epoch it scores the 30 one-to-one queries (``segm`` AP, pycocotools, on RLE
masks) and prints the detection demo's table (:func:`examples.detection.main_job.format_report`:
mean and min-max over seeds at an early epoch and at the end, and the paired difference),
and writes ``segmentation_ap.png`` and ``segmentation.json`` to ``--output-dir``.

    python -m examples.segmentation.main_job [--seeds 0 1 2] [--epochs 12] [--workers 2]
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

#: The curves the demo reports: (name, scheme of the run, key of its evaluation).
LINES: tuple[tuple[str, str, str], ...] = (("one2one", "one2one", "segm"), ("branch o2o", "branch", "segm"))

CAVEAT = """\
What this can and cannot show. A 2+2-layer, 64-wide model on 64-pixel images for a few CPU
minutes: absolute mask APs are low and move between seeds, so read the min-max and the paired
difference, not one mean. "branch o2o" is the deployable model (the same 30 queries as
one2one). H-DETR and MaskDINO report gains at COCO scale; this run cannot reproduce or refute them."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("examples.segmentation.main_job", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--early-epoch", type=int, default=None, help="default: half of --epochs")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--output-dir", type=Path, default=Path("outputs/segmentation-demo"))
    p.add_argument("--train-images", type=int, default=160)
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--max-objects", type=int, default=20)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--num-queries-one2one", type=int, default=30)
    p.add_argument("--num-queries-one2many", type=int, default=90)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--mask-stride", type=int, choices=(2, 4), default=2,
                   help="stride of the mask logits (2 here: 32 x 32 masks for the 64-pixel images)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--quiet", action="store_true")
    return p


def _train_args(scheme: str, seed: int, options: argparse.Namespace) -> list[str]:
    """The :mod:`.train` command line of one run."""
    return [
        "--data", "synthetic", "--data-path", str(options.output_dir / "data"), "--scheme", scheme,
        "--config", "tiny", "--epochs", str(options.epochs), "--batch-size", str(options.batch_size),
        "--lr", str(options.lr), "--k", str(options.k), "--image-size", str(options.image_size),
        "--mask-stride", str(options.mask_stride),
        "--num-queries-one2one", str(options.num_queries_one2one),
        "--num-queries-one2many", str(options.num_queries_one2many),
        "--synthetic-train-images", str(options.train_images), "--synthetic-val-images", str(options.val_images),
        "--synthetic-classes", str(options.num_classes), "--synthetic-max-objects", str(options.max_objects),
        "--data-seed", str(options.data_seed), "--seed", str(seed),
        "--output-dir", str(options.output_dir / "runs" / f"{scheme}-seed{seed}"),
        "--device", "cpu", "--eval-every", "1", "--quiet",
    ]


def _worker(argv: list[str]) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)  # one thread per run: the runs, not the threads, use the cores
    import warnings

    warnings.filterwarnings("ignore", message=".*copies of its ground truth go unmatched.*")
    from .engine import cleanup_distributed, get_args_parser, run

    try:
        return run(get_args_parser().parse_args(argv))
    finally:
        cleanup_distributed()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; return its summary (:func:`examples.detection.main_job.summarize`) with the curves."""
    parser = _parser()
    options = parser.parse_args(argv)
    if options.epochs < 1 or options.workers < 1:
        parser.error("--epochs and --workers must be >= 1")
    early = options.early_epoch if options.early_epoch is not None else max(1, math.ceil(options.epochs / 2))
    if not 1 <= early <= options.epochs:
        parser.error(f"--early-epoch must be in 1..{options.epochs}, got {early}")
    started = time.perf_counter()
    out = options.output_dir
    out.mkdir(parents=True, exist_ok=True)
    from .synthetic import generate_synthetic_segmentation, synthetic_ready

    size = (options.image_size, options.image_size)
    for split, count in (("train", options.train_images), ("val", options.val_images)):
        if not synthetic_ready(out / "data", split, count, size, options.num_classes, options.max_objects,
                               options.data_seed):
            generate_synthetic_segmentation(out / "data", num_images=count, image_size=size,
                                            num_classes=options.num_classes, max_objects=options.max_objects,
                                            seed=options.data_seed, split=split)
    objects = json.loads((out / "data" / "annotations" / "instances_train.json").read_text())
    per_image = len(objects["annotations"]) / len(objects["images"])
    print(f"== {len(options.seeds)} seeds x (one2one, branch), {options.epochs} epochs of {options.train_images} "
          f"images ({per_image:.1f} objects per image, at most {options.max_objects}); {options.workers} "
          f"parallel runs of 1 thread", file=sys.stderr, flush=True)
    jobs = [(scheme, seed) for seed in options.seeds for scheme in ("branch", "one2one")]  # longest first
    histories: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=options.workers, mp_context=get_context("spawn")) as pool:
        futures = {job: pool.submit(_worker, _train_args(*job, options)) for job in jobs}
        for job, future in futures.items():
            histories[job] = future.result()
            if not options.quiet:
                ap = " ".join(f"{100 * r['segm']['AP']:.1f}" for r in histories[job])
                print(f"   {job[0]:8s} seed {job[1]}: segm AP per epoch {ap}", file=sys.stderr, flush=True)
    curves = {name: {seed: [r[key]["AP"] for r in histories[(scheme, seed)]] for seed in options.seeds}
              for name, scheme, key in LINES}
    summary = summarize(curves, early)
    seconds = time.perf_counter() - started
    plot_curves(summary, out / "segmentation_ap.png",
                title=f"tiny segmentation DETR, synthetic shapes (<= {options.max_objects} per image), "
                      f"seeds {options.seeds}")
    summary.update({"curves": curves, "seconds": round(seconds, 1), "objects_per_image": per_image,
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}})
    (out / "segmentation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_report(summary, val_images=options.val_images).replace("COCO AP", "COCO segm AP", 1))
    print()
    print(CAVEAT)
    print(f"\nwrote {out / 'segmentation_ap.png'} and {out / 'segmentation.json'}; {seconds:.0f}s in all")
    return summary


if __name__ == "__main__":
    main()
