"""A seeded synthetic instance-segmentation set in COCO format (RLE masks).

The images are the detection example's (:func:`examples.common.shapes.draw_image`): coloured
shapes (square, circle, triangle, cross, diamond and ring, the last with a hole) on a
noisy gradient, up to ``max_objects`` per image, overlapping, each keeping at least
:data:`~examples.common.shapes.MIN_VISIBLE_FRACTION` of its pixels visible. Each
object's annotation carries its *visible* mask as COCO RLE (``{"size": [H, W], "counts":
str}``), so occluded parts and the rings' holes are not part of it; ``bbox`` is the tight
box of the visible pixels and ``area`` their count.

Determinism: image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed,
crc32(s), i])`` as in the detection set, so equal arguments give identical files.

Run: python -m examples.segmentation.synthetic --out DIR [--num-images 64] [--split train val]
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from examples.common.data import split_ready
from examples.common.shapes import CATEGORIES, PNG_COMPRESS_LEVEL, draw_image, mask_to_bbox

__all__ = ["generate_synthetic_segmentation", "main", "synthetic_ready"]


def _encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_synthetic_segmentation(
    root: Path | str,
    *,
    num_images: int = 64,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int = 4,
    max_objects: int = 16,
    seed: int = 0,
    split: str = "train",
) -> Path:
    """Write ``root/split/*.png`` and ``root/annotations/instances_{split}.json``.

    Args:
        root: output folder (created).
        num_images: images in the split.
        image_size: ``(height, width)``.
        num_classes: shape classes, 1 to 6 (the first ``num_classes`` of
            :data:`examples.common.shapes.CATEGORIES`).
        max_objects: most objects drawn per image (the number is uniform in 1..max_objects;
            fewer are kept when a placement would hide an earlier object too much).
        seed: the data seed.
        split: the split's name.

    Returns:
        Path: the annotation file.

    Raises:
        ValueError: an argument out of range.
    """
    if not 1 <= num_classes <= len(CATEGORIES):
        raise ValueError(f"num_classes must be in 1..{len(CATEGORIES)}, got {num_classes}")
    if num_images < 1 or max_objects < 1:
        raise ValueError(f"num_images and max_objects must be >= 1, got {num_images} and {max_objects}")
    height, width = image_size
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = CATEGORIES[:num_classes]
    shapes = [name for _, name in categories]
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
        pixels, objects = draw_image(rng, height, width, shapes, max_objects)
        name = f"{index:06d}.png"
        Image.fromarray(pixels).save(root / split / name, compress_level=PNG_COMPRESS_LEVEL)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for shape, mask in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": categories[shape][0],
                "segmentation": _encode(mask), "bbox": mask_to_bbox(mask), "area": float(mask.sum()),
                "iscrowd": 0,
            })
    data = {
        "info": {"description": "examples.segmentation.synthetic", "seed": seed, "max_objects": max_objects},
        "images": images, "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in categories],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


def synthetic_ready(root: Path, split: str, count: int, size: tuple[int, int], classes: int,
                    max_objects: int, seed: int) -> bool:
    """Whether ``root`` already holds this split as :func:`generate_synthetic_segmentation` would write it."""
    return split_ready(Path(root) / "annotations" / f"instances_{split}.json", count=count, size=size,
                       num_categories=classes, max_objects=max_objects, seed=seed,
                       description="examples.segmentation.synthetic")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser("examples.segmentation.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--max-objects", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", nargs="+", default=["train", "val"])
    args = p.parse_args(argv)
    for split in args.split:
        path = generate_synthetic_segmentation(args.out, num_images=args.num_images,
                                               image_size=(args.size, args.size), num_classes=args.num_classes,
                                               max_objects=args.max_objects, seed=args.seed, split=split)
        print(path)


if __name__ == "__main__":
    main()
