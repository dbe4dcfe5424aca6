"""``make segmentation-demo``: masks, one-to-one vs the hybrid branch, paired over seeds.

Runs :data:`examples.segmentation.task.COMPARISON` (:mod:`examples.common.comparison`) and
writes ``segmentation.json`` and ``segmentation_ap.png`` to ``outputs/segmentation-demo``.
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
