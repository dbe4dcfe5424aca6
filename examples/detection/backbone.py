"""Backbones of the detection example: ResNet-50 (torchvision parameter names) and a tiny CNN.

Both return a list of feature maps, finest first, and describe them with
``out_channels`` and ``strides``. The ResNet-50 uses frozen batch norm (statistics
and affine parameters are buffers), as DETR-family detectors train with small
per-GPU batches; its parameter names are torchvision's, so a torchvision ImageNet
state dict loads with :func:`load_backbone_weights` (no torchvision needed).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from hybridmatch import ConfigurationError

__all__ = [
    "Backbone",
    "Bottleneck",
    "FrozenBatchNorm2d",
    "ResNet50",
    "TinyBackbone",
    "build_backbone",
    "load_backbone_weights",
]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (all buffers).

    Its state dict keys (``weight``, ``bias``, ``running_mean``, ``running_var``) are
    those of :class:`torch.nn.BatchNorm2d`, minus ``num_batches_tracked``.

    Args:
        num_features: channels ``C``.
        eps: added to the variance (torchvision's ResNet uses 1e-5).

    Shape:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision's parameter names.

    Args:
        in_channels: input channels.
        width: channels of the 1x1 and 3x3 convs; the output has ``4 * width``.
        stride: stride of the 3x3 conv.
        downsample: project the shortcut (1x1 conv + norm) when the shape changes.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                FrozenBatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class Backbone(nn.Module):
    """Base of the backbones: ``forward(images) -> list of feature maps``, finest first.

    Attributes:
        out_channels: channels of each returned map.
        strides: stride of each returned map with respect to the input.
    """

    out_channels: list[int]
    strides: list[int]


class ResNet50(Backbone):
    """ResNet-50 returning C3, C4, C5 (strides 8, 16, 32; 512, 1024, 2048 channels).

    Parameter names follow torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1`` ..
    ``layer4``; no ``fc``). Batch norm is frozen; the stem and ``layer1`` are frozen too
    (``requires_grad = False``), as in DETR and Deformable-DETR.

    Args:
        train_layer1: also train the stem and ``layer1`` (default False).

    Shape:
        images (B, 3, H, W) -> [(B, 512, H/8, W/8), (B, 1024, H/16, W/16), (B, 2048, H/32, W/32)]
        (sizes rounded up).
    """

    def __init__(self, train_layer1: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        layers = []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = [Bottleneck(in_channels, width, stride, downsample=True)]
            in_channels = width * Bottleneck.expansion
            stage += [Bottleneck(in_channels, width) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = [512, 1024, 2048]
        self.strides = [8, 16, 32]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if not train_layer1:
            for module in (self.conv1, self.layer1):
                for parameter in module.parameters():
                    parameter.requires_grad_(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class TinyBackbone(Backbone):
    """A small strided CNN for CPU tests: maps at strides 8 and 16 (32 and 64 channels).

    Five 3x3 convolutions with group norm and ReLU; stride 2 in the first four.

    Shape:
        images (B, 3, H, W) -> [(B, 32, H/8, W/8), (B, 64, H/16, W/16)] (sizes rounded up).
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.GroupNorm(8, cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(block(3, 16, 2), block(16, 32, 2))
        self.stage1 = nn.Sequential(block(32, 32, 2), block(32, 32, 1))  # stride 8
        self.stage2 = block(32, 64, 2)  # stride 16
        self.out_channels = [32, 64]
        self.strides = [8, 16]

    def forward(self, images: Tensor) -> list[Tensor]:
        c3 = self.stage1(self.stem(images))
        return [c3, self.stage2(c3)]


def build_backbone(name: str, weights: str | os.PathLike[str] | None = None) -> Backbone:
    """The backbone called ``name`` (``"resnet50"`` or ``"tiny"``), with weights if given.

    Args:
        name: ``"resnet50"`` or ``"tiny"``.
        weights: a local torchvision ResNet-50 state dict (``resnet50`` only), or None.

    Returns:
        Backbone: see :class:`ResNet50` and :class:`TinyBackbone`.
    """
    if name == "resnet50":
        backbone: Backbone = ResNet50()
        if weights is not None:
            load_backbone_weights(backbone, weights)
        return backbone
    if name == "tiny":
        if weights is not None:
            raise ConfigurationError("build_backbone: the 'tiny' backbone has no pretrained weights")
        return TinyBackbone()
    raise ConfigurationError(f"build_backbone: unknown backbone {name!r}; use 'resnet50' or 'tiny'")


def _ignored(key: str) -> bool:
    # Keys of a torchvision state dict that the backbone has no use for.
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local torchvision-named state dict (e.g. ImageNet ResNet-50) into ``backbone``.

    Strict on the names the backbone uses: every parameter and buffer of ``backbone``
    must be in the file with the same shape. ``fc.*`` (the classifier) and
    ``*.num_batches_tracked`` (batch-norm counters) are ignored; any other extra key
    is an error, since it means the file is for another architecture. A checkpoint
    that wraps the weights under ``"state_dict"`` or ``"model"`` is unwrapped.

    Args:
        backbone: the module to load into (typically :class:`ResNet50`).
        path: a ``.pth`` file written by :func:`torch.save`.

    Raises:
        ConfigurationError: the file is not a state dict, keys are missing or
            unexpected, or a shape differs.
    """
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigurationError(
            f"load_backbone_weights: {os.fspath(path)!r} holds a {type(state).__name__}, not a "
            f"state dict; save one with torch.save(model.state_dict(), path)"
        )
    wanted = backbone.state_dict()
    given = {key: value for key, value in state.items() if not _ignored(key)}
    missing = sorted(set(wanted) - set(given))
    unexpected = sorted(set(given) - set(wanted))
    if missing or unexpected:
        raise ConfigurationError(
            f"load_backbone_weights: {os.fspath(path)!r} does not fit {type(backbone).__name__}: "
            f"missing {_preview(missing)}, unexpected {_preview(unexpected)}; the file must hold "
            f"torchvision resnet50 names (conv1.weight, layer1.0.conv1.weight, ...)"
        )
    for key, value in given.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise ConfigurationError(
                f"load_backbone_weights: {key} has shape {tuple(value.shape)} in the file but "
                f"{tuple(wanted[key].shape)} in the model"
            )
    backbone.load_state_dict(given, strict=True)


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more

