"""hybridmatch: hybrid matching (H-DETR) building blocks for DETR-family models.

The package root re-exports what users type most; every module keeps its own
``__all__`` for the rest.
"""

from __future__ import annotations

from .costs import CostSum, FocalClassCost, GIoUCost, L1BoxCost, SoftmaxClassCost
from .errors import (
    BackendUnavailableError,
    HybridMatchError,
    HybridMatchWarning,
    InfeasibleError,
    InvalidCostError,
    InvalidPredictionError,
    InvalidTargetError,
    ShapeError,
)
from .matchers import HungarianMatcher
from .solvers import (
    assignment_to_pairs,
    available_backends,
    batched_linear_sum_assignment,
    linear_sum_assignment,
    pairs_to_assignment,
)
from .targets import PaddedTargets, pad_targets, repeat_targets

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CostSum",
    "FocalClassCost",
    "GIoUCost",
    "HungarianMatcher",
    "HybridMatchError",
    "HybridMatchWarning",
    "InfeasibleError",
    "InvalidCostError",
    "InvalidPredictionError",
    "InvalidTargetError",
    "L1BoxCost",
    "PaddedTargets",
    "ShapeError",
    "SoftmaxClassCost",
    "assignment_to_pairs",
    "available_backends",
    "batched_linear_sum_assignment",
    "linear_sum_assignment",
    "pad_targets",
    "pairs_to_assignment",
    "repeat_targets",
    "__version__",
]
