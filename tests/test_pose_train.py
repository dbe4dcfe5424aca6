"""examples/pose evaluation and training: keypoint AP of perfect and shuffled poses, exact resume,
the command line and the comparison job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.pose.engine import get_args_parser, run
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
    from examples.detection.data import _load_coco

    return _load_coco(root / "annotations" / "person_keypoints_val.json")


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


def _args(root: Path, out: Path, *extra: str):
    return get_args_parser().parse_args([
        "--data", "synthetic", "--data-path", str(root), "--batch-size", "2", "--synthetic-train-images", "6",
        "--synthetic-val-images", "12", "--val-limit", "4", "--num-queries-one2one", "6",
        "--num-queries-one2many", "20", "--k", "2", "--output-dir", str(out), "--eval-every", "0", "--quiet",
        "--device", "cpu", *extra,
    ])


@pytest.mark.slow
def test_resume_is_exact(root: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    common = ("--scheme", "branch", "--epochs", "2")
    straight = run(_args(root, tmp_path / "a", *common))
    run(_args(root, tmp_path / "b", *common, "--stop-after", "1"))
    checkpoint = tmp_path / "b" / "checkpoint.pth"
    resumed = run(_args(root, tmp_path / "b", *common, "--resume", str(checkpoint)))
    assert [r["epoch"] for r in resumed] == [0, 1]
    assert resumed[1]["train"]["loss"] == pytest.approx(straight[1]["train"]["loss"], rel=1e-6)
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=False)
    b = torch.load(checkpoint, weights_only=False)
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert "coco_kp" in resumed[1] and set(resumed[1]["coco_kp"]) == set(STAT_NAMES)


@pytest.mark.slow
def test_main_job_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.pose.main_job import main

    summary = main(["--seeds", "0", "--epochs", "1", "--workers", "1", "--train-images", "4", "--val-images", "4",
                    "--num-queries-one2one", "6", "--num-queries-one2many", "20", "--k", "2",
                    "--output-dir", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    assert "COCO keypoint AP" in printed and "branch o2o - one2one" in printed
    assert set(summary["lines"]) == {"one2one", "branch o2o"}
    assert (tmp_path / "pose_ap.png").is_file()
    assert json.loads((tmp_path / "pose.json").read_text())["epochs"] == 1
