"""hybridmatch: hybrid matching (H-DETR) building blocks for DETR-family models.

The package root re-exports what users type most; every module keeps its own
``__all__`` for the rest.
"""

from __future__ import annotations

from .attention import (
    denoising_hybrid_mask,
    expand_mask,
    group_attention_mask,
    hybrid_attention_mask,
    to_additive_mask,
    to_sdpa_mask,
)
from .costs import (
    ClassIoUQuality,
    Cost,
    CostSum,
    FocalClassCost,
    GIoUCost,
    IoUQuality,
    KeypointL1Cost,
    L1BoxCost,
    MaskBCECost,
    MaskDiceCost,
    OKSCost,
    SoftmaxClassCost,
)
from .criterion import HybridCriterion, KeyMap, hybrid_weight_dict, weighted_loss
from .distributed import global_num_boxes
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    CostDtypeError,
    HybridMatchError,
    HybridMatchWarning,
    InfeasibleError,
    InvalidCostError,
    InvalidPredictionError,
    InvalidTargetError,
    ShapeError,
)
from .matchers import (
    Groups,
    GroupMatcher,
    Hungarian,
    HungarianMatcher,
    Matcher,
    OneToManyMatcher,
    TopK,
    TopKMatcher,
)
from .schemes import HybridBranch, HybridEpoch, HybridLayer
from .solvers import (
    assignment_to_pairs,
    available_backends,
    batched_linear_sum_assignment,
    linear_sum_assignment,
    pairs_to_assignment,
)
from ._version import __version__
from .targets import PaddedTargets, pad_targets, repeat_targets

__all__ = [
    "BackendUnavailableError",
    "ClassIoUQuality",
    "ConfigurationError",
    "Cost",
    "CostDtypeError",
    "CostSum",
    "FocalClassCost",
    "GIoUCost",
    "GroupMatcher",
    "Groups",
    "Hungarian",
    "HungarianMatcher",
    "HybridBranch",
    "HybridCriterion",
    "HybridEpoch",
    "HybridLayer",
    "HybridMatchError",
    "HybridMatchWarning",
    "InfeasibleError",
    "InvalidCostError",
    "InvalidPredictionError",
    "InvalidTargetError",
    "IoUQuality",
    "KeyMap",
    "KeypointL1Cost",
    "L1BoxCost",
    "MaskBCECost",
    "MaskDiceCost",
    "Matcher",
    "OKSCost",
    "OneToManyMatcher",
    "PaddedTargets",
    "ShapeError",
    "SoftmaxClassCost",
    "TopK",
    "TopKMatcher",
    "assignment_to_pairs",
    "available_backends",
    "batched_linear_sum_assignment",
    "denoising_hybrid_mask",
    "expand_mask",
    "global_num_boxes",
    "group_attention_mask",
    "hybrid_attention_mask",
    "hybrid_weight_dict",
    "linear_sum_assignment",
    "pad_targets",
    "pairs_to_assignment",
    "repeat_targets",
    "to_additive_mask",
    "to_sdpa_mask",
    "weighted_loss",
    "__version__",
]
