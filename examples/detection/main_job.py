"""``make demo`` = ``python -m examples.detection.main_job``: one-to-one vs H-DETR's hybrid branch.

The paired multi-seed comparison of :mod:`examples.common.comparison` on
:data:`examples.detection.task.COMPARISON`: the tiny H-Deformable-DETR on dense synthetic
shapes; writes ``demo.json`` and ``demo_ap.png`` to ``--output-dir`` (``outputs/demo``).
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
