"""A seeded synthetic detection set in COCO format: coloured shapes on a noisy background.

Each image shows 1 to ``max_objects`` filled shapes (square, circle, triangle,
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

Contrast, which the tests rely on: the background gradient spans at most
``GRADIENT_SPAN`` = 40 per channel and the noise is clipped to ``NOISE_CLIP`` = 10,
while an object's colour is at least ``MIN_CONTRAST`` = 100 (max over channels)
away from the gradient's start colour and from every earlier object's colour. So
every object pixel differs from the noiseless background under it by at least
100 - 40 - 10 - 0.5 (rounding) > 49 in some channel, and a background pixel by
at most 10.5.

Run: python -m examples.detection.synthetic --out DIR [--num-images 64] [--split train val]
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "CATEGORIES",
    "MIN_VISIBLE_FRACTION",
    "generate_synthetic_coco",
    "main",
]

# (COCO category id, name); ids are deliberately non-contiguous.
CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "square"),
    (3, "circle"),
    (7, "triangle"),
    (10, "cross"),
    (12, "diamond"),
    (15, "ring"),
)

MIN_VISIBLE_FRACTION = 0.7
GRADIENT_SPAN = 40
NOISE_STD = 4.0
NOISE_CLIP = 10.0
MIN_CONTRAST = 100
MIN_OBJECT_SIZE = 6
PNG_COMPRESS_LEVEL = 6
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 50


def _square(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.ones(np.broadcast_shapes(v.shape, u.shape), dtype=bool)


def _circle(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    return (v - 0.5) ** 2 + (u - 0.5) ** 2 <= 0.25


def _triangle(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    # Apex at the top centre, base along the bottom edge.
    return np.abs(u - 0.5) <= 0.5 * v


def _cross(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    # Arms 0.4 of the size thick: fill ratio 0.64, between the triangle's 0.5 and the circle's 0.79.
    return (np.abs(u - 0.5) <= 0.2) | (np.abs(v - 0.5) <= 0.2)


def _diamond(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5


def _ring(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    r2 = (v - 0.5) ** 2 + (u - 0.5) ** 2
    return (r2 <= 0.25) & (r2 >= 0.0625)


# Shape masks over pixel-centre coordinates (v down, u right) normalised to [0, 1].
_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "square": _square,
    "circle": _circle,
    "triangle": _triangle,
    "cross": _cross,
    "diamond": _diamond,
    "ring": _ring,
}


def _shape_mask(name: str, height: int, width: int) -> np.ndarray:
    v = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    u = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    return _SHAPES[name](v, u)


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A linear gradient between two nearby colours: (image float32[H, W, 3], start, end)."""
    start = rng.integers(40, 216, size=3).astype(np.float32)
    end = np.clip(start + rng.integers(-GRADIENT_SPAN, GRADIENT_SPAN + 1, size=3), 0, 255).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = start + (end - start) * t[..., None]
    return image.astype(np.float32), start, end


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray | None:
    for _ in range(_COLOUR_TRIES):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        if all(np.abs(colour - other).max() >= MIN_CONTRAST for other in avoid):
            return colour
    return None


def _draw_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    shapes: Sequence[str],
    max_objects: int,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Returns (image uint8[H, W, 3], [(shape index, visible mask bool[H, W]) per kept object])."""
    image, start, end = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int64)
    drawn: list[tuple[int, int]] = []  # (shape index, pixel count when drawn)
    colours: list[np.ndarray] = []
    min_size = MIN_OBJECT_SIZE
    max_size = max(min_size, int(0.45 * min(height, width)))
    num_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(num_objects):
        shape = int(rng.integers(0, len(shapes)))
        # Log-uniform sizes: as many small objects as large ones.
        size = int(round(np.exp(rng.uniform(np.log(min_size), np.log(max_size)))))
        box_h = size
        if shapes[shape] == "triangle":
            box_h = max(min_size, int(round(size * rng.uniform(0.7, 1.1))))
        box_h, box_w = min(box_h, height), min(size, width)
        colour = _pick_colour(rng, [start, end, *colours])
        if colour is None:
            continue
        mask = _shape_mask(shapes[shape], box_h, box_w)
        for _ in range(_PLACEMENT_TRIES):
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            covered = owner[top : top + box_h, left : left + box_w][mask]
            # The new shape goes on top; every earlier object must keep enough of itself.
            lost = np.bincount(covered[covered >= 0], minlength=len(drawn))
            if all(
                np.count_nonzero(owner == k) - lost[k] >= MIN_VISIBLE_FRACTION * count
                for k, (_, count) in enumerate(drawn)
                if lost[k]
            ):
                break
        else:
            continue
        index = len(drawn)
        region = owner[top : top + box_h, left : left + box_w]
        region[mask] = index
        image[top : top + box_h, left : left + box_w][mask] = colour
        drawn.append((shape, int(mask.sum())))
        colours.append(colour)
    noise = np.clip(rng.normal(0.0, NOISE_STD, size=image.shape), -NOISE_CLIP, NOISE_CLIP)
    pixels = np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
    return pixels, [(shape, owner == k) for k, (shape, _) in enumerate(drawn)]


def _mask_to_bbox(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return [float(x0), float(y0), float(cols[-1] - x0 + 1), float(rows[-1] - y0 + 1)]


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
        pixels, objects = _draw_image(rng, height, width, shapes, max_objects)
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
                    "bbox": _mask_to_bbox(visible),
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
