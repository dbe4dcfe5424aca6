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
    """Base class of every error raised by hybridmatch."""


class ConfigurationError(HybridMatchError, ValueError):
    """A setting is out of range: a weight, K, a fraction, a backend or policy name."""


class ShapeError(HybridMatchError, ValueError):
    """A tensor has the wrong number of dimensions, size, dtype or device."""


class CostDtypeError(ShapeError, TypeError):
    """A cost whose dtype is not a real number (object, string, complex, date).

    A :class:`ShapeError` that is also a ``TypeError``, the type
    :func:`scipy.optimize.linear_sum_assignment` raises for such arrays, so code
    written against either keeps catching it.
    """


class InvalidCostError(HybridMatchError, ValueError):
    """A cost matrix holds NaN, or -inf (when minimising), at a real entry."""


class InfeasibleError(HybridMatchError, ValueError):
    """No complete assignment avoids the forbidden (+inf) pairs."""


class InvalidTargetError(HybridMatchError, ValueError):
    """Ground-truth targets are malformed: a label out of range, a missing key, a bad box."""


class InvalidPredictionError(HybridMatchError, ValueError):
    """Model outputs are malformed: a missing key, a wrong shape, NaN."""


class BackendUnavailableError(HybridMatchError, RuntimeError):
    """A solver backend was asked for by name but cannot run here."""


class HybridMatchWarning(UserWarning):
    """A fallback, a sanitised value or a capped setting; each is said once."""
