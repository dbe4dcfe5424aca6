"""Two CPU processes with the gloo backend, one of them holding no targets at all.

Nothing may hang, and the ranks' losses averaged (as DDP averages gradients)
must equal one process computing the whole batch.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist

from hybridmatch.criterion import HybridCriterion
from hybridmatch.distributed import global_num_boxes
from hybridmatch.schemes import HybridBranch

from .detr_reference import SetCriterion, random_outputs, random_targets
from .spawn import run_ranks

COUNTS = [[3, 1], [0, 0]]  # rank 1's images hold no objects
NUM_CLASSES = 4


def _batch(rank: int | None):
    outputs = random_outputs(11, 4, 10, NUM_CLASSES, 2)
    targets = random_targets(11, COUNTS[0] + COUNTS[1], NUM_CLASSES)
    if rank is None:
        return outputs, targets
    part = slice(2 * rank, 2 * rank + 2)
    take = lambda d: {k: (v[part] if torch.is_tensor(v) else [take(a) for a in v]) for k, v in d.items()}  # noqa: E731
    return take(outputs), targets[part]


def _losses(rank: int | None) -> dict[str, float]:
    outputs, targets = _batch(rank)
    hybrid = HybridCriterion(SetCriterion(NUM_CLASSES), HybridBranch(4, 6, k=2))
    return {key: float(value) for key, value in hybrid(outputs, targets).items()}


def _rank_result(rank: int) -> tuple[float, dict[str, float]]:
    return global_num_boxes(_batch(rank)[1]), _losses(rank)


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed")
def test_two_ranks_one_empty_match_a_single_process() -> None:
    results = run_ranks(_rank_result)
    # 4 objects over 2 ranks: every rank normalises by 4 / 2 = 2, the empty one included.
    assert results[0][0] == results[1][0] == 2.0
    single = _losses(None)
    for key, value in single.items():
        averaged = (results[0][1][key] + results[1][1][key]) / 2
        assert averaged == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_global_num_boxes_without_distributed() -> None:
    assert global_num_boxes([{"labels": torch.tensor([1, 2, 3])}]) == 3.0
    assert global_num_boxes([{"labels": torch.tensor([], dtype=torch.long)}]) == 1.0  # clamped
    assert global_num_boxes(7) == 7.0
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'labels'"):
        global_num_boxes([{"class_labels": torch.tensor([1])}])
