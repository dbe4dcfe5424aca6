"""The pose comparison (``make pose-demo``): one-to-one vs the hybrid branch, paired over seeds.

:func:`examples.common.comparison.main` of :data:`examples.pose.task.COMPARISON`: the tiny
keypoint DETR on dense synthetic stick figures, once per seed with one-to-one matching and
once with H-DETR's hybrid branch (20 one-to-one + 60 one-to-many queries, K = 5), from
identical weights and data order. Both are scored with pycocotools' keypoint AP (OKS, the
figures' sigmas), the branch on its 20 one-to-one queries. Progress lines while the runs
train, then the table, ``pose.json`` and ``pose_ap.png`` in ``--output-dir``.

    python -m examples.pose.main_job [--seeds 0 1 2] [--epochs 16] [--workers 2]
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
