"""The tensor solver registered with torch's dispatcher: ``torch.ops.hybridmatch.batched_linear_sum_assignment``.

:func:`hybridmatch.solvers.batched_linear_sum_assignment` calls it for every torch
cost. As a ``torch.library.custom_op`` with a fake (meta) implementation it is one
opaque node for ``torch.compile``: a compiled function that calls the solver traces
without a graph break (``fullgraph=True`` works), and the solve itself (backend
choice, the native call, the checks of the problems it flags) runs eagerly inside it.

This module has no ``from __future__ import annotations``: torch reads the op's
schema from the annotations.
"""

from typing import List, Optional

import torch

__all__ = ["assignment_op"]


def _register():  # noqa: ANN202 - the op object's type is torch-internal
    @torch.library.custom_op("hybridmatch::batched_linear_sum_assignment", mutates_args=())
    def assignment_op(
        cost: torch.Tensor,
        num_targets: Optional[List[int]],
        num_targets_tensor: Optional[torch.Tensor],
        capacity: int,
        maximize: bool,
        backend: str,
        nan_policy: str,
        batched: bool,
    ) -> torch.Tensor:
        """cost (Tensor[B, N, M]) -> Tensor[B, N] int64 on the cost's device, target or -1.

        ``num_targets`` (ints, checked) or ``num_targets_tensor`` (checked here), at most
        one of them; ``batched`` says whether errors name the problem index.
        """
        from . import _solve_tensor  # the entry point's module, which imports this one

        counts = num_targets_tensor if num_targets_tensor is not None else num_targets
        return _solve_tensor(cost, counts, capacity, maximize, backend, nan_policy, batched)

    @assignment_op.register_fake
    def _(cost, num_targets, num_targets_tensor, capacity, maximize, backend, nan_policy, batched):  # noqa: ANN001, ANN202
        return cost.new_empty(cost.shape[:2], dtype=torch.int64)

    return assignment_op


assignment_op = _register()
