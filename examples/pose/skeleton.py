"""Keypoint layouts: the synthetic figures' 9 joints and COCO's 17, with their OKS sigmas.

The matcher's OKS cost, the OKS loss and pycocotools' evaluation all read the sigmas of
the data set's layout (:func:`layout_for`), so the three agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridmatch.costs import COCO_KEYPOINT_SIGMAS

__all__ = ["COCO_PERSON", "FIGURE", "KeypointLayout", "layout_for"]


@dataclass(frozen=True)
class KeypointLayout:
    """A keypoint layout.

    Attributes:
        names: the J joint names, in order.
        sigmas: the J OKS constants (pycocotools' ``kpt_oks_sigmas``).
        flip_pairs: (left, right) index pairs swapped by a horizontal flip.
        skeleton: 0-based limb pairs (drawing and the COCO ``skeleton`` field, 1-based there).
    """

    names: tuple[str, ...]
    sigmas: tuple[float, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_joints(self) -> int:
        """J."""
        return len(self.names)

    def flip_permutation(self) -> list[int]:
        """Index map of a horizontal flip: joint ``j`` of the flipped pose is joint ``perm[j]``.

        Example:
            >>> FIGURE.flip_permutation()[:4]
            [0, 1, 3, 2]
        """
        perm = list(range(self.num_joints))
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm


#: The synthetic stick figures: 9 joints. Their sigmas are wider than COCO's (a figure is
#: 14 to 30 pixels tall in a 64-pixel image, so a pixel of error is a large fraction of it).
FIGURE = KeypointLayout(
    names=("head", "neck", "left_elbow", "right_elbow", "left_hand", "right_hand", "pelvis", "left_foot",
           "right_foot"),
    sigmas=(0.08, 0.08, 0.09, 0.09, 0.10, 0.10, 0.09, 0.10, 0.10),
    flip_pairs=((2, 3), (4, 5), (7, 8)),
    skeleton=((0, 1), (1, 2), (2, 4), (1, 3), (3, 5), (1, 6), (6, 7), (6, 8)),
)

#: COCO's 17 person keypoints with pycocotools' sigmas.
COCO_PERSON = KeypointLayout(
    names=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
           "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
           "right_knee", "left_ankle", "right_ankle"),
    sigmas=tuple(COCO_KEYPOINT_SIGMAS),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
              (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
)


def layout_for(names: tuple[str, ...] | list[str]) -> KeypointLayout:
    """The known layout whose joint names are ``names`` (a COCO category's ``keypoints``).

    Raises:
        ValueError: no known layout has these names; add a :class:`KeypointLayout` with sigmas.
    """
    for layout in (FIGURE, COCO_PERSON):
        if tuple(names) == layout.names:
            return layout
    raise ValueError(
        f"no keypoint layout with joints {list(names)}; define a KeypointLayout with its OKS sigmas in "
        f"examples.pose.skeleton (known: the synthetic figure's 9 joints, COCO's 17)"
    )
