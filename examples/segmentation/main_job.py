"""The segmentation demo (``make segmentation-demo``): one-to-one vs the hybrid branch, paired over seeds.

:func:`examples.common.comparison.main` of :data:`examples.segmentation.task.COMPARISON`: the
tiny segmentation DETR (2+2 layers, 64 wide, 64-pixel images, mask logits at stride 2) on a
dense synthetic shapes set with instance masks, once per seed with one-to-one matching and
once with H-DETR's hybrid branch (30 one-to-one + 90 one-to-many queries, K = 6, masks shared
by the K copies), from identical weights and data order. Both are scored on their 30
one-to-one queries (``segm`` AP, pycocotools, RLE masks). Progress lines while the runs
train, then the table, ``segmentation.json`` and ``segmentation_ap.png`` in ``--output-dir``.

    python -m examples.segmentation.main_job [--seeds 0 1 2] [--epochs 12] [--workers 2]
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
