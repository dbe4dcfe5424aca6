"""Warn-once helper: a fallback or a sanitised value is announced once per process."""

from __future__ import annotations

import os
import sys
import warnings

import torch

from .errors import HybridMatchWarning

_seen: set[str] = set()
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# torch stands between a user's call and hybridmatch: Module.__call__, no_grad's
# decorator, the dispatcher calling the solver's custom op.
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside hybridmatch and torch, so warnings point at user code."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not (filename.startswith(_PACKAGE) or filename.startswith(_TORCH)):
            break
        frame = frame.f_back
        level += 1
    return level


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a :class:`HybridMatchWarning` the first time ``key`` is seen."""
    if key in _seen:
        return
    _seen.add(key)
    warnings.warn(message, HybridMatchWarning, stacklevel=_caller_stacklevel())


def reset_warnings() -> None:
    """Forget which warnings were given (for tests)."""
    _seen.clear()
