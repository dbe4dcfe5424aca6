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


@st.composite
def poses(draw: st.DrawFn, max_queries: int = 5, max_targets: int = 4, max_joints: int = 6) -> tuple:
    """Predicted keypoints (1, N, J, 2), target keypoints (1, M, J, 3) with v in {0, 1, 2}, areas (1, M)."""
    import torch

    n = draw(st.integers(0, max_queries))
    m = draw(st.integers(0, max_targets))
    j = draw(st.integers(1, max_joints))
    coordinate = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    pred = draw(hnp.arrays(np.float32, (1, n, j, 2), elements=coordinate))
    xy = draw(hnp.arrays(np.float32, (1, m, j, 2), elements=coordinate))
    visibility = draw(hnp.arrays(np.float32, (1, m, j, 1), elements=st.sampled_from([0.0, 1.0, 2.0])))
    area = draw(hnp.arrays(np.float32, (1, m), elements=st.floats(0.0, 4.0, width=32)))
    return torch.from_numpy(pred), torch.from_numpy(np.concatenate([xy, visibility], axis=-1)), torch.from_numpy(area)


@st.composite
def mask_batches(draw: st.DrawFn, max_queries: int = 4, max_targets: int = 3) -> tuple:
    """Mask logits (1, N, H, W) and binary target masks (1, M, H', W') of small random sizes."""
    import torch

    n = draw(st.integers(0, max_queries))
    m = draw(st.integers(0, max_targets))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    th, tw = draw(st.sampled_from([(h, w), (2 * h, 2 * w)]))
    logits = draw(hnp.arrays(np.float32, (1, n, h, w), elements=st.floats(-30, 30, width=32)))
    masks = draw(hnp.arrays(np.bool_, (1, m, th, tw)))
    return torch.from_numpy(logits), torch.from_numpy(masks)
