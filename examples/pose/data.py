"""COCO keypoints data: a data set reader, pose-aware augmentations, the detection collate.

:class:`CocoKeypoints` reads a COCO ``person_keypoints_*.json`` (the real COCO files work
unchanged, as do the synthetic files of :mod:`examples.pose.synthetic`). It extends
:class:`examples.detection.data.CocoDetection`; an item's target holds the detection keys
(``labels``, ``boxes`` cxcywh normalised, ``area``, ``iscrowd``, ``image_id``,
``orig_size``, ``size``) plus

* ``keypoints`` (Tensor[M, J, 3] float32): ``(x, y, v)`` with x, y normalised to [0, 1]
  by the transformed image's width and height, ``v`` COCO's visibility (0 unlabelled, 1
  occluded, 2 visible); an unlabelled keypoint is ``(0, 0, 0)``;
* ``area`` normalised too, by width times height, so it is in the keypoints' units squared
  (what :class:`hybridmatch.OKSCost` needs). With a non-square image this OKS is computed
  in normalised coordinates, a close stand-in for the matching cost; the evaluation is
  pycocotools' own, in pixels.

Crowd annotations and objects without a labelled keypoint (``num_keypoints == 0``) are
dropped from the training targets, as PETR does; the evaluation reads the COCO ground truth
directly (where pycocotools ignores such objects anyway).

Transforms are ``(image, target) -> (image, target)`` over ``xyxy`` absolute boxes and
absolute keypoints (:func:`make_transforms`): a horizontal flip that also swaps left and
right joints, a random resize of the shorter side, the ImageNet normalisation. The
batches are :func:`examples.detection.data.collate_fn`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from examples.detection.data import CocoDetection, Compose, Normalize, Target, Transform, collate_fn, hflip, resize

from .skeleton import KeypointLayout, layout_for

__all__ = ["CocoKeypoints", "PoseFlip", "PoseResize", "collate_fn", "make_transforms"]


class PoseFlip:
    """Mirror left-right with probability ``p``: boxes, keypoints ``x -> W - x``, left/right joints swapped.

    Args:
        flip_permutation: from :meth:`KeypointLayout.flip_permutation`.
        p: the flip probability. generator: a ``torch.Generator`` or None (global RNG).
    """

    def __init__(self, flip_permutation: Sequence[int], p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        self.perm = list(flip_permutation)
        self.p = p
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return image, target
        width = image.shape[-1]
        image, target = hflip(image, target)
        if "keypoints" in target:
            keypoints = target["keypoints"][:, self.perm].clone()
            labelled = keypoints[..., 2] > 0
            keypoints[..., 0] = torch.where(labelled, width - keypoints[..., 0], 0.0)
            target["keypoints"] = keypoints
        return image, target


class PoseResize:
    """Resize the shorter side to one of ``sizes`` (at random), longer side at most ``max_size``.

    Boxes and areas as :func:`examples.detection.data.resize`; keypoints scaled by (sx, sy).
    With one size (evaluation) nothing is drawn, so evaluating cannot move the random
    stream that training's augmentations read.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not sizes:
            raise ValueError("PoseResize: sizes must list at least one shorter-side size")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if len(self.sizes) == 1:
            size = self.sizes[0]
        else:
            size = self.sizes[int(torch.randint(len(self.sizes), (), generator=self.generator))]
        height, width = image.shape[-2:]
        image, target = resize(image, target, size, self.max_size)
        if "keypoints" in target:
            sx, sy = image.shape[-1] / width, image.shape[-2] / height
            target["keypoints"] = target["keypoints"] * target["keypoints"].new_tensor([sx, sy, 1.0])
        return image, target


def make_transforms(train: bool, layout: KeypointLayout, scales: Sequence[int], max_size: int | None = None,
                    *, generator: torch.Generator | None = None) -> Compose:
    """Training: flip (p 0.5, joints swapped), a random scale, normalise. Eval: ``max(scales)``, normalise."""
    if not train:
        return Compose([PoseResize([max(scales)], max_size), Normalize()])
    return Compose([PoseFlip(layout.flip_permutation(), 0.5, generator), PoseResize(scales, max_size, generator),
                    Normalize()])


class CocoKeypoints(CocoDetection):
    """A COCO keypoints file and its images as ``(image, target)`` pairs (see the module docstring).

    Args:
        image_dir, annotation_file, transforms: as :class:`examples.detection.data.CocoDetection`
            (transforms see absolute keypoints ``(M, J, 3)`` next to ``xyxy`` boxes).

    Attributes:
        layout (KeypointLayout): the joints of the file's (first) category, with their sigmas.
        num_joints (int): J.

    Raises:
        ValueError: the file's category has no ``keypoints`` list, or one no layout knows.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path,
                 transforms: Transform | None = None) -> None:
        super().__init__(image_dir, annotation_file, transforms)
        category = self.coco.cats[self.label_to_category[0]]
        names = category.get("keypoints")
        if not names:
            raise ValueError(f"{annotation_file}: category {category.get('name')!r} has no 'keypoints' list; "
                             f"is this a person_keypoints_*.json file?")
        self.layout = layout_for(names)
        self.num_joints = self.layout.num_joints

    def load_target(self, image_id: int, height: int, width: int) -> Target:
        """The kept objects: labelled keypoints, not crowd, a positive box after clipping."""
        annotations = [a for a in self.coco.imgToAnns.get(image_id, [])
                       if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
        joints = self.num_joints
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keypoints = torch.tensor([a["keypoints"] for a in annotations], dtype=torch.float32).reshape(-1, joints, 3)
        keypoints[..., :2] *= (keypoints[..., 2:] > 0)
        labels = torch.tensor([self.category_to_label[a["category_id"]] for a in annotations], dtype=torch.int64)
        area = torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in annotations],
                            dtype=torch.float32)
        return {
            "boxes": boxes[keep], "labels": labels[keep], "area": area[keep], "keypoints": keypoints[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = super().__getitem__(index)  # boxes normalised there
        height, width = (float(v) for v in target["size"])
        keypoints = target["keypoints"] / target["keypoints"].new_tensor([width, height, 1.0])
        keypoints[..., :2] = keypoints[..., :2].clamp(0.0, 1.0) * (keypoints[..., 2:] > 0)
        target["keypoints"] = keypoints
        target["area"] = target["area"] / (width * height)
        return image, target
