"""Train or evaluate the segmentation DETR with hybrid matching.

Single process (CPU or one GPU), on the synthetic shapes (generated when missing)::

    python -m examples.segmentation.train --scheme branch --epochs 12 --output-dir outputs/seg-branch

Several processes (one per GPU; gloo on a CPU-only machine), on COCO::

    torchrun --nproc_per_node 8 -m examples.segmentation.train --data coco --data-path /data/coco \\
        --config r50 --image-size 800 --num-points 12544 --scheme branch --amp

Resume with ``--resume OUTPUT_DIR/checkpoint.pth`` (same arguments; a checkpoint of another
scheme or setting is refused); evaluate a checkpoint with ``--eval-only --resume ...``. Every
epoch appends a JSON line to ``OUTPUT_DIR/log.jsonl``. The run is
:func:`examples.common.runner.run` of :data:`examples.segmentation.task.TASK`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from examples.common.runner import main as run_main

from .task import TASK

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse the command line and run; return the per-epoch history."""
    return run_main(TASK, argv)


if __name__ == "__main__":
    main()
