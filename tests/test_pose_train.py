"""examples/pose evaluation: keypoint AP of perfect and shuffled poses, and the sigmas that matter.

Pose's exact resume is in tests/test_runner.py (every task), its comparison in tests/test_comparison.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.pose.evaluate import STAT_NAMES, coco_keypoint_stats
from examples.pose.skeleton import FIGURE
from examples.pose.synthetic import generate_synthetic_keypoints

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pose-train")
    generate_synthetic_keypoints(root, num_images=6, split="train")
    generate_synthetic_keypoints(root, num_images=12, split="val")
    return root


def _ground_truth(root: Path):
    from examples.common.coco import load_coco

    return load_coco(root / "annotations" / "person_keypoints_val.json")


def test_perfect_poses_score_ap_1_and_shuffled_joints_score_low(root: Path) -> None:
    coco = _ground_truth(root)
    annotations = list(coco.anns.values())
    perfect = [{"image_id": a["image_id"], "category_id": 1, "score": 0.5 + 0.01 * (i % 7),
                "keypoints": a["keypoints"]} for i, a in enumerate(annotations)]
    stats = coco_keypoint_stats(coco, perfect, FIGURE.sigmas)
    assert set(stats) == set(STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)

    rng = np.random.default_rng(0)
    shuffled = []
    for result in perfect:
        joints = np.array(result["keypoints"]).reshape(-1, 3)
        joints[:, :2] = joints[rng.permutation(len(joints)), :2]  # right figure, joints in the wrong places
        shuffled.append({**result, "keypoints": joints.reshape(-1).tolist()})
    assert coco_keypoint_stats(coco, shuffled, FIGURE.sigmas)["AP"] < 0.2
    assert coco_keypoint_stats(coco, [], FIGURE.sigmas)["AP"] <= 0.0


def test_cocos_default_sigmas_would_score_differently(root: Path) -> None:
    # The evaluation must use the layout's sigmas: jittered poses score higher with the figure's
    # (wider) sigmas than with pycocotools' 17 COCO ones cut to 9.
    coco = _ground_truth(root)
    rng = np.random.default_rng(1)
    jittered = []
    for a in coco.anns.values():
        joints = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
        joints[:, :2] += rng.normal(0, 1.0, size=(len(joints), 2))
        jittered.append({"image_id": a["image_id"], "category_id": 1, "score": 0.9,
                         "keypoints": joints.reshape(-1).tolist()})
    ours = coco_keypoint_stats(coco, jittered, FIGURE.sigmas)["AP"]
    narrow = coco_keypoint_stats(coco, jittered, [s / 3 for s in FIGURE.sigmas])["AP"]
    assert 0 < narrow < ours
