"""H-Deformable-DETR: Deformable-DETR++ with H-DETR's hybrid branch.

:func:`build_model` makes the detector from a :class:`~examples.detection.config.ModelConfig`;
:func:`postprocess` turns its outputs into scored boxes per image.

In training with ``num_queries_one2many = Q2 > 0`` the decoder runs the one-to-one
queries (``Q1``) and the one-to-many queries (``Q2``) in one pass, laid out
``[one-to-one | one-to-many]`` and kept apart in self-attention by
:func:`hybridmatch.hybrid_attention_mask` (the deformable cross-attention is per query,
so no other path mixes them). The one-to-one outputs are therefore exactly what the
model computes in eval, where only the ``Q1`` one-to-one queries run, unmasked.

Output layout (H-DETR's keys; N decoder layers, C classes, logits for a sigmoid/focal
loss, boxes cxcywh normalised to the image's own size):

* ``pred_logits`` (B, Q1, C), ``pred_boxes`` (B, Q1, 4): last decoder layer, one-to-one;
* ``aux_outputs``: N - 1 dicts with ``pred_logits`` / ``pred_boxes`` of layers 0..N-2;
* ``enc_outputs`` (two-stage): ``{"pred_logits": (B, S, C), "pred_boxes": (B, S, 4)}``, the
  per-pixel proposals of the encoder (S pixels of all levels; invalid ones have box 1.0);
* training (or ``one2many=True``) with Q2 > 0 only: ``pred_logits_one2many`` (B, Q2, C), ``pred_boxes_one2many``
  (B, Q2, 4) and ``aux_outputs_one2many``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridmatch import ShapeError, hybrid_attention_mask
from hybridmatch.boxes import box_cxcywh_to_xyxy

from .backbone import build_backbone
from .config import ModelConfig
from .position_encoding import PositionEmbeddingSine
from .transformer import DeformableTransformer

__all__ = ["HDeformableDETR", "add_query_outputs", "build_model", "postprocess"]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class HDeformableDETR(nn.Module):
    """The detector: backbone, input projections, position encoding, deformable transformer.

    Feature levels: the last ``min(L, n)`` of the backbone's ``n`` outputs, each projected
    to ``hidden_dim`` by a 1x1 conv + group norm; when ``L > n``, stride-2 3x3 convs
    (+ group norm) add coarser levels, the first on the backbone's last raw output,
    the next ones on the previous extra level. Each level gets a sine position encoding
    and a learned level embedding.

    Args:
        cfg: the configuration (see :class:`ModelConfig`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dim = cfg.hidden_dim
        self.backbone = build_backbone(cfg.backbone, cfg.backbone_weights)
        channels = self.backbone.out_channels
        self.num_backbone_levels = min(cfg.num_feature_levels, len(channels))
        projections: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(c, dim, 1), _group_norm(dim)) for c in channels[-self.num_backbone_levels :]
        ]
        in_channels = channels[-1]
        for _ in range(cfg.num_feature_levels - self.num_backbone_levels):
            projections.append(nn.Sequential(nn.Conv2d(in_channels, dim, 3, stride=2, padding=1), _group_norm(dim)))
            in_channels = dim
        self.input_proj = nn.ModuleList(projections)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.position_encoding = PositionEmbeddingSine(dim // 2)
        self.transformer = DeformableTransformer(cfg)

    @property
    def num_queries_one2one(self) -> int:
        return self.cfg.num_queries_one2one

    @property
    def num_queries_one2many(self) -> int:
        return self.cfg.num_queries_one2many

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None, *, one2many: bool | None = None) -> dict:
        """Detect objects in a padded batch.

        Args:
            images (Tensor[B, 3, H, W]): normalised images, padded at the bottom and right.
            pixel_mask (Tensor[B, H, W] bool, optional): True = padding; None = no padding.
            one2many (bool, optional): run the one-to-many group too (masked apart, so the
                one-to-one outputs do not change). None: in training only. True in eval is
                how the hybrid branch's one-to-many predictions are evaluated
                (:func:`examples.detection.nms.postprocess_one2many`).

        Returns:
            dict: the layout of the module docstring; the ``*_one2many`` keys only when the
            one-to-many group runs and ``num_queries_one2many > 0``.

        Raises:
            ShapeError: images is not (B, 3, H, W) floating, or pixel_mask does not match it.
        """
        _check_inputs(images, pixel_mask)
        if pixel_mask is None:
            pixel_mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        features = self.backbone(images)[-self.num_backbone_levels :]
        srcs, masks = [], []
        for projection, feature in zip(self.input_proj, features):
            srcs.append(projection(feature))
            masks.append(_resize_mask(pixel_mask, feature.shape[-2:]))
        previous = features[-1]
        for projection in self.input_proj[len(features) :]:
            previous = projection(previous)
            srcs.append(previous)
            masks.append(_resize_mask(pixel_mask, previous.shape[-2:]))
        pos_embeds = [self.position_encoding(mask) for mask in masks]

        num_one2one = self.cfg.num_queries_one2one
        run_one2many = self.training if one2many is None else one2many
        num_one2many = self.cfg.num_queries_one2many if run_one2many else 0
        attn_mask = None
        if num_one2many > 0:
            attn_mask = hybrid_attention_mask(num_one2one, num_one2many, device=images.device)
        result = self.transformer(srcs, masks, pos_embeds, num_one2one + num_one2many, attn_mask)

        logits, boxes = result.logits, result.boxes  # (N, B, Q, C), (N, B, Q, 4)
        outputs: dict = _layer_outputs(logits[:, :, :num_one2one], boxes[:, :, :num_one2one], "")
        if num_one2many > 0:
            outputs.update(
                _layer_outputs(logits[:, :, num_one2one:], boxes[:, :, num_one2one:], "_one2many")
            )
        if result.enc_logits is not None and result.enc_boxes is not None:
            outputs["enc_outputs"] = {"pred_logits": result.enc_logits, "pred_boxes": result.enc_boxes}
        return outputs


def _layer_outputs(logits: Tensor, boxes: Tensor, suffix: str) -> dict:
    return {
        f"pred_logits{suffix}": logits[-1],
        f"pred_boxes{suffix}": boxes[-1],
        f"aux_outputs{suffix}": [
            {"pred_logits": layer_logits, "pred_boxes": layer_boxes}
            for layer_logits, layer_boxes in zip(logits[:-1], boxes[:-1])
        ],
    }


def _resize_mask(mask: Tensor, size: torch.Size) -> Tensor:
    """Padding mask (Tensor[B, H, W] bool) resized to ``size`` by nearest neighbour."""
    return F.interpolate(mask[None].float(), size=tuple(size), mode="nearest")[0].bool()


def _check_inputs(images: object, pixel_mask: object) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ShapeError(f"HDeformableDETR: images must be a Tensor[B, 3, H, W], got {got}")
    if not images.is_floating_point():
        raise ShapeError(f"HDeformableDETR: images must be floating (normalised), got {images.dtype}")
    if pixel_mask is None:
        return
    expected = (images.shape[0], images.shape[2], images.shape[3])
    if not isinstance(pixel_mask, Tensor) or pixel_mask.dtype != torch.bool or tuple(pixel_mask.shape) != expected:
        got = (
            f"{tuple(pixel_mask.shape)} {pixel_mask.dtype}" if isinstance(pixel_mask, Tensor) else type(pixel_mask).__name__
        )
        raise ShapeError(
            f"HDeformableDETR: pixel_mask must be a bool Tensor{list(expected)} (True = padding) "
            f"matching images {tuple(images.shape)}, got {got}"
        )


def add_query_outputs(outputs: dict, key: str, per_layer: Sequence[Tensor], num_queries_one2one: int) -> dict:
    """Put a per-query head's output of every decoder layer into the detector's output layout.

    A task head (keypoints, masks) computes one tensor per decoder layer over all the
    queries; the first ``num_queries_one2one`` rows are the one-to-one group, the rest the
    hybrid branch's one-to-many group. This writes ``outputs[key]`` (last layer, one-to-one),
    ``outputs["aux_outputs"][i][key]`` (earlier layers) and, when the one-to-many group ran
    (``pred_logits_one2many`` is there), ``outputs[key + "_one2many"]`` and
    ``outputs["aux_outputs_one2many"][i][key]``.

    Args:
        outputs: the detector's output dict (changed in place and returned).
        key: the head's output name, e.g. ``"pred_keypoints"``.
        per_layer: L tensors ``(B, Q1 [+ Q2], ...)``, first decoder layer first.
        num_queries_one2one: ``Q1``.

    Example:
        >>> outputs = {"aux_outputs": [{}], "pred_logits_one2many": None, "aux_outputs_one2many": [{}]}
        >>> layers = [torch.arange(5).view(1, 5), 10 + torch.arange(5).view(1, 5)]
        >>> out = add_query_outputs(outputs, "pred_x", layers, 2)
        >>> out["pred_x"], out["pred_x_one2many"], out["aux_outputs"][0]["pred_x"]
        (tensor([[10, 11]]), tensor([[12, 13, 14]]), tensor([[0, 1]]))
    """
    outputs[key] = per_layer[-1][:, :num_queries_one2one]
    for aux, layer in zip(outputs["aux_outputs"], per_layer[:-1]):
        aux[key] = layer[:, :num_queries_one2one]
    if "pred_logits_one2many" in outputs:
        outputs[f"{key}_one2many"] = per_layer[-1][:, num_queries_one2one:]
        for aux, layer in zip(outputs["aux_outputs_one2many"], per_layer[:-1]):
            aux[key] = layer[:, num_queries_one2one:]
    return outputs


def build_model(cfg: ModelConfig) -> HDeformableDETR:
    """The H-Deformable-DETR detector for ``cfg`` (see :class:`HDeformableDETR`).

    Args:
        cfg: a :class:`ModelConfig` (``ModelConfig.tiny(num_classes)`` for the CPU).

    Returns:
        HDeformableDETR, in training mode.
    """
    return HDeformableDETR(cfg)


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: Tensor, top_k: int = 100) -> list[dict[str, Tensor]]:
    """Scored boxes per image from the one-to-one outputs; no NMS.

    Every (query, class) pair is a candidate with score ``sigmoid(logit)``; the ``top_k``
    best per image are kept, highest first (a query may appear with several classes).

    Args:
        outputs: the model's output; uses ``pred_logits`` (B, Q, C) and ``pred_boxes``
            (B, Q, 4) cxcywh normalised.
        target_sizes (Tensor[B, 2]): (height, width) to scale each image's boxes to
            (usually the original image size).
        top_k: candidates per image, at most ``Q * C`` (fewer when there are fewer pairs).

    Returns:
        list of B dicts: ``scores`` (Tensor[k] float32, descending), ``labels``
        (Tensor[k] int64, 0..C-1), ``boxes`` (Tensor[k, 4] float32, xyxy absolute).
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3 or boxes.shape[:2] != logits.shape[:2] or boxes.shape[-1] != 4:
        raise ShapeError(
            f"postprocess: pred_logits must be (B, Q, C) and pred_boxes (B, Q, 4), got "
            f"{tuple(logits.shape)} and {tuple(boxes.shape)}"
        )
    if target_sizes.shape != (logits.shape[0], 2):
        raise ShapeError(
            f"postprocess: target_sizes must be (B, 2) = ({logits.shape[0]}, 2) (height, width), "
            f"got {tuple(target_sizes.shape)}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ShapeError(f"postprocess: top_k must be an int >= 1, got {top_k!r}")
    batch, num_queries, num_classes = logits.shape
    scores = logits.float().sigmoid().flatten(1)  # (B, Q*C), query-major
    k = min(top_k, num_queries * num_classes)
    top_scores, top_index = scores.topk(k, dim=1, sorted=True)
    query = torch.div(top_index, num_classes, rounding_mode="floor")
    labels = top_index % num_classes
    xyxy = box_cxcywh_to_xyxy(boxes.float())
    xyxy = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    height, width = target_sizes.float().unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None, :]
    xyxy = xyxy * scale
    return [{"scores": top_scores[b], "labels": labels[b], "boxes": xyxy[b]} for b in range(batch)]
