"""Argument checks shared by every layer (imports nothing of hybridmatch but its errors)."""

from __future__ import annotations

import numbers

from .errors import ConfigurationError


def check_int(value: object, name: str, *, minimum: int, where: str = "", hint: str = "") -> int:
    """``value`` as a Python int ``>= minimum``; bools and non-integers raise ConfigurationError.

    numpy integers are accepted. The message reads "``where``: ``name`` must be an int >=
    ``minimum``, got ..." followed by ``hint``.
    """
    prefix = f"{where}: " if where else ""
    suffix = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigurationError(
            f"{prefix}{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__}){suffix}"
        )
    if int(value) < minimum:
        raise ConfigurationError(f"{prefix}{name} must be an int >= {minimum}, got {value}{suffix}")
    return int(value)
