"""The error and warning family of hybridmatch.

Every error the library raises on bad input derives from :class:`HybridMatchError`
and from the matching builtin (``ValueError`` for bad values, ``RuntimeError`` for
an unavailable backend), so ``except ValueError`` in existing training code keeps
working. Messages name the tensor, the index and the fix.
"""

from __future__ import annotations

__all__ = [
    "HybridMatchError",
    "ConfigurationError",
    "ShapeError",
    "CostDtypeError",
    "InvalidCostError",
    "InfeasibleError",
    "InvalidTargetError",
    "InvalidPredictionError",
    "BackendUnavailableError",
    "HybridMatchWarning",
]


class HybridMatchError(Exception):
    """Base class of every error raised by hybridmatch.

    Example:
        >>> import torch
        >>> from hybridmatch import HybridMatchError, batched_linear_sum_assignment
        >>> try:
        ...     batched_linear_sum_assignment(torch.rand(2, 3), capacity=0)
        ... except HybridMatchError as error:   # any hybridmatch error
        ...     type(error).__name__
        'ConfigurationError'
    """


class ConfigurationError(HybridMatchError, ValueError):
    """A setting is out of range: a weight, K, a fraction, a backend or policy name.

    Example:
        >>> from hybridmatch import ConfigurationError, HybridBranch
        >>> try:
        ...     HybridBranch(num_one2one=300, num_one2many=1500, k=0)
        ... except ConfigurationError as error:
        ...     isinstance(error, ValueError)
        True
    """


class ShapeError(HybridMatchError, ValueError):
    """A tensor has the wrong number of dimensions, size, dtype or device.

    Example:
        >>> import torch
        >>> from hybridmatch import ShapeError, batched_linear_sum_assignment
        >>> try:
        ...     batched_linear_sum_assignment(torch.rand(5))   # a vector is not a cost matrix
        ... except ShapeError as error:
        ...     isinstance(error, ValueError)
        True
    """


class CostDtypeError(ShapeError, TypeError):
    """A cost whose dtype is not a real number (object, string, complex, date).

    A :class:`ShapeError` that is also a ``TypeError``, the type
    :func:`scipy.optimize.linear_sum_assignment` raises for such arrays, so code
    written against either keeps catching it.

    Example:
        >>> from hybridmatch import CostDtypeError, linear_sum_assignment
        >>> import numpy as np
        >>> try:
        ...     linear_sum_assignment(np.array([["a", "b"]]))
        ... except TypeError as error:                       # as scipy raises
        ...     isinstance(error, CostDtypeError)
        True
    """


class InvalidCostError(HybridMatchError, ValueError):
    """A cost matrix holds NaN, or -inf (when minimising), at a real entry.

    Example:
        >>> import torch
        >>> from hybridmatch import InvalidCostError, linear_sum_assignment
        >>> try:
        ...     linear_sum_assignment(torch.tensor([[float("nan"), 1.0]]))
        ... except InvalidCostError as error:
        ...     isinstance(error, ValueError)
        True
    """


class InfeasibleError(HybridMatchError, ValueError):
    """No complete assignment avoids the forbidden (+inf) pairs.

    Example:
        >>> import torch
        >>> from hybridmatch import InfeasibleError, linear_sum_assignment
        >>> inf = float("inf")
        >>> try:
        ...     linear_sum_assignment(torch.tensor([[inf, inf], [1.0, 2.0]]))   # query 0 is blocked
        ... except InfeasibleError as error:
        ...     isinstance(error, ValueError)
        True
    """


class InvalidTargetError(HybridMatchError, ValueError):
    """Ground-truth targets are malformed: a label out of range, a missing key, a bad box.

    Example:
        >>> import torch
        >>> from hybridmatch import InvalidTargetError, pad_targets
        >>> try:
        ...     pad_targets({"labels": torch.tensor([1]), "boxes": torch.rand(1, 4)})   # not a list
        ... except InvalidTargetError as error:
        ...     isinstance(error, ValueError)
        True
    """


class InvalidPredictionError(HybridMatchError, ValueError):
    """Model outputs are malformed: a missing key, a wrong shape, NaN.

    Example:
        >>> import torch
        >>> from hybridmatch import InvalidPredictionError, L1BoxCost, Hungarian, Matcher
        >>> targets = [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}]
        >>> try:
        ...     Matcher(L1BoxCost(), Hungarian())({"pred_logits": torch.rand(1, 3, 2)}, targets)
        ... except InvalidPredictionError as error:   # no pred_boxes
        ...     isinstance(error, ValueError)
        True
    """


class BackendUnavailableError(HybridMatchError, RuntimeError):
    """A solver backend was asked for by name but cannot run here.

    Example:
        >>> import torch
        >>> from hybridmatch import BackendUnavailableError, available_backends, batched_linear_sum_assignment
        >>> issubclass(BackendUnavailableError, RuntimeError)
        True
        >>> try:   # asking for the GPU solver with no GPU raises it (or ShapeError for a CPU cost)
        ...     batched_linear_sum_assignment(torch.rand(1, 2, 2), backend="cuda")
        ... except (BackendUnavailableError, ValueError) as error:
        ...     "cuda" in str(error)
        True
    """


class HybridMatchWarning(UserWarning):
    """A fallback, a sanitised value or a capped setting; each is said once.

    Example:
        >>> import warnings
        >>> from hybridmatch import HybridMatchWarning
        >>> issubclass(HybridMatchWarning, UserWarning)
        True
        >>> warnings.simplefilter("error", HybridMatchWarning)   # e.g. in a test suite
        >>> warnings.resetwarnings()
    """
