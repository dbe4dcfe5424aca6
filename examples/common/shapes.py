"""Seeded drawing of coloured shapes on a noisy background: the synthetic images' painter.

The detection and segmentation examples' synthetic sets (:mod:`examples.detection.synthetic`,
:mod:`examples.segmentation.synthetic`) draw their images here and differ only in what
they write down (boxes, or boxes and masks).

Each image shows 1 to ``max_objects`` filled shapes (square, circle, triangle,
plus-cross, diamond, ring) in varied colours and sizes, small ones included, on a
linear colour gradient with mild noise. Shapes may overlap, but an object is only kept
when at least :data:`MIN_VISIBLE_FRACTION` of its pixels stay visible after every later
shape is drawn. Shapes are drawn without anti-aliasing, so a visible mask is exact.

Contrast: the background gradient spans at most ``GRADIENT_SPAN`` = 40 per channel and
the noise is clipped to ``NOISE_CLIP`` = 10, while an object's colour is at least
``MIN_CONTRAST`` = 100 (max over channels) away from the gradient's start colour and from
every earlier object's colour. So every object pixel differs from the noiseless
background under it by at least 100 - 40 - 10 - 0.5 (rounding) > 49 in some channel,
and a background pixel by at most 10.5.

Example:
    >>> import numpy as np
    >>> pixels, objects = draw_image(np.random.default_rng(0), 32, 32, ["square", "circle"], 3)
    >>> pixels.shape, pixels.dtype, all(mask.shape == (32, 32) for _, mask in objects)
    ((32, 32, 3), dtype('uint8'), True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CATEGORIES",
    "GRADIENT_SPAN",
    "MIN_CONTRAST",
    "MIN_OBJECT_SIZE",
    "MIN_VISIBLE_FRACTION",
    "NOISE_CLIP",
    "NOISE_STD",
    "PNG_COMPRESS_LEVEL",
    "draw_image",
    "mask_to_bbox",
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


def draw_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    shapes: Sequence[str],
    max_objects: int,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image of 1 to ``max_objects`` shapes on a noisy gradient (the module docstring's rules).

    Args:
        rng: the image's own generator (what it draws is all this image consumes).
        height, width: the image size in pixels.
        shapes: the shape names to pick from (names of :data:`CATEGORIES`); an object's shape
            index refers to this list.
        max_objects: most shapes drawn; one whose visible fraction would fall below
            :data:`MIN_VISIBLE_FRACTION` is not placed.

    Returns:
        ``(image uint8[H, W, 3], [(shape index, visible mask bool[H, W]) per kept object])``.
    """
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


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """The tight COCO box ``[x, y, w, h]`` (absolute pixels) of a non-empty bool mask ``(H, W)``.

    Example:
        >>> mask = np.zeros((5, 6), dtype=bool); mask[1:3, 2:5] = True
        >>> mask_to_bbox(mask)
        [2.0, 1.0, 3.0, 2.0]
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return [float(x0), float(y0), float(cols[-1] - x0 + 1), float(rows[-1] - y0 + 1)]
