"""examples/pose data: the synthetic figures, the COCO keypoints reader, keypoints through repeat_targets
and the matcher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from examples.pose.criterion import PER_OBJECT_KEYS, pose_matcher
from examples.pose.data import CocoKeypoints, PoseFlip, make_transforms
from examples.pose.skeleton import COCO_PERSON, FIGURE, layout_for
from examples.pose.synthetic import generate_synthetic_keypoints
from hybridmatch import repeat_targets

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pose")
    generate_synthetic_keypoints(root, num_images=12, split="train")
    return root


def test_synthetic_is_deterministic_dense_and_has_every_visibility(root: Path, tmp_path: Path) -> None:
    again = generate_synthetic_keypoints(tmp_path, num_images=12, split="train")
    assert again.read_bytes() == (root / "annotations" / "person_keypoints_train.json").read_bytes()
    for name in ("000000.png", "000011.png"):
        assert (tmp_path / "train" / name).read_bytes() == (root / "train" / name).read_bytes()
    other = generate_synthetic_keypoints(tmp_path / "other", num_images=12, split="train", seed=1)
    assert other.read_bytes() != again.read_bytes()

    data = json.loads(again.read_text())
    assert len(data["annotations"]) / len(data["images"]) > 4  # dense: several figures per image
    keypoints = np.array([a["keypoints"] for a in data["annotations"]]).reshape(-1, 9, 3)
    assert set(np.unique(keypoints[..., 2])) == {0.0, 1.0, 2.0}
    assert (keypoints[keypoints[..., 2] == 0][:, :2] == 0).all()  # COCO: unlabelled is (0, 0, 0)
    for a, k in zip(data["annotations"], keypoints):
        assert a["num_keypoints"] == int((k[:, 2] > 0).sum()) >= 3
        x, y, w, h = a["bbox"]
        labelled = k[k[:, 2] > 0]
        assert (labelled[:, 0] >= x - 1).all() and (labelled[:, 0] <= x + w + 1).all()
        assert (labelled[:, 1] >= y - 1).all() and (labelled[:, 1] <= y + h + 1).all()


def test_reader_normalises_keypoints_and_area(root: Path) -> None:
    dataset = CocoKeypoints(root / "train", root / "annotations" / "person_keypoints_train.json")
    data = json.loads((root / "annotations" / "person_keypoints_train.json").read_text())
    assert dataset.layout is FIGURE
    image, target = dataset[3]
    annotations = [a for a in data["annotations"] if a["image_id"] == dataset.image_ids[3]]
    expected = torch.tensor([a["keypoints"] for a in annotations], dtype=torch.float64).reshape(-1, 9, 3)
    expected[..., :2] /= 64.0
    torch.testing.assert_close(target["keypoints"].double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(target["area"].double(), torch.tensor([a["area"] / 64**2 for a in annotations],
                                                                      dtype=torch.float64), rtol=0, atol=1e-7)
    assert target["labels"].tolist() == [0] * len(annotations)
    assert image.shape == (3, 64, 64)


def test_flip_mirrors_and_swaps_left_and_right() -> None:
    keypoints = torch.zeros(1, 9, 3)
    keypoints[0, 2] = torch.tensor([10.0, 5.0, 2.0])  # left elbow
    keypoints[0, 3] = torch.tensor([30.0, 6.0, 1.0])  # right elbow
    keypoints[0, 0] = torch.tensor([20.0, 2.0, 2.0])  # head
    target = {"boxes": torch.tensor([[5.0, 1.0, 35.0, 20.0]]), "keypoints": keypoints}
    image = torch.arange(40.0).expand(3, 8, 40)
    flipped, out = PoseFlip(FIGURE.flip_permutation(), p=1.0)(image, target)
    assert out["keypoints"][0, 2].tolist() == [40.0 - 30.0, 6.0, 1.0]  # new left elbow: old right, mirrored
    assert out["keypoints"][0, 3].tolist() == [40.0 - 10.0, 5.0, 2.0]
    assert out["keypoints"][0, 0].tolist() == [20.0, 2.0, 2.0]
    assert out["keypoints"][0, 1].tolist() == [0.0, 0.0, 0.0]  # unlabelled stays (0, 0, 0)
    assert out["boxes"].tolist() == [[5.0, 1.0, 35.0, 20.0]]
    assert flipped[0, 0, 0] == 39.0
    assert sorted(COCO_PERSON.flip_permutation()) == list(range(17))
    with pytest.raises(ValueError, match="KeypointLayout"):
        layout_for(["a", "b"])


def test_transforms_keep_keypoints_on_the_same_pixels(root: Path) -> None:
    # Resizing 64 -> 56 scales both the image and the keypoints: normalised keypoints are unchanged.
    plain = CocoKeypoints(root / "train", root / "annotations" / "person_keypoints_train.json")
    resized = CocoKeypoints(root / "train", root / "annotations" / "person_keypoints_train.json",
                            transforms=make_transforms(False, FIGURE, (56,)))
    _, a = plain[0]
    image, b = resized[0]
    assert image.shape[-2:] == (56, 56)
    torch.testing.assert_close(a["keypoints"], b["keypoints"], rtol=0, atol=1e-5)
    torch.testing.assert_close(a["area"], b["area"], rtol=1e-5, atol=0)


def _oks64(pred: np.ndarray, target: np.ndarray, area: float, sigmas: np.ndarray) -> float:
    """COCO's OKS written out in float64 for one pose pair."""
    labelled = target[:, 2] > 0
    if not labelled.any():
        return 0.0
    d2 = ((pred - target[:, :2]) ** 2).sum(-1)
    e = d2 / (2 * sigmas) ** 2 / (area + np.spacing(1)) / 2
    return float(np.exp(-e)[labelled].mean())


def test_keypoints_flow_through_repeat_targets_and_the_matcher() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for m in (3, 0, 2):
        keypoints = torch.cat([torch.rand(m, 9, 2, generator=generator),
                               torch.randint(0, 3, (m, 9, 1), generator=generator).float()], dim=-1)
        keypoints[:, 0, 2] = 2.0  # at least one labelled joint each
        targets.append({"labels": torch.zeros(m, dtype=torch.int64), "boxes": torch.rand(m, 4, generator=generator),
                        "keypoints": keypoints, "area": torch.rand(m, generator=generator) * 0.2 + 0.01,
                        "image_id": torch.tensor([7])})
    repeated = repeat_targets(targets, 3, per_object_keys=PER_OBJECT_KEYS)
    for original, copy in zip(targets, repeated):
        torch.testing.assert_close(copy["keypoints"], torch.cat([original["keypoints"]] * 3))
        torch.testing.assert_close(copy["area"], torch.cat([original["area"]] * 3))
        assert copy["image_id"].tolist() == [7]

    outputs = {"pred_logits": torch.randn(3, 8, 1, generator=generator),
               "pred_keypoints": torch.rand(3, 8, 9, 2, generator=generator)}
    sigmas = np.array(FIGURE.sigmas)
    indices = pose_matcher(FIGURE.sigmas)(outputs, targets)
    for b, (target, (rows, cols)) in enumerate(zip(targets, indices)):
        m = len(target["labels"])
        cost = np.zeros((8, m))
        for n in range(8):
            p = 1.0 / (1.0 + math.exp(-float(outputs["pred_logits"][b, n, 0])))
            focal = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
            for j in range(m):
                k = target["keypoints"][j].double().numpy()
                pred = outputs["pred_keypoints"][b, n].double().numpy()
                labelled = k[:, 2] > 0
                l1 = np.abs(pred - k[:, :2]).sum(-1)[labelled].mean()
                oks = _oks64(pred, k, float(target["area"][j]), sigmas)
                cost[n, j] = 2 * focal + 5 * l1 + 2 * (1 - oks)
        ref_rows, ref_cols = linear_sum_assignment(cost)
        assert len(rows) == m
        assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(cost[ref_rows, ref_cols].sum(), abs=1e-5)


def test_a_coco_person_keypoints_file_reads_with_cocos_17_joints(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "val2017" / "000000000001.jpg")
    joints = [0.0] * 51
    joints[15:18] = [10.0, 12.0, 2.0]  # left_shoulder
    joints[48:51] = [20.0, 25.0, 1.0]  # right_ankle
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 30, "width": 40}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [5, 5, 20, 22], "area": 300.0,
             "num_keypoints": 2, "keypoints": joints},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 5, 5], "area": 20.0,
             "num_keypoints": 0, "keypoints": [0.0] * 51},  # no labelled joint: not a training target
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_PERSON.names),
                        "skeleton": [[a + 1, b + 1] for a, b in COCO_PERSON.skeleton]}],
    }
    path = tmp_path / "person_keypoints_val2017.json"
    path.write_text(json.dumps(data))
    dataset = CocoKeypoints(tmp_path / "val2017", path)
    assert dataset.layout is COCO_PERSON and dataset.num_joints == 17
    _, target = dataset[0]
    assert target["keypoints"].shape == (1, 17, 3)
    assert target["keypoints"][0, 5].tolist() == pytest.approx([10 / 40, 12 / 30, 2.0])
    assert target["keypoints"][0, 16].tolist() == pytest.approx([20 / 40, 25 / 30, 1.0])
    assert target["area"].tolist() == pytest.approx([300.0 / 1200])


def test_the_evaluation_transform_draws_no_random_numbers() -> None:
    # Training's augmentations read torch's global stream: an evaluation pass in between must
    # not move it, or how often a run evaluates would change what it trains on.
    image = torch.rand(3, 40, 60)
    keypoints = torch.tensor([[[10.0, 12.0, 2.0]] * 9])
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]), "labels": torch.zeros(1, dtype=torch.long),
              "keypoints": keypoints, "area": torch.tensor([0.05])}
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    resized, out = make_transforms(False, FIGURE, (48, 56, 64), 100)(image, {k: v.clone() for k, v in target.items()})
    assert torch.equal(torch.rand(2), expected)
    assert min(resized.shape[-2:]) == 64  # the largest scale
    torch.manual_seed(7)
    make_transforms(True, FIGURE, (48, 56, 64), 100)(image, {k: v.clone() for k, v in target.items()})
    assert not torch.equal(torch.rand(2), expected)  # training does draw: the check can fail
