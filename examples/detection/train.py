"""``python -m examples.detection.train``: train or evaluate H-Deformable-DETR with hybrid matching.

    python -m examples.detection.train --data synthetic --scheme branch --config tiny --epochs 12 --output-dir out/
    torchrun --nproc_per_node 8 -m examples.detection.train --data coco --data-path /data/coco \\
        --scheme branch --config r50 --backbone-weights r50.pth --amp --batch-size 2

:func:`examples.common.runner.main` of :data:`examples.detection.task.TASK`; ``--eval-one2many``
(branch) also scores the one-to-many queries with NMS. ``--help`` lists every option.
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
