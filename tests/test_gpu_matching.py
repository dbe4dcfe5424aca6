"""Costs, matchers and HybridCriterion fed CUDA outputs (``cuda`` mark; run by benchmarks/gpu_check.sh).

References: scipy on the very cost the GPU computed (moved to the host in float64),
and the same criterion run on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from hybridmatch import HungarianMatcher
from hybridmatch.criterion import HybridCriterion
from hybridmatch.matchers import OneToManyMatcher
from hybridmatch.schemes import HybridBranch
from hybridmatch.targets import pad_targets

from .detr_reference import SetCriterion, random_outputs, random_targets

pytestmark = pytest.mark.cuda
NUM_CLASSES = 7


def to_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.cuda()
    if isinstance(value, dict):
        return {k: to_cuda(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cuda(v) for v in value]
    return value


def scipy_total(cost: np.ndarray, capacity: int) -> float:
    tiled = np.tile(cost, (1, capacity))
    rows, cols = scipy_lsa(tiled)
    return float(tiled[rows, cols].sum())


@pytest.mark.parametrize("capacity", [1, 6])
def test_matchers_on_cuda_outputs_are_optimal_for_the_gpu_cost(capacity: int) -> None:
    counts = [5, 0, 30, 1]
    outputs = to_cuda(random_outputs(0, len(counts), 300 if capacity == 1 else 1500, NUM_CLASSES, 0))
    targets = to_cuda(random_targets(0, counts, NUM_CLASSES))
    matcher = HungarianMatcher(backend="cuda") if capacity == 1 else OneToManyMatcher(k=capacity, backend="cuda")
    assignment = matcher.match(outputs, targets)
    assert assignment.is_cuda and assignment.dtype == torch.int64
    cost = matcher.cost(outputs, pad_targets(targets)).double().cpu().numpy()  # what the GPU solved
    for b, m in enumerate(counts):
        columns = assignment[b].cpu().numpy()
        rows = np.flatnonzero(columns >= 0)
        assert rows.size == min(cost.shape[1], m * capacity)
        assert np.bincount(columns[rows], minlength=max(m, 1)).max(initial=0) <= capacity
        got = float(cost[b, rows, columns[rows]].sum())
        assert got == pytest.approx(scipy_total(cost[b, :, :m], capacity), rel=1e-9, abs=1e-9)
    pairs = matcher(outputs, targets)  # DETR's form: CPU index pairs
    assert [p.device.type for pair in pairs for p in pair] == ["cpu"] * 2 * len(counts)


def test_auto_backend_on_cuda_outputs_picks_the_gpu_solver() -> None:
    outputs = to_cuda(random_outputs(1, 2, 40, NUM_CLASSES, 0))
    targets = to_cuda(random_targets(1, [3, 4], NUM_CLASSES))
    auto = HungarianMatcher().match(outputs, targets)
    cuda = HungarianMatcher(backend="cuda").match(outputs, targets)
    assert auto.is_cuda and torch.equal(auto, cuda)


def test_hybrid_criterion_fed_cuda_outputs_equals_the_cpu_run() -> None:
    counts = [3, 0, 7]
    outputs = random_outputs(2, len(counts), 20, NUM_CLASSES, 2, enc=True)
    extra = random_outputs(3, len(counts), 60, NUM_CLASSES, 2)
    outputs.update(pred_logits_one2many=extra["pred_logits"], pred_boxes_one2many=extra["pred_boxes"],
                   aux_outputs_one2many=extra["aux_outputs"])
    targets = random_targets(2, counts, NUM_CLASSES)
    scheme = HybridBranch(20, 60, k=6)
    on_cpu = HybridCriterion(SetCriterion(NUM_CLASSES), scheme)(outputs, targets)
    on_gpu = HybridCriterion(SetCriterion(NUM_CLASSES), scheme)(to_cuda(outputs), to_cuda(targets))
    assert set(on_gpu) == set(on_cpu)
    for key, value in on_cpu.items():
        assert on_gpu[key].is_cuda, key
        torch.testing.assert_close(on_gpu[key].cpu(), value, rtol=1e-4, atol=1e-5, msg=key)
