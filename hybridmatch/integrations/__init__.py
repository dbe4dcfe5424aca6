"""Adapters that install hybrid matching into other libraries' models.

Each adapter lives in its own module and imports its optional dependency only when it
is used, so ``import hybridmatch`` never needs it:

* :mod:`hybridmatch.integrations.transformers`: Hugging Face transformers' DETR-family
  detectors (``pip install "hybridmatch[transformers]"``).

Nothing in the core of hybridmatch imports this package.
"""

from __future__ import annotations

__all__: list[str] = []
