"""Deformable transformer of H-Deformable-DETR: encoder, decoder, two-stage query selection.

The pieces, as in Deformable-DETR (Zhu et al., ICLR 2021) with the "++" additions
H-DETR builds on (Jia et al., CVPR 2023; mixed query selection and
look-forward-twice from DINO, Zhang et al., ICLR 2023):

* **Encoder**: ``enc_layers`` post-norm layers of multi-scale deformable
  self-attention over the flattened feature levels + FFN; every pixel samples
  around its own centre on every level.
* **Two-stage proposals** (:func:`encoder_output_proposals`): every valid pixel of
  level ``l`` proposes a box centred on it, ``0.05 * 2**l`` wide and high; a class
  head and a box head (a delta on the proposal, in logit space) on the encoder
  memory score and refine them. The class head is trained class-agnostically (every
  object has label 0, see :class:`examples.detection.criterion.SetCriterion`), so, as
  in the official H-Deformable-DETR, proposals are ranked by the logit of class 0,
  the objectness score; the other columns only ever learn "no object". The top
  ``Q1 + Q2``, sorted descending, seed the decoder: ranks ``1..Q1`` the one-to-one
  group, the rest the one-to-many group, so the one-to-one group gets the same
  proposals with or without the hybrid branch.
* **Mixed query selection**: a query's position embedding comes from its proposal
  box; its content is a learned embedding (one per query slot).
* **Initialisation** as the official code: Xavier-uniform for every matrix of the
  encoder and decoder layers and of the two-stage projections, the deformable
  attention's own scheme, normal level embeddings; class heads start at the focal
  prior, the last layer of each box head at zero. The one-to-many rows of the
  content embedding come from their own random stream (seeded by one draw of the
  global stream), so a model with the hybrid branch starts from exactly the weights
  of the one-to-one model built with the same seed, plus its extra rows
  (:meth:`DeformableTransformer.reset_parameters`).
* **Decoder**: ``dec_layers`` layers of self-attention (with the hybrid mask in
  training) + deformable cross-attention around the query's reference box + FFN.
  With iterative box refinement each layer has its own class and box heads and
  the reference boxes are refined layer by layer (see :class:`DeformableDecoder`).

Tensors are batch-first: B images, S flattened pixels of all levels, Q queries,
D the model width, C classes, L levels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridmatch import ShapeError

from .config import ModelConfig
from .deformable_attention import MultiScaleDeformableAttention
from .position_encoding import sine_embedding

__all__ = [
    "MLP",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableEncoderLayer",
    "DeformableTransformer",
    "TransformerOutput",
    "encoder_output_proposals",
    "encoder_reference_points",
    "inverse_sigmoid",
    "valid_ratios",
]

#: Bias of every class head at initialisation: sigmoid(bias) = 0.01 (focal-loss prior).
CLASS_PRIOR_BIAS: float = -math.log((1 - 0.01) / 0.01)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms to >= ``eps``.

    Args:
        x (Tensor[...]): values in [0, 1] (boxes in cxcywh normalised).

    Returns:
        Tensor[...]: finite logits, in ``x``'s dtype.
    """
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them.

    Shape:
        (..., in_dim) -> (..., out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _FeedForward(nn.Module):
    """Post-norm residual FFN: ``norm(x + drop(W2 drop(relu(W1 x))))``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels + FFN, post-norm.

    Args:
        dim: model width ``D``. ffn_dim: FFN hidden width. dropout: dropout rate.
        num_heads / num_levels / num_points: of the deformable attention.
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = _FeedForward(dim, ffn_dim, dropout)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos (Tensor[B, S, D]); reference_points (Tensor[B, S, L, 2]); padding_mask
        (Tensor[B, S] bool, True = padding) -> Tensor[B, S, D]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableDecoderLayer(nn.Module):
    """Self-attention between queries, deformable cross-attention to the memory, FFN.

    The self-attention is :class:`torch.nn.MultiheadAttention`; its ``attn_mask`` is a
    bool ``(Q, Q)`` mask, True = blocked (:func:`hybridmatch.hybrid_attention_mask`).
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _FeedForward(dim, ffn_dim, dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        memory_padding_mask: Tensor,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt, query_pos (Tensor[B, Q, D]); reference_points (Tensor[B, Q, L, 2 or 4]);
        memory (Tensor[B, S, D]); memory_padding_mask (Tensor[B, S] bool); self_attn_mask
        (Tensor[Q, Q] bool, True = blocked, or None) -> Tensor[B, Q, D]."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.ffn(tgt)


def _apply_delta(delta: Tensor, reference: Tensor) -> Tensor:
    """Box logits ``delta + inverse_sigmoid(reference)``; a 2-d reference moves only (cx, cy)."""
    if reference.shape[-1] == 4:
        return delta + inverse_sigmoid(reference)
    return torch.cat((delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]), dim=-1)


class DeformableDecoder(nn.Module):
    """The decoder layers with their prediction heads and the box-refinement loop.

    Every layer ``i`` predicts class logits ``class_heads[i](h_i)`` and a box delta
    ``d_i = box_heads[i](h_i)`` in logit space.

    * **Iterative box refinement** (``with_box_refine``): layer ``i`` refines its input
      reference ``r_{i-1}`` to ``r_i = sigmoid(d_i + inverse_sigmoid(r_{i-1}))`` and
      layer ``i + 1`` samples around ``r_i.detach()``: gradients never run from one
      layer's sampling into the previous layers' boxes. Without refinement every layer
      uses the initial reference and shares the heads.
    * **Look-forward-twice** (``look_forward_twice``, DINO): the box that layer ``i``'s
      *loss* sees is ``b_i = sigmoid(d_i + inverse_sigmoid(u_{i-1}))``, where ``u_{i-1}``
      is layer ``i - 1``'s refined box *before* detaching,
      ``u_{i-1} = sigmoid(d_{i-1} + inverse_sigmoid(r_{i-2}))``. ``b_i`` has the same
      value as ``r_i``; only the gradient differs: layer ``i``'s loss also reaches layer
      ``i - 1``'s head and layer (one step back, not further), so each layer's box is
      trained by its own loss and by how well the next layer refines it. Without it
      ``b_i = sigmoid(d_i + inverse_sigmoid(r_{i-1}))`` with ``r_{i-1}`` detached
      (Deformable-DETR). For layer 0, ``u_{-1}`` is the initial reference as given.

    Args:
        layer: a decoder layer, copied ``num_layers`` times.
        num_layers: decoder depth ``N``.
        class_heads / box_heads: ``N`` heads each (the same module repeated when they are
            shared).
        with_box_refine, look_forward_twice: see above.
    """

    def __init__(
        self,
        layer: DeformableDecoderLayer,
        num_layers: int,
        class_heads: nn.ModuleList,
        box_heads: nn.ModuleList,
        *,
        with_box_refine: bool,
        look_forward_twice: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.class_heads = class_heads
        self.box_heads = box_heads
        self.with_box_refine = with_box_refine
        self.look_forward_twice = look_forward_twice

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        level_valid_ratios: Tensor,
        memory_padding_mask: Tensor,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the layers and their heads.

        Args:
            tgt, query_pos (Tensor[B, Q, D]): content queries and their position embedding.
            reference (Tensor[B, Q, 4] or Tensor[B, Q, 2]): initial boxes cxcywh (or
                points xy) in [0, 1] of the valid image.
            memory (Tensor[B, S, D]): encoder output. memory_padding_mask (Tensor[B, S] bool).
            spatial_shapes: ``[(h_l, w_l)]`` host ints.
            level_valid_ratios (Tensor[B, L, 2]): valid fraction (w, h) of each level's map.
            self_attn_mask (Tensor[Q, Q] bool or None): True = blocked.

        Returns:
            (logits Tensor[N, B, Q, C], boxes Tensor[N, B, Q, 4] cxcywh in [0, 1]), one entry
            per layer.
        """
        ratios4 = torch.cat((level_valid_ratios, level_valid_ratios), dim=-1)
        output = tgt
        sampling_reference = reference  # what the next layer samples around (detached once refined)
        loss_reference = reference  # what the next layer's loss box builds on
        all_logits, all_boxes = [], []
        for index, layer in enumerate(self.layers):
            ratios = ratios4 if sampling_reference.shape[-1] == 4 else level_valid_ratios
            reference_input = sampling_reference[:, :, None] * ratios[:, None]
            output = layer(
                output, query_pos, reference_input, memory, spatial_shapes, memory_padding_mask, self_attn_mask
            )
            delta = self.box_heads[index](output)
            all_logits.append(self.class_heads[index](output))
            refined = _apply_delta(delta, sampling_reference).sigmoid()
            if self.look_forward_twice and loss_reference is not sampling_reference:
                all_boxes.append(_apply_delta(delta, loss_reference).sigmoid())
            else:
                all_boxes.append(refined)
            if self.with_box_refine:
                loss_reference = refined
                sampling_reference = refined.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)


def valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of a padded map that holds the image, per image.

    Args:
        mask (Tensor[B, h, w] bool): True = padding (padding is at the bottom and right).

    Returns:
        Tensor[B, 2] float32: (valid width / w, valid height / h).
    """
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack((valid_w / w, valid_h / h), dim=-1)


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], level_valid_ratios: Tensor) -> Tensor:
    """Reference point of every encoder pixel on every level: its own centre.

    A pixel's centre is normalised by the valid size of its level, then mapped onto
    each level's padded map by that level's valid ratio.

    Args:
        spatial_shapes: ``[(h_l, w_l)]`` host ints.
        level_valid_ratios (Tensor[B, L, 2]): from :func:`valid_ratios` per level.

    Returns:
        Tensor[B, S, L, 2] float32: (x, y) in [0, 1] of each level's padded map.
    """
    device = level_valid_ratios.device
    points = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        x = xs.reshape(1, -1) / (level_valid_ratios[:, None, level, 0] * w)
        y = ys.reshape(1, -1) / (level_valid_ratios[:, None, level, 1] * h)
        points.append(torch.stack((x, y), dim=-1))  # (B, h*w, 2)
    return torch.cat(points, dim=1)[:, :, None] * level_valid_ratios[:, None]


def encoder_output_proposals(
    memory: Tensor, padding_mask: Tensor, spatial_shapes: Sequence[tuple[int, int]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel anchor boxes for the two-stage proposals.

    Pixel ``(i, j)`` of level ``l`` proposes the box centred on it, normalised by the
    level's valid size, with width and height ``0.05 * 2**l``. A proposal is valid if
    its pixel is not padding and all four coordinates lie in (0.01, 0.99).

    Args:
        memory (Tensor[B, S, D]): encoder output.
        padding_mask (Tensor[B, S] bool): True = padding.
        spatial_shapes: ``[(h_l, w_l)]`` host ints.

    Returns:
        memory (Tensor[B, S, D]) with invalid positions zeroed; proposals
        (Tensor[B, S, 4] float32) in logit space (``inverse_sigmoid`` of cxcywh), ``+inf``
        where invalid, so that ``sigmoid`` gives 1 there; valid (Tensor[B, S] bool).
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        level_mask = padding_mask[:, start : start + h * w].view(batch, h, w)
        start += h * w
        valid_h = (~level_mask[:, :, 0]).sum(1).float().clamp(min=1)
        valid_w = (~level_mask[:, 0, :]).sum(1).float().clamp(min=1)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=memory.device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=memory.device) + 0.5,
            indexing="ij",
        )
        cx = xs.reshape(1, -1) / valid_w[:, None]
        cy = ys.reshape(1, -1) / valid_h[:, None]
        size = torch.full_like(cx, 0.05 * 2.0**level)
        proposals.append(torch.stack((cx, cy, size, size), dim=-1))
    boxes = torch.cat(proposals, dim=1)
    valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & ~padding_mask
    logits = torch.log(boxes / (1.0 - boxes)).masked_fill(~valid[..., None], float("inf"))
    memory = memory.masked_fill(~valid[..., None], 0.0)
    return memory, logits, valid


class TransformerOutput(NamedTuple):
    """What :class:`DeformableTransformer` returns.

    Attributes:
        logits (Tensor[N, B, Q, C]): class logits of every decoder layer.
        boxes (Tensor[N, B, Q, 4]): boxes cxcywh in [0, 1] of every decoder layer.
        enc_logits (Tensor[B, S, C] or None): two-stage proposal class logits.
        enc_boxes (Tensor[B, S, 4] or None): two-stage proposal boxes (1.0 where invalid).
    """

    logits: Tensor
    boxes: Tensor
    enc_logits: Tensor | None
    enc_boxes: Tensor | None


class DeformableTransformer(nn.Module):
    """Encoder, query selection and decoder of H-Deformable-DETR (see the module docstring).

    Args:
        cfg: the model configuration; uses the width, depth, levels, points, query counts
            and the two_stage / with_box_refine / mixed_selection / look_forward_twice flags.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.hidden_dim
        self.cfg = cfg
        self.hidden_dim = dim
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, dim))
        encoder_layer = DeformableEncoderLayer(
            dim, cfg.dim_feedforward, cfg.dropout, cfg.nheads, cfg.num_feature_levels, cfg.enc_n_points
        )
        self.encoder_layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(cfg.enc_layers))
        class_head = nn.Linear(dim, cfg.num_classes)
        box_head = MLP(dim, dim, 4, 3)
        count = cfg.dec_layers
        if cfg.with_box_refine:
            class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(count))
            box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(count))
        else:
            class_heads = nn.ModuleList([class_head] * count)
            box_heads = nn.ModuleList([box_head] * count)
        decoder_layer = DeformableDecoderLayer(
            dim, cfg.dim_feedforward, cfg.dropout, cfg.nheads, cfg.num_feature_levels, cfg.dec_n_points
        )
        self.decoder = DeformableDecoder(
            decoder_layer,
            count,
            class_heads,
            box_heads,
            with_box_refine=cfg.with_box_refine,
            look_forward_twice=cfg.look_forward_twice,
        )
        total_queries = cfg.num_queries
        if cfg.two_stage:
            self.enc_output = nn.Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
            self.enc_class_head = nn.Linear(dim, cfg.num_classes)
            self.enc_box_head = MLP(dim, dim, 4, 3)
            self.pos_trans = nn.Linear(2 * dim, 2 * dim)
            self.pos_trans_norm = nn.LayerNorm(2 * dim)
            if cfg.mixed_selection:
                # Filled in reset_parameters; no draw here keeps the stream independent of Q2.
                self.query_content = nn.Embedding(total_queries, dim, _weight=torch.empty(total_queries, dim))
        else:
            self.query_embed = nn.Embedding(total_queries, 2 * dim, _weight=torch.empty(total_queries, 2 * dim))
            self.reference_points = nn.Linear(dim, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the official H-Deformable-DETR does (see the module docstring).

        Every draw from the global random stream happens in an order and amount that do
        not depend on ``num_queries_one2many``: the ``Q1`` one-to-one rows of the query
        embedding come from the global stream, the ``Q2`` one-to-many rows from a
        generator seeded by one draw of it, made whatever ``Q2`` is. Models of the same
        configuration but for ``Q2``, built after the same ``torch.manual_seed``, hence
        share every other weight exactly.
        """
        # Xavier on the matrices of the layers and projections (the official
        # _reset_parameters); the heads are outside the official transformer and keep theirs.
        xavier: list[nn.Module] = [*self.encoder_layers, *self.decoder.layers]
        xavier += [self.enc_output, self.pos_trans] if self.cfg.two_stage else [self.reference_points]
        for module in xavier:
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)
        embedding = self.query_content if self.cfg.two_stage and self.cfg.mixed_selection else getattr(
            self, "query_embed", None)
        side_seed = int(torch.randint(0, 2**62, ()))  # drawn whether or not there is a one2many group
        if embedding is not None:
            one2one = self.cfg.num_queries_one2one
            with torch.no_grad():
                nn.init.normal_(embedding.weight[:one2one])
                side = torch.Generator(device="cpu").manual_seed(side_seed)
                rest = embedding.weight.shape[0] - one2one
                embedding.weight[one2one:] = torch.randn(rest, embedding.weight.shape[1], generator=side)
        heads: list[nn.Linear] = list(self.decoder.class_heads)
        boxes: list[MLP] = list(self.decoder.box_heads)
        if self.cfg.two_stage:
            heads.append(self.enc_class_head)
            boxes.append(self.enc_box_head)
        else:
            nn.init.constant_(self.reference_points.bias, 0.0)
        for head in heads:
            nn.init.constant_(head.bias, CLASS_PRIOR_BIAS)
        for box in boxes:
            last = box.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            if not self.cfg.two_stage:
                # One-stage references are points: start from boxes about 0.12 wide.
                nn.init.constant_(last.bias[2:], -2.0)

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos_embeds: Sequence[Tensor],
        num_queries: int,
        self_attn_mask: Tensor | None = None,
    ) -> TransformerOutput:
        """Encode the feature levels, select ``num_queries`` queries and decode them.

        Args:
            srcs: ``L`` maps Tensor[B, D, h_l, w_l] (projected features).
            masks: ``L`` Tensor[B, h_l, w_l] bool, True = padding.
            pos_embeds: ``L`` Tensor[B, D, h_l, w_l] position encodings.
            num_queries: ``Q`` queries to decode (``Q1 + Q2`` in hybrid training, ``Q1`` in
                eval), at most the number of query embeddings.
            self_attn_mask (Tensor[Q, Q] bool or None): the decoder's self-attention mask.

        Returns:
            TransformerOutput.
        """
        if not 1 <= num_queries <= self.cfg.num_queries:
            raise ShapeError(
                f"DeformableTransformer: num_queries must be in [1, {self.cfg.num_queries}], got {num_queries}"
            )
        spatial_shapes = [(int(src.shape[-2]), int(src.shape[-1])) for src in srcs]
        flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        flat_mask = torch.cat([mask.flatten(1) for mask in masks], dim=1)
        flat_pos = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level] for level, pos in enumerate(pos_embeds)],
            dim=1,
        )
        level_ratios = torch.stack([valid_ratios(mask) for mask in masks], dim=1)  # (B, L, 2)

        memory = flat_src
        if len(self.encoder_layers) > 0:
            enc_reference = encoder_reference_points(spatial_shapes, level_ratios)
            for layer in self.encoder_layers:
                memory = layer(memory, flat_pos, enc_reference, spatial_shapes, flat_mask)

        batch, dim = memory.shape[0], self.hidden_dim
        enc_logits = enc_boxes = None
        if self.cfg.two_stage:
            proposal_memory, proposals, valid = encoder_output_proposals(memory, flat_mask, spatial_shapes)
            proposal_memory = self.enc_output_norm(self.enc_output(proposal_memory))
            enc_logits = self.enc_class_head(proposal_memory)
            enc_coords = self.enc_box_head(proposal_memory) + proposals  # +inf where invalid
            enc_boxes = enc_coords.sigmoid()
            top = _top_proposals(enc_logits, valid, num_queries)
            reference = torch.gather(enc_coords.detach(), 1, top[..., None].expand(-1, -1, 4)).sigmoid()
            box_embedding = sine_embedding(reference * (2 * math.pi), dim // 2).to(memory.dtype)
            pos_content = self.pos_trans_norm(self.pos_trans(box_embedding))
            query_pos, tgt = pos_content.split(dim, dim=-1)
            if self.cfg.mixed_selection:
                tgt = self.query_content.weight[:num_queries].unsqueeze(0).expand(batch, -1, -1)
        else:
            embeddings = self.query_embed.weight[:num_queries].unsqueeze(0).expand(batch, -1, -1)
            query_pos, tgt = embeddings.split(dim, dim=-1)
            reference = self.reference_points(query_pos).sigmoid()

        logits, boxes = self.decoder(
            tgt, query_pos, reference, memory, spatial_shapes, level_ratios, flat_mask, self_attn_mask
        )
        return TransformerOutput(logits, boxes, enc_logits, enc_boxes)


def _top_proposals(enc_logits: Tensor, valid: Tensor, k: int) -> Tensor:
    """Indices (Tensor[B, k] int64) of the ``k`` proposals with the highest objectness.

    The objectness is the logit of class 0, the one the class-agnostic encoder loss trains
    (the official ``topk(enc_outputs_class[..., 0])``). Sorted by descending score; invalid
    proposals rank last. When there are fewer than ``k`` positions (tiny images), the
    ranking is repeated cyclically to fill ``k`` slots.
    """
    scores = enc_logits.detach()[..., 0].float().masked_fill(~valid, float("-inf"))
    available = scores.shape[1]
    top = scores.topk(min(k, available), dim=1, sorted=True).indices
    if k > available:
        repeat = torch.arange(k, device=top.device) % available
        top = top[:, repeat]
    return top
