"""``make pose-demo``: :func:`examples.common.comparison.main` of :data:`examples.pose.task.COMPARISON`,
the keypoint DETR one-to-one vs with the hybrid branch on synthetic stick figures, paired over
seeds (``pose.json``, ``pose_ap.png`` in ``outputs/pose-demo``).
"""

from __future__ import annotations

import functools

from examples.common.comparison import main as compare

from .task import COMPARISON

__all__ = ["main"]

#: ``main(argv=None)``: Run the comparison; return its summary.
main = functools.partial(compare, COMPARISON)

if __name__ == "__main__":
    main()
