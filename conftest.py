"""Doctests: every example in the package's docstrings sees ``torch`` without importing it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
