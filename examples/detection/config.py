"""Model configuration of the H-Deformable-DETR example.

The defaults are H-Deformable-DETR's ResNet-50 settings (Jia et al., "DETRs with
Hybrid Matching", CVPR 2023): a Deformable-DETR++ detector with 300 one-to-one and
1500 one-to-many queries. How the training schemes use the query fields:

* ``one2one``: ``num_queries_one2many = 0`` (a plain Deformable-DETR++);
* ``branch``: ``num_queries_one2one`` + ``num_queries_one2many`` queries, kept apart in
  the decoder's self-attention by :func:`hybridmatch.hybrid_attention_mask`;
* ``epoch`` / ``layer``: one group (the paper: ``num_queries_one2one = 1800``,
  ``num_queries_one2many = 0``), all of it kept at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hybridmatch import ConfigurationError

__all__ = ["BACKBONES", "ModelConfig"]

#: Backbone names :func:`examples.detection.backbone.build_backbone` knows.
BACKBONES: tuple[str, ...] = ("resnet50", "tiny")


@dataclass
class ModelConfig:
    """Every setting of :func:`examples.detection.model.build_model`.

    Attributes:
        num_classes: number of object classes ``C`` (sigmoid/focal logits, no
            "no object" class).
        hidden_dim: transformer width ``D``; a multiple of ``nheads`` and of 2.
        nheads: attention heads in every attention layer.
        enc_layers / dec_layers: deformable encoder / decoder layers (>= 1 decoder layer).
        dim_feedforward: hidden width of each layer's feed-forward network.
        dropout: dropout in attention and FFN (H-DETR uses 0).
        num_feature_levels: feature levels ``L`` the transformer attends to: the last
            ``L`` backbone outputs, plus stride-2 convolutions on top when ``L`` exceeds
            what the backbone gives (ResNet-50: C3-C5 + one extra = 4).
        enc_n_points / dec_n_points: sampling points per head and level in the
            encoder's / decoder's deformable attention.
        num_queries_one2one: queries ``Q1`` matched one-to-one and used at inference.
        num_queries_one2many: queries ``Q2`` of the hybrid branch, used in training only
            (0: no hybrid branch).
        two_stage: seed the queries' boxes with the encoder's top-scoring proposals.
        with_box_refine: per-layer box heads refine the reference boxes layer by layer.
        mixed_selection: (two-stage) positional queries from the proposals, content
            queries learned.
        look_forward_twice: layer ``i``'s box prediction uses the un-detached refined
            box of layer ``i - 1`` (see :class:`examples.detection.transformer.DeformableDecoder`).
        backbone: ``"resnet50"`` or ``"tiny"`` (a small strided CNN for CPU tests).
        backbone_weights: path of a local ``.pth`` holding torchvision-named ResNet-50
            ImageNet weights, or ``None`` (random initialisation).
    """

    num_classes: int = 91
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries_one2one: int = 300
    num_queries_one2many: int = 1500
    two_stage: bool = True
    with_box_refine: bool = True
    mixed_selection: bool = True
    look_forward_twice: bool = True
    backbone: str = "resnet50"
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def tiny(cls, num_classes: int) -> ModelConfig:
        """A small configuration for CPU tests and the synthetic demo.

        Hidden width 64, 4 heads, 2 encoder + 2 decoder layers, FFN 128, 2 feature
        levels (strides 8 and 16 of the tiny CNN), 2 sampling points, 20 one-to-one +
        60 one-to-many queries. A forward + backward pass of two 128x128 images takes
        a fraction of a second on two CPU cores.

        Args:
            num_classes: number of object classes ``C``.

        Returns:
            ModelConfig: set ``num_queries_one2many = 0`` on it for the single-group schemes.
        """
        return cls(
            num_classes=num_classes,
            hidden_dim=64,
            nheads=4,
            enc_layers=2,
            dec_layers=2,
            dim_feedforward=128,
            dropout=0.0,
            num_feature_levels=2,
            enc_n_points=2,
            dec_n_points=2,
            num_queries_one2one=20,
            num_queries_one2many=60,
            backbone="tiny",
        )

    @property
    def num_queries(self) -> int:
        """Queries in a training forward pass: ``Q1 + Q2``."""
        return self.num_queries_one2one + self.num_queries_one2many

    def validate(self) -> None:
        """Check the settings; raise :class:`hybridmatch.ConfigurationError` naming the field.

        Called on construction; call it again after changing fields by hand.
        """
        positive = (
            "num_classes", "hidden_dim", "nheads", "dec_layers", "dim_feedforward",
            "num_feature_levels", "enc_n_points", "dec_n_points", "num_queries_one2one",
        )
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("enc_layers", "num_queries_one2many"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.hidden_dim % self.nheads != 0:
            raise ConfigurationError(
                f"ModelConfig: hidden_dim ({self.hidden_dim}) must be a multiple of nheads "
                f"({self.nheads}); pick nheads among the divisors of hidden_dim"
            )
        if self.hidden_dim % 2 != 0:
            raise ConfigurationError(
                f"ModelConfig: hidden_dim must be even (half of it encodes x, half y), got "
                f"{self.hidden_dim}"
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigurationError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not math.isfinite(float(self.dropout)):
            raise ConfigurationError(f"ModelConfig: dropout must be finite, got {self.dropout!r}")
        if self.backbone not in BACKBONES:
            raise ConfigurationError(
                f"ModelConfig: backbone must be one of {BACKBONES}, got {self.backbone!r}"
            )
        if self.backbone_weights is not None and self.backbone != "resnet50":
            raise ConfigurationError(
                f"ModelConfig: backbone_weights is for the 'resnet50' backbone, but backbone = "
                f"{self.backbone!r}; set backbone_weights=None"
            )
        if self.mixed_selection and not self.two_stage:
            raise ConfigurationError(
                "ModelConfig: mixed_selection takes its positional queries from the two-stage "
                "proposals; set two_stage=True or mixed_selection=False"
            )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"ModelConfig: {name} must be an int >= {minimum}, got {value!r}")
