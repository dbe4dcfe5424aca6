"""The detection example's main job: one-to-one vs. hybrid-branch training on synthetic shapes.

Generates the synthetic COCO-format set (train + val), trains the tiny H-Deformable-DETR on
the CPU twice with the same seed and schedule, once with one-to-one matching only
(Deformable-DETR) and once with H-DETR's hybrid branch, evaluates both with pycocotools and
prints their COCO tables side by side. About 10 minutes on 2 CPU cores with the defaults.

    python -m examples.detection.main_job [--epochs N] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .engine import cleanup_distributed, get_args_parser, run
from .evaluate import format_side_by_side

__all__ = ["main"]

SCHEMES = ("one2one", "branch")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("examples.detection.main_job", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--output-dir", type=Path, default=None, help="default: a temporary folder, removed after")
    p.add_argument("--train-images", type=int, default=320)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train_args(scheme: str, data: Path, out: Path, options: argparse.Namespace) -> argparse.Namespace:
    """The :mod:`.train` arguments of one of the job's runs."""
    return get_args_parser().parse_args([
        "--data", "synthetic", "--data-path", str(data), "--scheme", scheme, "--config", "tiny",
        "--epochs", str(options.epochs), "--batch-size", str(options.batch_size),
        "--lr", str(options.lr), "--lr-backbone", str(options.lr / 10),
        "--synthetic-train-images", str(options.train_images),
        "--synthetic-val-images", str(options.val_images), "--synthetic-size", str(options.image_size),
        "--seed", str(options.seed), "--output-dir", str(out / scheme), "--device", "cpu",
        "--eval-every", "0", *(["--quiet"] if options.quiet else []),
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the job; return ``{scheme: COCO stats}``."""
    options = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hybridmatch-detection-") as scratch:
        out = options.output_dir if options.output_dir is not None else Path(scratch)
        data = out / "data"
        results: dict[str, dict[str, float]] = {}
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        for scheme in SCHEMES:
            print(f"== training {scheme}: {options.epochs} epochs, {options.train_images} images "
                  f"of {options.image_size}x{options.image_size}", file=sys.stderr, flush=True)
            begun = time.perf_counter()
            history = run(train_args(scheme, data, out, options))
            seconds[scheme] = time.perf_counter() - begun
            results[scheme] = history[-1]["coco"]
        cleanup_distributed()
        total = time.perf_counter() - started
        print(f"COCO bbox on {options.val_images} synthetic validation images after {options.epochs} epochs "
              f"(tiny H-Deformable-DETR, seed {options.seed}); percent")
        print(format_side_by_side(results))
        print("training + evaluation time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
              + f"; total {total:.0f}s")
        if options.output_dir is not None:
            (out / "main_job.json").write_text(json.dumps({"stats": results, "seconds": seconds}, indent=1))
    return results


if __name__ == "__main__":
    main()
