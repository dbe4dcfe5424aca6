"""A Mask2Former / MaskDINO-style instance-segmentation DETR on the detection example's model.

:class:`MaskDETR` wraps :class:`examples.detection.model.HDeformableDETR` (backbone,
deformable encoder, two-stage query selection, box-refining decoder, the hybrid branch's
query groups kept apart by :func:`hybridmatch.hybrid_attention_mask`) and adds

* a light **pixel decoder**: the encoder's finest level (stride 8), upsampled to stride 4
  and added to a lateral from a two-conv stem on the image, then a 3x3 conv, group norm,
  ReLU and a 1x1 conv: per-pixel embeddings ``F`` (Tensor[B, D, H/4, W/4]);
* a **mask head**: an MLP turns each decoder layer's query state into a mask embedding
  ``e``; the query's mask logits are ``e . F`` at every pixel (Mask2Former's formula).

It reads the decoder's per-layer query states and the encoder's output with forward hooks
on the detector's modules, so the detection model is reused unchanged. Each output dict of
the detector (final, ``aux_outputs``, and the ``*_one2many`` ones of the hybrid branch)
gains ``pred_masks`` (Tensor[B, Q, H/4, W/4]) next to ``pred_logits`` and ``pred_boxes``;
``enc_outputs`` keeps boxes only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from examples.detection.config import ModelConfig
from examples.detection.model import HDeformableDETR, add_query_outputs
from examples.detection.model import build_model as build_detector
from examples.detection.transformer import MLP

__all__ = ["MaskDETR", "build_model"]


def _conv_gn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(math.gcd(8, cout), cout), nn.ReLU(inplace=True))


class MaskDETR(nn.Module):
    """The detector of ``cfg`` plus a pixel decoder and a mask head (see the module docstring).

    Args:
        cfg: the detector's :class:`~examples.detection.config.ModelConfig`
            (``ModelConfig.tiny(C)`` for the CPU).
        stem_channels: width of the image stem.
        mask_stride: 4 (Mask2Former) or 2 (finer masks for small images): the stride of the
            per-pixel embeddings and hence of the mask logits.
    """

    def __init__(self, cfg: ModelConfig, stem_channels: int = 32, mask_stride: int = 4) -> None:
        super().__init__()
        if mask_stride not in (2, 4):
            raise ValueError(f"MaskDETR: mask_stride must be 2 or 4, got {mask_stride!r}")
        self.detector: HDeformableDETR = build_detector(cfg)
        self.mask_stride = mask_stride
        dim = cfg.hidden_dim
        stages = [_conv_gn_relu(3, stem_channels, 2)]
        if mask_stride == 4:
            stages.append(_conv_gn_relu(stem_channels, stem_channels, 2))
        else:
            stages.append(_conv_gn_relu(stem_channels, stem_channels, 1))
        self.stem = nn.Sequential(*stages)
        self.lateral = nn.Conv2d(stem_channels, dim, 1)
        self.fuse = _conv_gn_relu(dim, dim)
        self.pixel_embed = nn.Conv2d(dim, dim, 1)
        self.mask_embed = MLP(dim, dim, dim, 3)
        self._captured: dict[str, Any] = {}
        detector = self.detector
        detector.input_proj[0].register_forward_hook(self._capture("level0"))
        if len(detector.transformer.encoder_layers):
            detector.transformer.encoder_layers[-1].register_forward_hook(self._capture("memory"))
        for layer in detector.transformer.decoder.layers:
            layer.register_forward_hook(self._capture("queries", append=True))

    @property
    def cfg(self) -> ModelConfig:
        return self.detector.cfg

    def _capture(self, name: str, append: bool = False) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            if append:
                self._captured.setdefault(name, []).append(output)
            else:
                self._captured[name] = output
        return hook

    def pixel_embeddings(self, images: Tensor) -> Tensor:
        """Per-pixel embeddings (Tensor[B, D, ceil(H/s), ceil(W/s)], ``s = mask_stride``) of the last forward."""
        level0 = self._captured["level0"]  # (B, D, h0, w0): the projected stride-8 map
        fine = level0
        if "memory" in self._captured:  # the encoder's output, level 0 first
            h0, w0 = level0.shape[-2:]
            memory = self._captured["memory"][:, : h0 * w0]
            fine = memory.transpose(1, 2).reshape(level0.shape)
        lateral = self.lateral(self.stem(images))
        fine = F.interpolate(fine, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        return self.pixel_embed(self.fuse(fine + lateral))

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None, *, one2many: bool | None = None) -> dict:
        """Segment the objects of a padded batch.

        Args: as :meth:`examples.detection.model.HDeformableDETR.forward`.

        Returns:
            dict: the detector's outputs, every decoder-level dict with ``pred_masks``
            (Tensor[B, Q, H/4, W/4] mask logits over the padded canvas) added.
        """
        self._captured = {}
        try:
            outputs = self.detector(images, pixel_mask, one2many=one2many)
            pixels = self.pixel_embeddings(images)
            queries = self._captured["queries"]  # N layers of (B, Q1 [+ Q2], D)
        finally:
            self._captured = {}
        masks = [torch.einsum("bqd,bdhw->bqhw", self.mask_embed(q), pixels) for q in queries]
        return add_query_outputs(outputs, "pred_masks", masks, self.cfg.num_queries_one2one)


def build_model(cfg: ModelConfig, mask_stride: int = 4) -> MaskDETR:
    """The segmentation model for ``cfg`` (see :class:`MaskDETR`), in training mode.

    Built after ``torch.manual_seed(s)``, models that differ only in
    ``cfg.num_queries_one2many`` share every weight but the one-to-many query rows (the
    detector guarantees it for its part; the mask parts are drawn after it and do not
    depend on the query count).
    """
    return MaskDETR(cfg, mask_stride=mask_stride)
