"""Sine position encodings: of feature-map pixels and of boxes.

Both follow the transformer's sinusoidal scheme (Vaswani et al., 2017) as DETR
applies it to images: each coordinate, normalised to [0, 2*pi], is encoded by
``num_feats`` sines and cosines of geometrically spaced frequencies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "sine_embedding"]


def sine_embedding(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Encode each coordinate with ``num_feats`` interleaved sines and cosines.

    Feature ``2i`` of a coordinate ``x`` is ``sin(x / T^(2i / num_feats))`` and feature
    ``2i + 1`` is ``cos(x / T^(2i / num_feats))``, ``T = temperature``.

    Args:
        coords (Tensor[..., K]): coordinates, already scaled (e.g. to [0, 2*pi]).
        num_feats: features per coordinate, even.
        temperature: the base ``T`` of the frequencies.

    Returns:
        Tensor[..., K * num_feats] float32: the encodings of the ``K`` coordinates, concatenated.
    """
    index = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    freq = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)
    angles = coords.float().unsqueeze(-1) / freq  # (..., K, F)
    encoded = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1)
    return encoded.flatten(-3)


class PositionEmbeddingSine(nn.Module):
    """Normalised sine encoding of pixel positions, ignoring padding.

    A pixel's (x, y) is its 1-based index among the *valid* pixels of its row and
    column, minus 0.5 (the pixel centre), divided by the number of valid pixels and
    scaled to [0, 2*pi]: the encoding spans the image whatever its padding.

    Args:
        num_feats: features per coordinate; the output has ``2 * num_feats`` channels
            (``hidden_dim / 2`` for a ``hidden_dim``-wide transformer).
        temperature: frequency base.

    Shape:
        mask (B, H, W) bool, True = padding -> (B, 2 * num_feats, H, W) float32, y
        features first, then x.
    """

    def __init__(self, num_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        valid = (~mask).float()
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        eps = 1e-6
        y = (y - 0.5) / (y[:, -1:, :] + eps) * (2 * math.pi)
        x = (x - 0.5) / (x[:, :, -1:] + eps) * (2 * math.pi)
        encoded = sine_embedding(torch.stack((y, x), dim=-1), self.num_feats, self.temperature)
        return encoded.permute(0, 3, 1, 2).contiguous()
