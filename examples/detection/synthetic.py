"""A seeded synthetic detection set in COCO format: coloured shapes on a noisy background.

The images are drawn by :func:`examples.common.shapes.draw_image`: each shows 1 to
``max_objects`` filled shapes (square, circle, triangle,
plus-cross, then diamond and ring when more than four classes are asked for) in
varied colours and sizes, small ones included, on a linear colour gradient with
mild noise. Shapes may overlap, but an object is only kept when at least
``MIN_VISIBLE_FRACTION`` of its pixels stay visible after every later shape is
drawn, so each object remains recognisable.

Every box is the tight box of the object's *visible* pixels, ``[x, y, w, h]`` in
absolute pixels (COCO's convention, integer-valued floats here, since shapes are
drawn without anti-aliasing), and ``area`` is the visible pixel count. Category
ids are non-contiguous (1, 3, 7, 10, 12, 15) so that a dataset's label mapping
is exercised.

Determinism: image ``i`` of split ``s`` is drawn from its own
``numpy.random.default_rng([seed, crc32(s), i])``, and PNGs are written with a
fixed zlib level and no metadata, so equal arguments give byte-identical files
(on the same numpy, Pillow and zlib versions), and a larger ``num_images`` only
appends images.

Contrast, which the tests rely on: see :mod:`examples.common.shapes` (every object pixel
differs from the background under it by more than 49 in some channel, a background
pixel by at most 10.5).

Run: python -m examples.detection.synthetic --out DIR [--num-images 64] [--split train val]
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from examples.common.shapes import CATEGORIES, MIN_VISIBLE_FRACTION, PNG_COMPRESS_LEVEL, draw_image, mask_to_bbox

__all__ = [
    "CATEGORIES",
    "MIN_VISIBLE_FRACTION",
    "generate_synthetic_coco",
    "main",
]


def generate_synthetic_coco(
    out_dir: str | Path,
    num_images: int = 64,
    image_size: tuple[int, int] = (128, 128),
    num_classes: int = 4,
    max_objects: int = 6,
    seed: int = 0,
    split: str = "train",
) -> tuple[Path, Path]:
    """Write a synthetic COCO-format detection split of shape images.

    Args:
        out_dir: root folder; created if missing.
        num_images: number of images, at least 1.
        image_size: (H, W) of every image, each at least 16.
        num_classes: number of shape classes, 1 to 6 (the first of :data:`CATEGORIES`).
        max_objects: most objects drawn per image (at least 1 is always kept).
        seed: non-negative integer; equal arguments give byte-identical files.
        split: split name, used in paths and in the seed (``train`` and ``val``
            draw different images).

    Returns:
        (image_dir, annotation_file): ``out_dir/<split>/`` with ``000000000001.png``,
        ... and ``out_dir/annotations/instances_<split>.json``. Image ids count from 1.
    """
    height, width = (int(s) for s in image_size)
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least (16, 16), got {tuple(image_size)}")
    if not 1 <= num_classes <= len(CATEGORIES):
        raise ValueError(f"num_classes must be in 1..{len(CATEGORIES)} (one per shape), got {num_classes}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not split or "/" in split or "\\" in split:
        raise ValueError(f"split must be a plain folder name such as 'train', got {split!r}")

    out = Path(out_dir)
    image_dir = out / split
    annotation_file = out / "annotations" / f"instances_{split}.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)

    categories = CATEGORIES[:num_classes]
    shapes = [name for _, name in categories]
    split_key = zlib.crc32(split.encode("utf-8"))
    images: list[dict] = []
    annotations: list[dict] = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        pixels, objects = draw_image(rng, height, width, shapes, max_objects)
        image_id = index + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(
            image_dir / file_name, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
        )
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for shape, visible in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[shape][0],
                    "bbox": mask_to_bbox(visible),
                    "area": float(np.count_nonzero(visible)),
                    "iscrowd": 0,
                }
            )
    dataset = {
        "info": {"description": f"hybridmatch synthetic shapes, split {split}, seed {seed}",
                 "seed": seed, "num_classes": num_classes, "max_objects": max_objects},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in categories],
    }
    annotation_file.write_text(json.dumps(dataset, separators=(",", ":")) + "\n", encoding="utf-8")
    return image_dir, annotation_file


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m examples.detection.synthetic --out DIR [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output root folder")
    parser.add_argument("--num-images", type=int, default=64, help="images per split (default 64)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=4, help=f"1..{len(CATEGORIES)} (default 4)")
    parser.add_argument("--max-objects", type=int, default=6, help="most objects per image (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", nargs="+", default=["train"], help="one or more split names (default train)")
    args = parser.parse_args(argv)
    for split in args.split:
        try:
            image_dir, annotation_file = generate_synthetic_coco(
                args.out,
                num_images=args.num_images,
                image_size=tuple(args.image_size),
                num_classes=args.num_classes,
                max_objects=args.max_objects,
                seed=args.seed,
                split=split,
            )
        except ValueError as error:
            parser.error(str(error))
        print(f"{split}: {args.num_images} images in {image_dir}, annotations in {annotation_file}")


if __name__ == "__main__":
    main()
