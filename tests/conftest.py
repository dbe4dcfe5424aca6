from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from hybridmatch._warnings import reset_warnings

# Property tests are deterministic in CI; `HYPOTHESIS_PROFILE=explore` searches further.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("explore", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The mark itself: `"cuda" in item.keywords` also matches a checkout folder named cuda.
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def cpu_and_cuda() -> list:
    """Parametrisation over devices: CUDA cases carry the ``cuda`` mark."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    # Each test sees its own "once" warnings.
    reset_warnings()
