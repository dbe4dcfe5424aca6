"""A keypoint DETR in the spirit of PETR / ED-Pose on H-Deformable-DETR's pieces.

:class:`PoseDETR` is :class:`examples.detection.model.HDeformableDETR` (backbone, input
projections, deformable encoder, two-stage query selection, decoder with box refinement,
the hybrid branch's query groups kept apart by :func:`hybridmatch.hybrid_attention_mask`)
with one class ("person" or "figure") and a keypoint head on every decoder layer.

Keypoints are regressed absolutely, from the query's reference point and refined layer by
layer, like the boxes: the query starts with all J keypoints at the centre of its initial
reference box ``r``; decoder layer ``i`` predicts a delta ``d_i (J x 2)`` from its output
and moves them to ``k_i = sigmoid(d_i + inverse_sigmoid(k_{i-1}))``, where ``k_{i-1}``
(detached, as the boxes are) is the previous layer's keypoints. The heads read each decoder
layer's output and the initial reference through forward hooks on the detection decoder,
so that decoder runs unchanged; the one-to-one / one-to-many split of its queries is the
detector's (``[one-to-one | one-to-many]``).

Output layout: the detector's (see :mod:`examples.detection.model`) plus
``pred_keypoints (B, Q1, J, 2)`` (x, y normalised to the image's own size) in the final
output and every ``aux_outputs[i]``, and ``pred_keypoints_one2many`` /
``aux_outputs_one2many[i]["pred_keypoints"]`` when the one-to-many group runs. The
two-stage ``enc_outputs`` have no keypoints.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from examples.detection.config import ModelConfig
from examples.detection.model import HDeformableDETR, add_query_outputs
from examples.detection.transformer import MLP, inverse_sigmoid
from hybridmatch import ShapeError

__all__ = ["PoseDETR", "build_model", "postprocess"]


class PoseDETR(nn.Module):
    """The keypoint DETR (see the module docstring).

    Args:
        cfg: the detector's :class:`~examples.detection.config.ModelConfig` (``num_classes`` 1
            for people; ``ModelConfig.tiny(1)`` on the CPU).
        num_joints: J, keypoints per object.
    """

    def __init__(self, cfg: ModelConfig, num_joints: int) -> None:
        super().__init__()
        if isinstance(num_joints, bool) or not isinstance(num_joints, int) or num_joints < 1:
            raise ValueError(f"PoseDETR: num_joints must be an int >= 1, got {num_joints!r}")
        self.detr = HDeformableDETR(cfg)
        self.cfg = cfg
        self.num_joints = num_joints
        head = MLP(cfg.hidden_dim, cfg.hidden_dim, 2 * num_joints, 3)
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
        self.keypoint_heads = nn.ModuleList(copy.deepcopy(head) for _ in range(cfg.dec_layers))
        self._captured: dict[str, Any] = {}
        decoder = self.detr.transformer.decoder
        decoder.register_forward_pre_hook(self._capture_reference)
        for layer in decoder.layers:
            layer.register_forward_hook(self._capture_layer)

    # The hooks: the decoder's initial reference (its third argument) and every layer's output.
    def _capture_reference(self, module: nn.Module, args: tuple) -> None:
        self._captured = {"reference": args[2], "hidden": []}

    def _capture_layer(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._captured["hidden"].append(output)

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None, *, one2many: bool | None = None) -> dict:
        """Detect people and their keypoints in a padded batch.

        Args:
            images (Tensor[B, 3, H, W]), pixel_mask (Tensor[B, H, W] bool, True = padding),
            one2many: as :meth:`examples.detection.model.HDeformableDETR.forward`.

        Returns:
            dict: the module docstring's layout.
        """
        outputs = self.detr(images, pixel_mask, one2many=one2many)
        captured, self._captured = self._captured, {}
        reference: Tensor = captured["reference"]  # (B, Q, 4) cxcywh or (B, Q, 2)
        batch, queries = reference.shape[:2]
        keypoints = reference[..., None, :2].expand(batch, queries, self.num_joints, 2)
        per_layer = []
        for head, hidden in zip(self.keypoint_heads, captured["hidden"]):
            delta = head(hidden).view(batch, queries, self.num_joints, 2)
            keypoints = (delta + inverse_sigmoid(keypoints.detach())).sigmoid()
            per_layer.append(keypoints)
        return add_query_outputs(outputs, "pred_keypoints", per_layer, self.cfg.num_queries_one2one)


def build_model(cfg: ModelConfig, num_joints: int) -> PoseDETR:
    """The keypoint DETR for ``cfg`` and J = ``num_joints`` (see :class:`PoseDETR`), in training mode."""
    return PoseDETR(cfg, num_joints)


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: Tensor, top_k: int = 20) -> list[dict[str, Tensor]]:
    """The ``top_k`` highest-scoring poses per image from the one-to-one outputs; no NMS.

    A query's score is ``sigmoid`` of its class-0 logit (one class: the person).

    Args:
        outputs: the model's output; uses ``pred_logits`` (B, Q, C) and ``pred_keypoints``
            (B, Q, J, 2) normalised.
        target_sizes (Tensor[B, 2]): (height, width) to scale each image's keypoints to.
        top_k: poses per image (COCO's keypoint evaluation counts 20), at most Q.

    Returns:
        list of B dicts: ``scores`` (Tensor[k], descending), ``keypoints`` (Tensor[k, J, 2]
        absolute pixels).
    """
    logits, keypoints = outputs["pred_logits"], outputs["pred_keypoints"]
    if logits.dim() != 3 or keypoints.dim() != 4 or keypoints.shape[:2] != logits.shape[:2]:
        raise ShapeError(f"postprocess: pred_logits must be (B, Q, C) and pred_keypoints (B, Q, J, 2), got "
                         f"{tuple(logits.shape)} and {tuple(keypoints.shape)}")
    if target_sizes.shape != (logits.shape[0], 2):
        raise ShapeError(f"postprocess: target_sizes must be (B, 2) = ({logits.shape[0]}, 2), got "
                         f"{tuple(target_sizes.shape)}")
    scores = logits[..., 0].float().sigmoid()
    k = min(top_k, scores.shape[1])
    top_scores, top_index = scores.topk(k, dim=1, sorted=True)
    height, width = target_sizes.float().unbind(-1)
    scale = torch.stack((width, height), dim=-1)[:, None, None, :]
    absolute = keypoints.float() * scale
    picked = torch.gather(absolute, 1, top_index[..., None, None].expand(-1, -1, *absolute.shape[2:]))
    return [{"scores": top_scores[b], "keypoints": picked[b]} for b in range(logits.shape[0])]
