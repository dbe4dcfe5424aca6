"""Warn-once helper: a fallback or a sanitised value is announced once per process."""

from __future__ import annotations

import warnings

from .errors import HybridMatchWarning

_seen: set[str] = set()


def warn_once(key: str, message: str, *, stacklevel: int = 3) -> None:
    """Emit ``message`` as a :class:`HybridMatchWarning` the first time ``key`` is seen."""
    if key in _seen:
        return
    _seen.add(key)
    warnings.warn(message, HybridMatchWarning, stacklevel=stacklevel)


def reset_warnings() -> None:
    """Forget which warnings were given (for tests)."""
    _seen.clear()
