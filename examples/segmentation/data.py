"""COCO instance segmentation: images, instance masks (polygons or RLE), batches.

:class:`CocoInstanceSegmentation` reads a COCO-format split with pycocotools
(``annToMask`` decodes polygons, uncompressed and compressed RLE alike), resizes each image
so that its longer side is ``size`` and its masks with it (nearest neighbour), and
optionally flips it horizontally (from torch's global random stream, so a resumed run
draws the same flips). Crowd annotations are skipped.

A target holds ``labels (Tensor[M] int64)`` (contiguous 0..C-1), ``masks (Tensor[M, h, w]
bool)`` at the resized image's size, ``boxes (Tensor[M, 4])`` cxcywh normalised to it,
``image_id``, ``orig_size`` and ``size`` (``(h, w)`` int64). :func:`collate_fn` pads the
images and the masks to the batch's largest size, so that masks and the model's mask
logits (which cover the padded canvas) share one frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from examples.detection.data import IMAGENET_MEAN, IMAGENET_STD
from examples.common.coco import load_coco
from examples.detection.data import collate_fn as pad_images

__all__ = ["CocoInstanceSegmentation", "collate_fn", "masks_to_boxes"]

Target = dict[str, Tensor]


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks, cxcywh normalised to the masks' size.

    Args:
        masks (Tensor[M, H, W] bool).

    Returns:
        Tensor[M, 4] float32; an empty mask gets the zero box.
    """
    count, height, width = masks.shape
    boxes = torch.zeros(count, 4)
    if count == 0:
        return boxes
    rows, cols = masks.any(2), masks.any(1)
    for i in range(count):
        ys, xs = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
        if len(ys) == 0:
            continue
        x0, x1, y0, y1 = float(xs[0]), float(xs[-1] + 1), float(ys[0]), float(ys[-1] + 1)
        boxes[i] = torch.tensor([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
                                 (y1 - y0) / height])
    return boxes


class CocoInstanceSegmentation(Dataset):
    """A COCO instance-segmentation split.

    Args:
        images: folder with the image files.
        annotations: the ``instances_*.json`` file.
        size: the longer side after resizing (images are never cropped).
        train: flip horizontally with probability 1/2.

    Attributes:
        coco: the pycocotools ``COCO`` index (the evaluation's ground truth).
        label_to_category: contiguous label -> COCO category id.
    """

    def __init__(self, images: Path | str, annotations: Path | str, *, size: int = 64, train: bool = False) -> None:
        self.coco = load_coco(annotations)
        self.root = Path(images)
        self.size = size
        self.train = train
        self.ids = sorted(self.coco.imgs)
        self.label_to_category = sorted(self.coco.cats)
        self.category_to_label = {cat: label for label, cat in enumerate(self.label_to_category)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = Image.open(self.root / info["file_name"]).convert("RGB")
        height, width = info["height"], info["width"]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        masks = [torch.from_numpy(self.coco.annToMask(a).astype(bool)) for a in anns]
        mask = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)
        labels = torch.tensor([self.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        scale = self.size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (new_h, new_w) != (height, width):
            pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None].float(), size=(new_h, new_w), mode="nearest")[0].bool()
        if self.train and float(torch.rand(())) < 0.5:
            pixels, mask = pixels.flip(-1), mask.flip(-1)
        keep = mask.flatten(1).any(1)  # an object can vanish when a tiny one is downscaled
        mask, labels = mask[keep], labels[keep]
        mean = pixels.new_tensor(IMAGENET_MEAN)[:, None, None]
        std = pixels.new_tensor(IMAGENET_STD)[:, None, None]
        target = {
            "labels": labels, "masks": mask, "boxes": masks_to_boxes(mask),
            "image_id": torch.tensor([image_id]), "orig_size": torch.tensor([height, width]),
            "size": torch.tensor([new_h, new_w]),
        }
        return (pixels - mean) / std, target


def collate_fn(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, Tensor, list[Target]]:
    """:func:`examples.detection.data.collate_fn`, with each target's masks padded to the canvas.

    Returns:
        images (Tensor[B, 3, Hmax, Wmax]), pixel_mask (Tensor[B, Hmax, Wmax] bool, True =
        padding), targets whose ``masks`` are ``Tensor[M, Hmax, Wmax] bool`` (False in the
        padding; unchanged, not copied, when the image already has the canvas' size).
    """
    images, pixel_mask, targets = pad_images(batch)
    height, width = images.shape[-2:]
    out = []
    for target in targets:
        masks = target["masks"]
        if tuple(masks.shape[-2:]) != (height, width):
            masks = F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2]))
        out.append({**target, "masks": masks})
    return images, pixel_mask, out


