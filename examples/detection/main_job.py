"""The detection demo (``make demo``): one-to-one vs H-DETR's hybrid branch, paired over seeds.

:func:`examples.common.comparison.main` of :data:`examples.detection.task.COMPARISON`: the
tiny H-Deformable-DETR on a dense synthetic shapes set, once per seed with one-to-one
matching and once with the hybrid branch, from identical weights and data order; progress
lines while the runs train, then the table (early epoch and the mean of the last epochs;
paired difference with its 95 % interval and sign count), ``demo.json`` and ``demo_ap.png``
in ``--output-dir``.

    python -m examples.detection.main_job [--seeds 0 1 2] [--epochs 12] [--workers 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from examples.common.comparison import main as compare

from .task import COMPARISON

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; return its summary (:func:`examples.common.comparison.summarize`)."""
    return compare(COMPARISON, argv)


if __name__ == "__main__":
    main()
