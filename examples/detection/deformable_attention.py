"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021), pure PyTorch.

Each query attends to a few sampled points per head and feature level instead of
every key: it predicts ``P`` sampling offsets around its reference point on each of
the ``L`` levels and one weight per sampled point (softmax over the ``L * P`` points
of a head). Values are read at fractional positions by bilinear interpolation
(:func:`torch.nn.functional.grid_sample`, zeros outside the map, ``align_corners=False``,
so a normalised coordinate ``u`` in [0, 1] lies ``u * W`` pixels from the left edge
and pixel ``j``'s centre is at ``(j + 0.5) / W``).

The sampling runs in float32 whatever the input dtype (AMP-safe), on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridmatch import ShapeError

__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention"]


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The core of deformable attention: weighted sum of bilinearly sampled values.

    Args:
        value (Tensor[B, S, H, Dh]): per-head values of all levels, flattened level by
            level (row-major within a level), ``S = sum(h * w)``.
        spatial_shapes: ``[(h_0, w_0), ..., (h_{L-1}, w_{L-1})]`` host ints, the size of
            each level.
        sampling_locations (Tensor[B, Q, H, L, P, 2]): (x, y) in [0, 1] of each level's
            map (points outside read zeros).
        attention_weights (Tensor[B, Q, H, L, P]): weight of each sampled point.

    Returns:
        Tensor[B, Q, H * Dh] in ``value``'s dtype: heads concatenated.
    """
    batch, num_values, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if sum(h * w for h, w in spatial_shapes) != num_values or len(spatial_shapes) != num_levels:
        raise ShapeError(
            f"multi_scale_deformable_attention: spatial_shapes {list(spatial_shapes)} give "
            f"{sum(h * w for h, w in spatial_shapes)} values in {len(spatial_shapes)} levels, but "
            f"value has S = {num_values} and sampling_locations L = {num_levels}"
        )
    out_dtype = value.dtype
    # grid_sample wants (N, C, h, w) maps and (N, Q, P, 2) grids in [-1, 1]; fold heads into N.
    value = value.float().permute(0, 2, 3, 1).reshape(batch * num_heads, head_dim, num_values)
    grids = 2.0 * sampling_locations.float() - 1.0
    grids = grids.permute(0, 2, 1, 3, 4, 5).reshape(batch * num_heads, num_queries, num_levels, num_points, 2)
    sampled = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        level_map = value[:, :, start : start + h * w].reshape(batch * num_heads, head_dim, h, w)
        start += h * w
        sampled.append(
            F.grid_sample(
                level_map, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # (B*H, Dh, Q, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*H, Dh, Q, L*P)
    weights = attention_weights.float().permute(0, 2, 1, 3, 4)
    weights = weights.reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    out = (stacked * weights).sum(-1)  # (B*H, Dh, Q)
    out = out.reshape(batch, num_heads * head_dim, num_queries).transpose(1, 2)
    return out.to(out_dtype)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``L`` feature levels with ``P`` points per head and level.

    Initialisation: the offsets start on a direction grid (head ``h`` looks along the
    angle ``2*pi*h/H``, point ``p`` at distance ``p + 1`` pixels, the direction scaled
    so that its larger component is 1), attention weights start uniform, value and
    output projections Xavier-uniform.

    Args:
        embed_dim: model width ``D`` (a multiple of ``num_heads``).
        num_heads: heads ``H``.
        num_levels: feature levels ``L``.
        num_points: sampling points ``P`` per head and level.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ShapeError(
                f"MultiScaleDeformableAttention: embed_dim ({embed_dim}) must be a multiple of "
                f"num_heads ({num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack((angles.cos(), angles.sin()), dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distance = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * distance[None, None, :, None]  # (H, 1, P, 2)
        grid = grid.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to points sampled around its reference on every level.

        Args:
            query (Tensor[B, Q, D]): queries (with their position embedding added).
            reference_points (Tensor[B, Q, L, 2] or Tensor[B, Q, L, 4]): per level, a point
                (x, y) in [0, 1] of that level's map — offsets are then in pixels of the
                level — or a box (cx, cy, w, h) — offsets are then fractions of the half box,
                divided by ``P``.
            value (Tensor[B, S, D]): the flattened maps of all levels (``S = sum(h * w)``).
            spatial_shapes: ``[(h_l, w_l)]`` host ints, one per level.
            value_padding_mask (Tensor[B, S] bool, optional): True = padding; such values
                read as zero.

        Returns:
            Tensor[B, Q, D].
        """
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ShapeError(
                f"MultiScaleDeformableAttention: built for {levels} levels, got spatial_shapes "
                f"for {len(spatial_shapes)}"
            )
        if reference_points.dim() != 4 or reference_points.shape[2] != levels or reference_points.shape[-1] not in (2, 4):
            raise ShapeError(
                f"MultiScaleDeformableAttention: reference_points must be (B, Q, {levels}, 2 or 4), "
                f"got {tuple(reference_points.shape)}"
            )
        projected = self.value_proj(value)
        if value_padding_mask is not None:
            projected = projected.masked_fill(value_padding_mask[..., None], 0.0)
        projected = projected.view(batch, num_values, heads, self.embed_dim // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.float().softmax(-1).view(batch, num_queries, heads, levels, points)
        offsets = offsets.float()
        reference_points = reference_points.float()
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (w_l, h_l).
            sizes = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device
            )
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
            )
        else:
            centres = reference_points[:, :, None, :, None, :2]
            half_sizes = reference_points[:, :, None, :, None, 2:] * 0.5
            locations = centres + offsets / points * half_sizes
        out = multi_scale_deformable_attention(projected, spatial_shapes, locations, weights)
        return self.output_proj(out)
