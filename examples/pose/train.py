"""Train or evaluate the keypoint DETR with hybrid matching.

Single process (CPU or one GPU)::

    python -m examples.pose.train --data synthetic --scheme branch --epochs 12 --output-dir outputs/pose

Several processes (one per GPU; gloo on CPU-only machines)::

    torchrun --nproc_per_node 8 -m examples.pose.train --data coco --data-path /data/coco \\
        --scheme branch --config r50 --backbone-weights r50.pth --amp --batch-size 2

Resume with ``--resume OUTPUT_DIR/checkpoint.pth`` (same arguments); evaluate a checkpoint
with ``--eval-only --resume ...``. Every epoch appends a JSON line to ``OUTPUT_DIR/log.jsonl``.
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
    try:
        run(args)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
