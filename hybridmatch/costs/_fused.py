"""The fused detection cost: class + L1 + GIoU of a :class:`CostSum` in one native pass.

A :class:`~hybridmatch.costs.CostSum` whose terms are class costs
(:class:`FocalClassCost`, :class:`SoftmaxClassCost`) and at most one :class:`L1BoxCost`
and one :class:`GIoUCost` on the same boxes (``detr_cost`` and its presets) is computed
by the compiled extension (``hybridmatch._lsap.fused_detection_cost``, csrc/fused_cost.h)
on CPU tensors: the weighted class cost of every query and class is a small ``(B, N, C)``
table made here with the class costs' own formula; the extension gathers it by label and
adds the box terms pair by pair in float32, with no ``(B, N, M, 4)`` intermediates.

It applies only where the result equals the torch path (within float32 rounding, NaN in
the rows and columns of non-finite inputs as there): CPU tensors, no autograd graph
wanted; otherwise :func:`fused_cost` returns None and the sum is computed term by term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..solvers import _native
from ._base import read_target
from .boxes import GIoUCost, L1BoxCost
from .classes import FocalClassCost, SoftmaxClassCost, focal_class_table, softmax_class_table

__all__: list[str] = []

#: Set False to force the term-by-term torch path (tests compare the two).
ENABLED = True

#: Images with at most this many targets are computed target by target over the queries
#: (SIMD lanes of queries), the others query by query over the targets; both give the
#: same values. Tests set it to 0 or a large number to run one layout everywhere.
COLUMN_MAX_TARGETS = 32


def fused_cost(terms: tuple[tuple[float, Any], ...], outputs: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]],
               targets: Any) -> Tensor | None:
    """The summed cost ``Tensor[B, N, M]`` by the native pass, or None where it does not apply.

    ``outputs`` may also be a list of L output dicts of one shape (decoder layers) matched
    against the same targets: the result is then ``Tensor[L * B, N, M]``, image ``l * B + b``
    being layer ``l``'s image ``b``, with no concatenation of the layers' tensors.
    """
    module = _native._cpu
    if not ENABLED or module is None or not hasattr(module, "fused_detection_cost"):
        return None
    layers = [outputs] if isinstance(outputs, Mapping) else list(outputs)
    class_terms = []
    l1_weight = giou_weight = None
    box_key = None
    for weight, cost in terms:
        kind = type(cost)
        if kind is FocalClassCost or kind is SoftmaxClassCost:
            class_terms.append((weight, cost))
            continue
        if kind is L1BoxCost and l1_weight is None:
            l1_weight = weight
        elif kind is GIoUCost and giou_weight is None:
            giou_weight = weight
        else:
            return None
        if box_key is not None and cost.key != box_key:
            return None
        box_key = cost.key
    if box_key is None or not layers:
        return None
    preds = [layer[box_key] for layer in layers]
    target = read_target(targets, "boxes", _BOX_READER)
    tensors = preds + [target] + [layer[cost.key] for layer in layers for _, cost in class_terms]
    if any(t.device.type != "cpu" for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    # Anything unusual goes the term-by-term way, whose checks name the problem.
    if not (_boxes_ok(target) and all(_boxes_ok(pred) and pred.shape == preds[0].shape for pred in preds)):
        return None
    if preds[0].shape[0] != target.shape[0]:
        return None
    preds = [pred.float().contiguous() for pred in preds]
    target = target.float().contiguous()

    batch, queries, count = preds[0].shape[0], preds[0].shape[1], target.shape[1]
    if batch * queries * count == 0:
        return None
    if class_terms:
        labels = read_target(targets, "labels", class_terms[0][1])
        num_classes = None
        for layer in layers:
            for _, cost in class_terms:
                logits = layer[cost.key]
                if not logits.is_floating_point() or logits.ndim != 3 or logits.shape[:2] != (batch, queries):
                    return None
                if logits.shape[2] < 1:
                    return None
                if num_classes is None:
                    num_classes = logits.shape[2]
                elif logits.shape[2] != num_classes:
                    return None
        assert num_classes is not None
        if not isinstance(labels, Tensor) or labels.shape != (batch, count) or labels.dtype not in _INTEGER:
            return None
        if labels.device.type != "cpu":
            return None
        focal = len(class_terms) == 1 and isinstance(class_terms[0][1], FocalClassCost)
        if focal:
            weight, cost = class_terms[0]
            tables = [layer[cost.key].float().contiguous() for layer in layers]
            labels = labels.to(torch.int64).clamp(0, num_classes - 1).contiguous()
            return _run(module, tables, labels, preds, target, l1_weight, giou_weight, True,
                        (True, cost.alpha, cost.gamma, float(weight)))
        # The classes present (over the batch): the table needs only their columns.
        clamped = labels.to(torch.int64).clamp(0, num_classes - 1)
        present, inverse = torch.unique(clamped, return_inverse=True)
        gather_first = count <= present.numel()  # as few targets as classes: the class costs themselves
        tables = []
        for layer in layers:
            table = None
            for weight, cost in class_terms:
                logits = layer[cost.key]
                if gather_first:
                    part = weight * cost.compute(layer, targets, {})
                elif isinstance(cost, FocalClassCost):  # elementwise: the present columns only
                    part = weight * focal_class_table(logits.index_select(-1, present), cost.alpha, cost.gamma)
                else:
                    part = weight * softmax_class_table(logits).index_select(-1, present)
                table = part if table is None else table + part
            assert table is not None
            tables.append(table.contiguous())
        if gather_first:
            # The (B, N, M) class cost is the table, target m reading its column m.
            labels = torch.arange(count, dtype=torch.int64).expand(batch, count).contiguous()
        else:
            # As the class costs' gather: padded labels (-1, C) read the nearest class.
            labels = inverse.reshape(batch, count).contiguous()
    else:
        tables = []
        labels = torch.zeros(1, 1, dtype=torch.int64)
    return _run(module, tables, labels, preds, target, l1_weight, giou_weight, bool(class_terms), (False, 0.0, 0.0, 1.0))


def _run(module: Any, tables: list[Tensor], labels: Tensor, preds: list[Tensor], target: Tensor,
         l1_weight: float | None, giou_weight: float | None, has_class: bool,
         focal: tuple[bool, float, float, float]) -> Tensor:
    batch, queries = preds[0].shape[:2]
    out = torch.empty(len(preds) * batch, queries, target.shape[1], dtype=torch.float32)
    # numpy views: nanobind reads them faster than torch's __dlpack__ (same memory, no copy).
    module.fused_detection_cost(
        [table.detach().numpy() for table in tables], labels.numpy(), [pred.detach().numpy() for pred in preds],
        target.detach().numpy(),
        0.0 if l1_weight is None else float(l1_weight),
        0.0 if giou_weight is None else float(giou_weight),
        has_class, l1_weight is not None, giou_weight is not None,
        *focal, COLUMN_MAX_TARGETS, torch.get_num_threads(), out.numpy(),
    )
    return out


_BOX_READER = L1BoxCost()
_INTEGER = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _boxes_ok(boxes: Any) -> bool:
    return (
        isinstance(boxes, Tensor) and boxes.ndim == 3 and boxes.shape[-1] == 4
        and (boxes.is_floating_point() or boxes.dtype in _INTEGER) and not boxes.is_complex()
    )
