"""``python -m examples.pose.train``: the keypoint DETR, e.g. ``--data synthetic --scheme branch
--epochs 12 --output-dir outputs/pose``, or under ``torchrun`` on COCO keypoints (``--data coco
--data-path /data/coco --config r50``). The run is :func:`examples.common.runner.main` of
:data:`examples.pose.task.TASK` (resume, ``--eval-only``, logs: see :mod:`examples.common.runner`).
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
