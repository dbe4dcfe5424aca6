"""COCO-format detection data: a dataset, DETR-style augmentations in plain torch, a collate.

Target convention (what the model and the criterion see): for an image with M
kept objects,

* ``labels`` (Tensor[M] int64): contiguous labels 0..C-1, the category ids sorted
  ascending (see :attr:`CocoDetection.label_to_category`);
* ``boxes`` (Tensor[M, 4] float32): ``cxcywh`` normalised to [0, 1] by the size of
  the *transformed* image;
* ``image_id`` (Tensor[1] int64), ``orig_size`` (Tensor[2] int64, (h, w) of the
  file), ``size`` (Tensor[2] int64, (h, w) after the transforms);
* ``area`` (Tensor[M] float32): the annotation's area in pixels of the
  transformed image (scaled on resize, reduced in proportion on a crop);
* ``iscrowd`` (Tensor[M] int64): all zero, since crowd annotations are dropped.

Transforms are callables ``(image, target) -> (image, target)`` over an image
``Tensor[3, H, W]`` float and a target whose ``boxes`` are ``xyxy`` in absolute
pixels; :class:`CocoDetection` converts boxes to normalised ``cxcywh`` once, after
the transforms, so the convention above holds whatever transforms are given. The
image reaches the transforms as float32 in [0, 1]; :class:`Normalize` (the last
step of :func:`make_transforms`) applies the ImageNet mean and std.

Randomness: every random transform takes ``generator`` (a ``torch.Generator``).
``None`` (the default) draws from torch's global RNG, which a ``DataLoader``
seeds differently in each worker (``torch.initial_seed()`` per worker, derived
from the loader's own generator), so runs are reproducible with
``torch.manual_seed`` and augmentations differ across workers. A Generator
object is for single-process use (tests, a fixed augmentation): each worker
would hold an identical copy of it.

The augmentations follow DETR (Carion et al., ECCV 2020), as used by
Deformable-DETR and H-DETR: random horizontal flip, then with probability 1/2
either a resize of the shorter side to a random scale (longer side capped at
``max_size``) or a resize, a random-size crop and a resize.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from hybridmatch.boxes import box_xyxy_to_cxcywh

from examples.common.coco import load_coco

__all__ = [
    "COCO_SCALES",
    "COCO_MAX_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "Compose",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomSelect",
    "RandomSizeCrop",
    "Transform",
    "collate_fn",
    "crop",
    "hflip",
    "make_transforms",
    "resize",
    "resized_shape",
    "small_scales",
]

Target = dict[str, Tensor]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]

COCO_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))
COCO_MAX_SIZE = 1333
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# DETR's crop branch for 800-pixel scales: resize to 400/500/600, crop 384..600.
# Expressed as fractions of the largest scale so that small scales get the same recipe.
_CROP_RESIZE_FRACTIONS = (0.5, 0.625, 0.75)
_CROP_SIZE_FRACTIONS = (0.48, 0.75)


def small_scales() -> tuple[int, ...]:
    """Scales for the synthetic 128x128 set on the CPU: shorter sides 96, 104, ..., 128."""
    return tuple(range(96, 129, 8))


# ---------------------------------------------------------------------------
# Pure transform functions: image Tensor[3, H, W], target boxes xyxy absolute.
# ---------------------------------------------------------------------------


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror left-right.

    Args:
        image (Tensor[3, H, W]): the image.
        target: dict whose ``boxes`` (Tensor[M, 4]) are ``xyxy`` absolute pixels.

    Returns:
        The flipped image and a new target: ``x0' = W - x1``, ``x1' = W - x0``.
    """
    width = image.shape[-1]
    target = dict(target)
    if "boxes" in target:
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        target["boxes"] = torch.stack((width - x1, y0, width - x0, y1), dim=-1)
    return image.flip(-1), target


def resized_shape(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``size``, the longer side capped at ``max_size``.

    Example:
        >>> resized_shape(480, 640, 800, max_size=1333)
        (800, 1067)
        >>> resized_shape(100, 300, 200, max_size=400)  # 600 > 400: the cap wins
        (133, 400)
    """
    short, long = min(height, width), max(height, width)
    scale = size / short
    if max_size is not None and long * scale > max_size:
        scale = max_size / long
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize(image: Tensor, target: Target, size: int, max_size: int | None = None) -> tuple[Tensor, Target]:
    """Resize the shorter side to ``size`` (longer side at most ``max_size``), bilinear with antialiasing.

    Args:
        image (Tensor[3, H, W]) float: the image.
        target: dict with ``boxes`` (Tensor[M, 4]) ``xyxy`` absolute and optionally ``area`` (Tensor[M]).
        size: target length of the shorter side, in pixels.
        max_size: cap on the longer side, or None.

    Returns:
        The resized image (Tensor[3, h, w]) and a target with boxes scaled by
        (w / W, h / H) and areas by their product.
    """
    height, width = image.shape[-2:]
    new_h, new_w = resized_shape(height, width, size, max_size)
    resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)[0]
    sx, sy = new_w / width, new_h / height
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * target["boxes"].new_tensor([sx, sy, sx, sy])
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    return resized, target


def crop(image: Tensor, target: Target, top: int, left: int, height: int, width: int) -> tuple[Tensor, Target]:
    """Cut the region ``[top, top + height) x [left, left + width)``; clip boxes, drop emptied ones.

    Args:
        image (Tensor[3, H, W]): the image; the region must lie inside it.
        target: dict with ``boxes`` (Tensor[M, 4]) ``xyxy`` absolute; ``labels``, ``area``
            and ``iscrowd`` (Tensor[M]) are filtered alongside, ``area`` scaled by the
            fraction of each box's area that is kept.
        top, left, height, width: the region, in pixels.

    Returns:
        The cropped image (Tensor[3, height, width]) and a target with the K <= M boxes
        that keep a positive width and height after clipping, shifted by (-left, -top).
    """
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        shifted = boxes - boxes.new_tensor([left, top, left, top])
        clipped = torch.minimum(shifted.clamp(min=0), shifted.new_tensor([width, height, width, height]))
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        if "area" in target:
            before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            after = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            target["area"] = target["area"] * torch.where(before > 0, after / before.clamp(min=1e-12), 0.0)
        target["boxes"] = clipped
        for key in ("boxes", "labels", "area", "iscrowd"):
            if key in target:
                target[key] = target[key][keep]
    return image[:, top : top + height, left : left + width], target


# ---------------------------------------------------------------------------
# Transform objects: settings + randomness; they call the functions above.
# ---------------------------------------------------------------------------


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomHorizontalFlip:
    """:func:`hflip` with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if _rand(self.generator) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResize:
    """:func:`resize` to a shorter side drawn uniformly from ``sizes``."""

    def __init__(
        self, sizes: Sequence[int], max_size: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        if len(sizes) == 0 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be a non-empty sequence of positive pixel sizes, got {sizes!r}")
        self.sizes = tuple(int(s) for s in sizes)
        self.max_size = max_size
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        size = self.sizes[_randint(0, len(self.sizes) - 1, self.generator)] if len(self.sizes) > 1 else self.sizes[0]
        return resize(image, target, size, self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """:func:`crop` to a random region: height and width uniform in [min_size, min(max_size, image side)].

    The region's position is uniform; an image side shorter than ``min_size`` is kept whole.
    """

    def __init__(self, min_size: int, max_size: int, generator: torch.Generator | None = None) -> None:
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        self.min_size = min_size
        self.max_size = max_size
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        crop_h = _randint(min(self.min_size, height), min(self.max_size, height), self.generator)
        crop_w = _randint(min(self.min_size, width), min(self.max_size, width), self.generator)
        top = _randint(0, height - crop_h, self.generator)
        left = _randint(0, width - crop_w, self.generator)
        return crop(image, target, top, left, crop_h, crop_w)

    def __repr__(self) -> str:
        return f"RandomSizeCrop(min_size={self.min_size}, max_size={self.max_size})"


class RandomSelect:
    """Apply ``first`` with probability ``p``, else ``second``."""

    def __init__(
        self, first: Transform, second: Transform, p: float = 0.5, generator: torch.Generator | None = None
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.first, self.second, self.p = first, second, p
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if _rand(self.generator) < self.p:
            return self.first(image, target)
        return self.second(image, target)

    def __repr__(self) -> str:
        return f"RandomSelect({self.first!r}, {self.second!r}, p={self.p})"


class Normalize:
    """Per-channel ``(image - mean) / std`` (ImageNet statistics by default); boxes untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        mean = image.new_tensor(self.mean)[:, None, None]
        std = image.new_tensor(self.std)[:, None, None]
        return (image - mean) / std, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def make_transforms(
    train: bool,
    scales: Sequence[int] = COCO_SCALES,
    max_size: int = COCO_MAX_SIZE,
    *,
    crop_resize_sizes: Sequence[int] | None = None,
    crop_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> Compose:
    """DETR's augmentation pipeline.

    Args:
        train: augment (True) or only resize (False).
        scales: shorter-side sizes; COCO default 480, 512, ..., 800; :func:`small_scales`
            for the synthetic set.
        max_size: cap on the longer side (1333 for COCO).
        crop_resize_sizes: shorter sides before the crop in the crop branch; default
            (0.5, 0.625, 0.75) x max(scales), which is DETR's (400, 500, 600) at 800.
        crop_size: (min, max) side of the random crop; default (0.48, 0.75) x max(scales),
            DETR's (384, 600) at 800.
        generator: source of randomness (see the module docstring); None = global RNG.

    Returns:
        train: flip (p 0.5), then either resize to a random scale or (resize to a random
        ``crop_resize_sizes``, random-size crop, resize to a random scale), then
        :class:`Normalize`. Eval: resize to ``max(scales)`` and normalise.
    """
    if len(scales) == 0:
        raise ValueError("scales must list at least one shorter-side size, e.g. small_scales() or COCO_SCALES")
    largest = max(int(s) for s in scales)
    if not train:
        return Compose([RandomResize([largest], max_size=max_size), Normalize()])
    if crop_resize_sizes is None:
        crop_resize_sizes = tuple(max(1, round(f * largest)) for f in _CROP_RESIZE_FRACTIONS)
    if crop_size is None:
        crop_size = (max(1, round(_CROP_SIZE_FRACTIONS[0] * largest)), max(1, round(_CROP_SIZE_FRACTIONS[1] * largest)))
    return Compose(
        [
            RandomHorizontalFlip(0.5, generator=generator),
            RandomSelect(
                RandomResize(scales, max_size=max_size, generator=generator),
                Compose(
                    [
                        RandomResize(crop_resize_sizes, generator=generator),
                        RandomSizeCrop(*crop_size, generator=generator),
                        RandomResize(scales, max_size=max_size, generator=generator),
                    ]
                ),
                generator=generator,
            ),
            Normalize(),
        ]
    )


# ---------------------------------------------------------------------------
# Dataset and collate
# ---------------------------------------------------------------------------


class CocoDetection(Dataset):
    """A COCO instances file and its image folder as ``(image, target)`` pairs.

    Args:
        image_dir: folder holding each image's ``file_name``.
        annotation_file: COCO instances json (``images``, ``annotations``, ``categories``).
        transforms: ``(image, target) -> (image, target)`` over an image Tensor[3, H, W]
            float in [0, 1] and ``xyxy`` absolute boxes, e.g. :func:`make_transforms`;
            None keeps the image as it is (no normalisation).

    Item ``i`` is ``(image Tensor[3, H, W] float32, target)`` for the i-th image id in
    ascending order; the target follows the module docstring's convention. Crowd
    annotations (``iscrowd`` 1) are dropped, as are boxes with no positive width or
    height after clipping to the image.

    Attributes:
        coco: the pycocotools ``COCO`` object (for evaluation).
        image_ids (list[int]): image ids in item order.
        category_to_label (dict[int, int]), label_to_category (dict[int, int]): the
            mapping between COCO category ids and labels 0..C-1 (ids sorted ascending).
        category_names (list[str]): names indexed by label.
        num_classes (int): C, the number of categories in the file.
    """

    def __init__(
        self, image_dir: str | Path, annotation_file: str | Path, transforms: Transform | None = None
    ) -> None:
        self.image_dir = Path(image_dir)
        annotation_file = Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image_dir {str(self.image_dir)!r} is not a folder")
        if not annotation_file.is_file():
            raise FileNotFoundError(f"annotation_file {str(annotation_file)!r} does not exist")
        self.annotation_file = annotation_file
        self.transforms = transforms
        self.coco = load_coco(annotation_file)
        self.image_ids: list[int] = sorted(self.coco.imgs.keys())
        category_ids = sorted(self.coco.cats.keys())
        self.category_to_label: dict[int, int] = {cid: label for label, cid in enumerate(category_ids)}
        self.label_to_category: dict[int, int] = {label: cid for label, cid in enumerate(category_ids)}
        self.category_names: list[str] = [str(self.coco.cats[cid].get("name", cid)) for cid in category_ids]
        self.num_classes = len(category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> Tensor:
        """The file of ``image_id`` as Tensor[3, H, W] float32 in [0, 1] (RGB)."""
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as pil:
            pixels = np.array(pil.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)

    def load_target(self, image_id: int, height: int, width: int) -> Target:
        """The kept annotations of ``image_id``: ``boxes`` xyxy absolute, clipped to (height, width)."""
        annotations = self.coco.imgToAnns.get(image_id, [])
        annotations = [a for a in annotations if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([self.category_to_label[a["category_id"]] for a in annotations], dtype=torch.int64)
        area = torch.tensor(
            [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in annotations], dtype=torch.float32
        )
        return {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "area": area[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        height, width = image.shape[-2:]
        target = self.load_target(image_id, height, width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        new_h, new_w = image.shape[-2:]
        target["size"] = torch.tensor([new_h, new_w], dtype=torch.int64)
        boxes = box_xyxy_to_cxcywh(target["boxes"]) / torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32)
        target["boxes"] = boxes.to(torch.float32).reshape(-1, 4)
        return image, target


def collate_fn(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, Tensor, list[Target]]:
    """Pad images to the batch's largest height and width (bottom and right, with zeros).

    Args:
        batch: B pairs ``(image Tensor[3, H_b, W_b], target)``.

    Returns:
        images (Tensor[B, 3, Hmax, Wmax]), pixel_mask (Tensor[B, Hmax, Wmax] bool,
        True = padding), and the B targets as a list (unchanged; their normalised boxes
        refer to each image's own ``size``, not to the padded canvas).
    """
    if len(batch) == 0:
        raise ValueError("collate_fn got an empty batch; use a DataLoader with batch_size >= 1")
    images = [image for image, _ in batch]
    channels = images[0].shape[0]
    if any(image.dim() != 3 or image.shape[0] != channels for image in images):
        shapes = [tuple(image.shape) for image in images]
        raise ValueError(f"collate_fn needs images of shape [C, H, W] with one C, got shapes {shapes}")
    max_h = max(image.shape[1] for image in images)
    max_w = max(image.shape[2] for image in images)
    padded = images[0].new_zeros((len(images), channels, max_h, max_w))
    pixel_mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool)
    for b, image in enumerate(images):
        h, w = image.shape[1:]
        padded[b, :, :h, :w] = image
        pixel_mask[b, :h, :w] = False
    return padded, pixel_mask, [target for _, target in batch]
