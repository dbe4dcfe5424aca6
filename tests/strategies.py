"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def cost_matrices(
    draw: st.DrawFn,
    max_rows: int = 8,
    max_cols: int = 8,
    min_rows: int = 0,
    min_cols: int = 0,
    integers: bool = False,
) -> np.ndarray:
    """A float64 (N, M) cost; with ``integers`` small ints, so ties are common."""
    n = draw(st.integers(min_rows, max_rows))
    m = draw(st.integers(min_cols, max_cols))
    if integers:
        elements = st.integers(-3, 3).map(float)
    else:
        elements = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)
    return draw(hnp.arrays(np.float64, (n, m), elements=elements))


@st.composite
def padded_batches(
    draw: st.DrawFn, max_batch: int = 4, max_rows: int = 7, max_cols: int = 6
) -> tuple[np.ndarray, list[int]]:
    """A (B, N, M_max) float64 batch and its per-problem real column counts."""
    batch = draw(st.integers(1, max_batch))
    n = draw(st.integers(0, max_rows))
    counts = draw(st.lists(st.integers(0, max_cols), min_size=batch, max_size=batch))
    width = max(counts)
    cost = draw(
        hnp.arrays(
            np.float64,
            (batch, n, width),
            elements=st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64),
        )
    )
    return cost, counts
