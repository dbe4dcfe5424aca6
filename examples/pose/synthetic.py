"""A seeded synthetic keypoint set in COCO format: articulated stick figures.

Each image shows 1 to ``max_figures`` figures (9 joints, :data:`examples.pose.skeleton.FIGURE`:
head, neck, elbows, hands, pelvis, feet) of random height, lean, arm and leg angles and
mirror, drawn as thick coloured limbs and a head disc on a noisy colour gradient. Later
figures cover earlier ones, so figures overlap and crowd the image: with the defaults
(64 pixels, at most 10 figures) an image holds 5.5 figures on average, far more positives
than one-to-one matching gives the 20 queries of the tiny model.

Keypoint visibility follows COCO: ``v = 2`` when the joint's pixel (or a 3x3 neighbour)
shows its own figure, ``v = 1`` (labelled, occluded) when later figures cover it all, and
``v = 0`` (unlabelled, coordinates 0) for joints outside the image and, at random, for
``unlabelled_rate`` of the others, as an annotator skips some. A figure with fewer than
three labelled joints is dropped. ``bbox`` is the tight box of the figure's drawn pixels
(occluded ones included), ``area`` its width times height, ``num_keypoints`` the labelled
count.

Determinism: image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed,
crc32(s), i])``; PNGs are written with a fixed zlib level and no metadata, so equal
arguments give byte-identical files.

Run: python -m examples.pose.synthetic --out DIR [--num-images 64] [--split train val]
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from examples.common.shapes import PNG_COMPRESS_LEVEL

from .skeleton import FIGURE

__all__ = ["generate_synthetic_keypoints", "main", "render_figure_image"]

CATEGORY_ID = 1


def _pose(rng: np.random.Generator, cx: float, cy: float, height: float) -> np.ndarray:
    """Joint positions (Tensor[9, 2] float, pixels) of one figure standing around (cx, cy)."""
    lean = rng.uniform(-0.35, 0.35)
    up = np.array([np.sin(lean), -np.cos(lean)])  # from pelvis to neck
    pelvis = np.array([cx, cy]) + 0.05 * height * up
    neck = pelvis + 0.38 * height * up
    head = neck + 0.17 * height * up
    joints = np.zeros((9, 2))
    joints[0], joints[1], joints[6] = head, neck, pelvis
    for side, (elbow, hand, foot) in enumerate(((2, 4, 7), (3, 5, 8))):
        sign = -1.0 if side == 0 else 1.0
        arm = lean + sign * rng.uniform(0.3, 2.6)  # angle from "down"
        fore = arm + sign * rng.uniform(-0.4, 1.2)
        joints[elbow] = neck + 0.22 * height * np.array([np.sin(arm), np.cos(arm)])
        joints[hand] = joints[elbow] + 0.2 * height * np.array([np.sin(fore), np.cos(fore)])
        leg = lean + sign * rng.uniform(0.1, 0.6)
        joints[foot] = pelvis + 0.5 * height * np.array([np.sin(leg), np.cos(leg)])
    if rng.random() < 0.5:  # a mirrored figure: left and right swap sides of the image
        joints[:, 0] = 2 * cx - joints[:, 0]
    return joints


def render_figure_image(rng: np.random.Generator, size: int, max_figures: int,
                        unlabelled_rate: float) -> tuple[np.ndarray, list[dict]]:
    """One image (uint8 (size, size, 3)) and its figures (``keypoints`` (9, 3), ``bbox``, ``area``)."""
    start = rng.uniform(10, 70, size=3)
    end = start + rng.uniform(-30, 30, size=3)
    ramp = np.linspace(0.0, 1.0, size)[None, :, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    background = start + (end - start) * ramp
    canvas = Image.new("RGB", (size, size))
    owner = Image.new("L", (size, size), 0)  # which figure shows at each pixel (0: none)
    paint, mark = ImageDraw.Draw(canvas), ImageDraw.Draw(owner)
    pixels = np.broadcast_to(background, (size, size, 3)).copy()
    canvas.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    count = int(rng.integers(1, max_figures + 1))
    figures = []
    for index in range(1, count + 1):
        height = rng.uniform(0.22, 0.47) * size
        cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.15, 0.85) * size
        joints = _pose(rng, cx, cy, height)
        colour = tuple(int(c) for c in rng.integers(110, 256, size=3))
        width = max(2, int(round(height / 10)))
        own = Image.new("L", (size, size), 0)
        draw_own = ImageDraw.Draw(own)
        for a, b in FIGURE.skeleton:
            line = [tuple(joints[a]), tuple(joints[b])]
            for draw, fill in ((paint, colour), (mark, index), (draw_own, 1)):
                draw.line(line, fill=fill, width=width)
        radius = 0.09 * height
        disc = [joints[0][0] - radius, joints[0][1] - radius, joints[0][0] + radius, joints[0][1] + radius]
        for draw, fill in ((paint, colour), (mark, index), (draw_own, 1)):
            draw.ellipse(disc, fill=fill)
        drawn = np.argwhere(np.asarray(own) > 0)
        if len(drawn) == 0:
            continue
        y0, x0 = drawn.min(0)
        y1, x1 = drawn.max(0) + 1
        figures.append({"index": index, "joints": joints,
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
    owners = np.asarray(owner)
    noise = np.clip(rng.normal(0.0, 4.0, size=(size, size, 3)), -10, 10)
    image = np.clip(np.asarray(canvas, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8)
    kept = []
    for figure in figures:
        keypoints = np.zeros((FIGURE.num_joints, 3))
        for j, (x, y) in enumerate(figure["joints"]):
            if not (0 <= x < size and 0 <= y < size) or rng.random() < unlabelled_rate:
                continue
            col, row = int(x), int(y)
            window = owners[max(0, row - 1): row + 2, max(0, col - 1): col + 2]
            keypoints[j] = (round(x, 2), round(y, 2), 2 if (window == figure["index"]).any() else 1)
        labelled = int((keypoints[:, 2] > 0).sum())
        if labelled < 3:
            continue
        w, h = figure["bbox"][2:]
        kept.append({"keypoints": keypoints, "bbox": figure["bbox"], "area": float(w * h),
                     "num_keypoints": labelled})
    return image, kept


def generate_synthetic_keypoints(root: str | Path, *, num_images: int = 64, image_size: int = 64,
                                 max_figures: int = 10, unlabelled_rate: float = 0.08, seed: int = 0,
                                 split: str = "train") -> Path:
    """Write ``root/split/*.png`` and ``root/annotations/person_keypoints_{split}.json``.

    Args:
        root: output folder. num_images: images of the split. image_size: square side in pixels.
        max_figures: most figures per image (1 to max_figures, uniform).
        unlabelled_rate: probability that an in-image joint is left unlabelled (v = 0).
        seed: the data seed. split: the split's name (also seeds it).

    Returns:
        Path of the annotation file.

    Raises:
        ValueError: a count or size out of range.
    """
    if num_images < 1 or image_size < 16 or max_figures < 1 or not 0.0 <= unlabelled_rate < 1.0:
        raise ValueError(
            f"generate_synthetic_keypoints: need num_images >= 1, image_size >= 16, max_figures >= 1 and "
            f"unlabelled_rate in [0, 1), got {num_images}, {image_size}, {max_figures}, {unlabelled_rate}"
        )
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, zlib.crc32(split.encode()), i])
        pixels, figures = render_figure_image(rng, image_size, max_figures, unlabelled_rate)
        name = f"{i:06d}.png"
        Image.fromarray(pixels).save(root / split / name, compress_level=PNG_COMPRESS_LEVEL)
        images.append({"id": i + 1, "file_name": name, "height": image_size, "width": image_size})
        for figure in figures:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORY_ID, "iscrowd": 0,
                "bbox": figure["bbox"], "area": figure["area"], "num_keypoints": figure["num_keypoints"],
                "keypoints": [float(v) for v in figure["keypoints"].reshape(-1)],
            })
    categories = [{"id": CATEGORY_ID, "name": "figure", "supercategory": "figure",
                   "keypoints": list(FIGURE.names), "skeleton": [[a + 1, b + 1] for a, b in FIGURE.skeleton]}]
    data = {"info": {"description": "examples.pose.synthetic", "seed": seed, "max_figures": max_figures,
                     "unlabelled_rate": unlabelled_rate},
            "images": images, "annotations": annotations, "categories": categories}
    path = root / "annotations" / f"person_keypoints_{split}.json"
    path.write_text(json.dumps(data))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write one or more splits."""
    p = argparse.ArgumentParser("examples.pose.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-figures", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", nargs="+", default=["train", "val"])
    args = p.parse_args(argv)
    for split in args.split:
        path = generate_synthetic_keypoints(args.out, num_images=args.num_images, image_size=args.image_size,
                                            max_figures=args.max_figures, seed=args.seed, split=split)
        print(path)


if __name__ == "__main__":
    main()
