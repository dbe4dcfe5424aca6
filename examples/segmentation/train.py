"""``python -m examples.segmentation.train``: the instance-segmentation DETR.

Synthetic shapes by default (generated when missing); COCO with ``--data coco --data-path
/data/coco --config r50 --image-size 800 --num-points 12544`` (``torchrun`` for several GPUs).
It runs :data:`examples.segmentation.task.TASK` with :func:`examples.common.runner.main`.
"""

from __future__ import annotations

import functools

from examples.common.runner import main as run_main

from .task import TASK

__all__ = ["main"]

#: ``main(argv=None)``: Parse the command line and run; return the per-epoch history.
main = functools.partial(run_main, TASK)

if __name__ == "__main__":
    main()
