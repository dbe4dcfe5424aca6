"""Train or evaluate the segmentation DETR with hybrid matching.

Single process (CPU or one GPU), on the synthetic shapes (generated when missing)::

    python -m examples.segmentation.train --scheme branch --epochs 12 --output-dir outputs/seg-branch

Several processes (one per GPU; gloo on a CPU-only machine), on COCO::

    torchrun --nproc_per_node 8 -m examples.segmentation.train --data coco --data-path /data/coco \\
        --config r50 --image-size 800 --num-points 12544 --scheme branch --amp

Resume with ``--resume OUTPUT_DIR/checkpoint.pth`` (same arguments); evaluate a checkpoint
with ``--eval-only --resume ...``. Every epoch appends a JSON line to ``OUTPUT_DIR/log.jsonl``.
The loop, checkpoints, logs and shared arguments are :mod:`examples.common`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from examples.common import check_training_args

from .engine import cleanup_distributed, get_args_parser, run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_training_args(parser, args)
    if args.eval_only and args.resume is None:
        print("--eval-only without --resume evaluates an untrained model")
    try:
        run(args)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
