"""The detection example's data side: the synthetic generator, the COCO dataset, transforms, collate.

References are independent of the code under test: box geometry is checked
against pixels (a plane fitted to the background), label mappings against the
json read with the standard library, and transforms against hand-worked boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from examples.detection.data import (  # noqa: E402
    CocoDetection,
    Normalize,
    RandomHorizontalFlip,
    RandomResize,
    RandomSizeCrop,
    collate_fn,
    crop,
    hflip,
    make_transforms,
    resized_shape,
    small_scales,
)
from examples.detection.synthetic import generate_synthetic_coco, main  # noqa: E402

# A pixel belongs to an object when it is this far (max over channels) from the fitted
# background; the generator promises > 49 for object pixels and <= 10.5 for background.
OBJECT_THRESHOLD = 30.0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_images=24, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _background_deviation(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Max-over-channels distance of each pixel from a plane a + b x + c y fitted per channel on `background`."""
    height, width = background.shape
    yy, xx = np.mgrid[0:height, 0:width]
    design = np.stack([np.ones(height * width), xx.ravel(), yy.ravel()], axis=1)
    values = pixels.reshape(-1, 3).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design[background.ravel()], values[background.ravel()], rcond=None)
    return np.abs(values - design @ coef).max(axis=1).reshape(height, width)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------
# Synthetic generator
# ---------------------------------------------------------------------------


def test_generator_is_byte_identical_for_equal_seeds(tmp_path: Path) -> None:
    generate_synthetic_coco(tmp_path / "a", num_images=6, seed=3)
    generate_synthetic_coco(tmp_path / "b", num_images=6, seed=3)
    generate_synthetic_coco(tmp_path / "c", num_images=6, seed=4)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 7  # six PNGs and the json
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a), "a different seed must change every file"


def test_generator_more_images_only_appends(tmp_path: Path) -> None:
    _, short = generate_synthetic_coco(tmp_path / "short", num_images=3, seed=1)
    _, long = generate_synthetic_coco(tmp_path / "long", num_images=5, seed=1)
    for name in ("000000000001.png", "000000000003.png"):
        assert (tmp_path / "short/train" / name).read_bytes() == (tmp_path / "long/train" / name).read_bytes()
    short_annotations = _read_json(short)["annotations"]
    assert _read_json(long)["annotations"][: len(short_annotations)] == short_annotations


def test_generator_splits_differ(tmp_path: Path) -> None:
    generate_synthetic_coco(tmp_path, num_images=2, seed=0, split="train")
    generate_synthetic_coco(tmp_path, num_images=2, seed=0, split="val")
    name = "000000000001.png"
    assert (tmp_path / "train" / name).read_bytes() != (tmp_path / "val" / name).read_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 7}, {"num_classes": 0}, {"num_images": 0}, {"image_size": (8, 64)}, {"seed": -1},
     {"max_objects": 0}, {"split": "a/b"}],
)
def test_generator_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_coco(tmp_path, **kwargs)


def test_annotations_load_with_pycocotools_and_lie_inside_images(synthetic: tuple[Path, Path]) -> None:
    from pycocotools.coco import COCO

    image_dir, annotation_file = synthetic
    coco = COCO(str(annotation_file))
    assert sorted(coco.getCatIds()) == [1, 3, 7, 10]
    assert len(coco.getImgIds()) == 24
    used = set()
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        with Image.open(image_dir / info["file_name"]) as image:
            assert image.size == (info["width"], info["height"]) == (128, 128)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(annotations) <= 6
        for ann in annotations:
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert ann["iscrowd"] == 0
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= info["width"] and y + h <= info["height"]
            assert 0 < ann["area"] <= w * h
            used.add(ann["category_id"])
    assert used == {1, 3, 7, 10}
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


def test_boxes_are_tight_around_the_drawn_pixels(synthetic: tuple[Path, Path]) -> None:
    image_dir, annotation_file = synthetic
    data = _read_json(annotation_file)
    checked = 0
    for info in data["images"]:
        pixels = np.asarray(Image.open(image_dir / info["file_name"]).convert("RGB"))
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == info["id"]]
        outside = np.ones(pixels.shape[:2], dtype=bool)
        for x, y, w, h in boxes:
            outside[int(y) : int(y + h), int(x) : int(x + w)] = False
        if outside.sum() < 1000:  # too little background to fit a plane
            continue
        checked += 1
        deviation = _background_deviation(pixels, outside)
        # Nothing is drawn outside the boxes: the background there is gradient + mild noise.
        assert deviation[outside].max() < 12.0
        for x, y, w, h in boxes:
            inside = deviation[int(y) : int(y + h), int(x) : int(x + w)] > OBJECT_THRESHOLD
            # Tight: every edge row and column of the box holds an object pixel.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert checked >= 18


def test_single_objects_match_their_box_area_and_shape(tmp_path: Path) -> None:
    image_dir, annotation_file = generate_synthetic_coco(
        tmp_path, num_images=30, image_size=(96, 96), max_objects=1, seed=5
    )
    data = _read_json(annotation_file)
    # Fill ratio area / (w * h) of each shape at large sizes: square 1, circle pi/4,
    # triangle 1/2, cross with arms 0.4 thick 1 - 4 * 0.3^2 = 0.64.
    expected_fill = {1: 1.0, 3: np.pi / 4, 7: 0.5, 10: 0.64}
    shapes_checked = 0
    for info, ann in zip(data["images"], data["annotations"], strict=True):
        assert ann["image_id"] == info["id"]
        pixels = np.asarray(Image.open(image_dir / info["file_name"]).convert("RGB"))
        x, y, w, h = (int(v) for v in ann["bbox"])
        outside = np.ones(pixels.shape[:2], dtype=bool)
        outside[y : y + h, x : x + w] = False
        drawn = _background_deviation(pixels, outside) > OBJECT_THRESHOLD
        rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
        assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == [x, y, w, h]
        assert drawn.sum() == ann["area"]
        if min(w, h) >= 16:
            fill = ann["area"] / (w * h)
            nearest = min(expected_fill, key=lambda cid: abs(expected_fill[cid] - fill))
            assert nearest == ann["category_id"], (fill, ann)
            shapes_checked += 1
    assert shapes_checked >= 10


def test_cli_writes_the_same_files_as_the_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path / "cli"), "--num-images", "3", "--image-size", "32", "48", "--seed", "2",
          "--split", "train", "val"])
    assert "val: 3 images" in capsys.readouterr().out
    for split in ("train", "val"):
        generate_synthetic_coco(tmp_path / "api", num_images=3, image_size=(32, 48), seed=2, split=split)
    assert _files(tmp_path / "cli") == _files(tmp_path / "api")
    assert _read_json(tmp_path / "cli/annotations/instances_val.json")["images"][0]["height"] == 32


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


def test_label_mapping_round_trip(synthetic: tuple[Path, Path]) -> None:
    image_dir, annotation_file = synthetic
    dataset = CocoDetection(image_dir, annotation_file)
    assert dataset.num_classes == 4
    assert dataset.category_to_label == {1: 0, 3: 1, 7: 2, 10: 3}
    assert {v: k for k, v in dataset.label_to_category.items()} == dataset.category_to_label
    assert dataset.category_names == ["square", "circle", "triangle", "cross"]
    data = _read_json(annotation_file)
    for index in range(len(dataset)):
        image, target = dataset[index]
        image_id = int(target["image_id"])
        expected = sorted(
            (a["category_id"], a["bbox"]) for a in data["annotations"] if a["image_id"] == image_id
        )
        cx, cy, w, h = (target["boxes"] * torch.tensor([128.0, 128.0, 128.0, 128.0])).unbind(-1)
        got = sorted(
            (dataset.label_to_category[int(label)], [round(float(v), 4) for v in box])
            for label, box in zip(target["labels"], torch.stack([cx - w / 2, cy - h / 2, w, h], -1), strict=True)
        )
        assert got == expected
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0  # no transforms: no normalisation
        assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
        assert target["orig_size"].tolist() == target["size"].tolist() == [128, 128]
        assert target["iscrowd"].tolist() == [0] * len(target["labels"])


def _write_hand_made_set(root: Path) -> tuple[Path, Path]:
    """Two images (h 30, w 40); categories 5 and 2 listed out of order."""
    image_dir = root / "images"
    image_dir.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((30, 40, 3), 128, dtype=np.uint8)).save(image_dir / name)
    ann = {"image_id": 7, "area": 10.0, "iscrowd": 0}
    dataset = {
        "images": [
            {"id": 7, "file_name": "a.png", "height": 30, "width": 40},
            {"id": 3, "file_name": "b.png", "height": 30, "width": 40},
        ],
        "categories": [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}],
        "annotations": [
            {**ann, "id": 1, "category_id": 5, "bbox": [4.0, 6.0, 10.0, 8.0], "area": 80.0},  # kept
            {**ann, "id": 2, "category_id": 2, "bbox": [1.0, 1.0, 5.0, 5.0], "iscrowd": 1},  # crowd
            {**ann, "id": 3, "category_id": 2, "bbox": [1.0, 1.0, 0.0, 5.0]},  # zero width
            {**ann, "id": 4, "category_id": 2, "bbox": [1.0, 9.0, 5.0, -2.0]},  # negative height
            {**ann, "id": 5, "category_id": 2, "bbox": [50.0, 0.0, 5.0, 5.0]},  # outside the image
            {**ann, "id": 6, "category_id": 2, "bbox": [35.0, 25.0, 10.0, 10.0]},  # clipped to 5 x 5
        ],
    }
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(dataset))
    return image_dir, annotation_file


def test_crowd_and_degenerate_annotations_are_dropped(tmp_path: Path) -> None:
    dataset = CocoDetection(*_write_hand_made_set(tmp_path))
    assert dataset.category_to_label == {2: 0, 5: 1}
    assert dataset.num_classes == 2 and dataset.category_names == ["two", "five"]
    assert dataset.image_ids == [3, 7]

    _, empty = dataset[0]  # image 3 has no annotations
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["image_id"].tolist() == [3]

    _, target = dataset[1]
    assert target["labels"].tolist() == [1, 0]
    # xyxy (4, 6, 14, 14) -> cxcywh (9/40, 10/30, 10/40, 8/30);
    # (35, 25, 45, 35) clipped to (35, 25, 40, 30) -> (37.5/40, 27.5/30, 5/40, 5/30).
    expected = torch.tensor([[9 / 40, 10 / 30, 10 / 40, 8 / 30], [37.5 / 40, 27.5 / 30, 5 / 40, 5 / 30]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["image_id"].dtype == torch.int64 and target["image_id"].tolist() == [7]
    assert target["orig_size"].tolist() == [30, 40] and target["size"].tolist() == [30, 40]
    assert target["area"].tolist() == [80.0, 10.0]


def test_missing_files_are_reported(tmp_path: Path) -> None:
    image_dir, annotation_file = _write_hand_made_set(tmp_path)
    with pytest.raises(FileNotFoundError, match="annotation_file"):
        CocoDetection(image_dir, tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="image_dir"):
        CocoDetection(tmp_path / "nope", annotation_file)


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------


def test_hflip_function_mirrors_xyxy_boxes() -> None:
    image = torch.arange(2 * 100, dtype=torch.float32).reshape(1, 2, 100).expand(3, 2, 100)
    flipped, target = hflip(image, {"boxes": torch.tensor([[10.0, 5.0, 30.0, 15.0]])})
    # Width 100: x in [10, 30] becomes [70, 90].
    assert target["boxes"].tolist() == [[70.0, 5.0, 90.0, 15.0]]
    assert flipped[0, 1, 0] == image[0, 1, 99]


def test_hflip_in_the_dataset_maps_cx_to_one_minus_cx(synthetic: tuple[Path, Path]) -> None:
    plain = CocoDetection(*synthetic)
    flipped = CocoDetection(*synthetic, transforms=RandomHorizontalFlip(p=1.0))
    for index in range(4):
        image, target = plain[index]
        image_f, target_f = flipped[index]
        expected = target["boxes"].clone()
        expected[:, 0] = 1 - expected[:, 0]
        torch.testing.assert_close(target_f["boxes"], expected)
        assert torch.equal(image_f, image.flip(-1))
        assert torch.equal(target_f["labels"], target["labels"])


def test_resized_shape_known_answers() -> None:
    assert resized_shape(30, 40, 45) == (45, 60)
    assert resized_shape(480, 640, 800, max_size=1333) == (800, 1067)
    # 100 x 300 to shorter side 200 would be 600 long > 400: scale 400 / 300 instead.
    assert resized_shape(100, 300, 200, max_size=400) == (133, 400)
    assert resized_shape(300, 100, 200, max_size=400) == (400, 133)


def test_resize_keeps_normalised_boxes(tmp_path: Path) -> None:
    image_dir, annotation_file = _write_hand_made_set(tmp_path)
    plain = CocoDetection(image_dir, annotation_file)
    resized = CocoDetection(image_dir, annotation_file, transforms=RandomResize([45]))
    _, target = plain[1]
    image_r, target_r = resized[1]
    assert image_r.shape == (3, 45, 60) and target_r["size"].tolist() == [45, 60]
    assert target_r["orig_size"].tolist() == [30, 40]
    torch.testing.assert_close(target_r["boxes"], target["boxes"])
    torch.testing.assert_close(target_r["area"], target["area"] * 1.5**2)


def test_crop_hand_checked_example() -> None:
    image = torch.arange(100 * 100, dtype=torch.float32).reshape(1, 100, 100).expand(3, 100, 100)
    target = {
        "boxes": torch.tensor(
            [[10.0, 10.0, 50.0, 50.0], [80.0, 80.0, 95.0, 95.0], [25.0, 30.0, 35.0, 45.0], [70.0, 20.0, 80.0, 30.0]]
        ),
        "labels": torch.tensor([0, 1, 2, 3]),
        "area": torch.tensor([1600.0, 225.0, 150.0, 100.0]),
        "iscrowd": torch.zeros(4, dtype=torch.int64),
    }
    cropped, out = crop(image, target, top=20, left=30, height=40, width=40)
    # Shift by (-30, -20), clip to [0, 40] x [0, 40]:
    #   (10, 10, 50, 50) -> (-20, -10, 20, 30) -> (0, 0, 20, 30), keeps 600 / 1600 of its area;
    #   (80, 80, 95, 95) -> (50, 60, 65, 75) -> empty, dropped;
    #   (25, 30, 35, 45) -> (-5, 10, 5, 25) -> (0, 10, 5, 25), keeps 75 / 150;
    #   (70, 20, 80, 30) -> (40, 0, 50, 10) -> (40, 0, 40, 10): zero width, dropped.
    assert out["boxes"].tolist() == [[0.0, 0.0, 20.0, 30.0], [0.0, 10.0, 5.0, 25.0]]
    assert out["labels"].tolist() == [0, 2]
    assert out["area"].tolist() == [600.0, 75.0]
    assert out["iscrowd"].tolist() == [0, 0]
    assert cropped.shape == (3, 40, 40)
    assert torch.equal(cropped, image[:, 20:60, 30:70])
    assert target["boxes"].shape == (4, 4), "the input target is not modified"


def test_random_size_crop_keeps_boxes_inside_the_crop() -> None:
    generator = torch.Generator().manual_seed(0)
    transform = RandomSizeCrop(20, 60, generator=generator)
    image = torch.rand(3, 80, 100)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 80.0], [10.0, 10.0, 30.0, 40.0], [60.0, 50.0, 90.0, 75.0]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2])}
    for _ in range(20):
        cropped, out = transform(image, target)
        h, w = cropped.shape[-2:]
        assert 20 <= h <= 60 and 20 <= w <= 60
        b = out["boxes"]
        assert 0 in out["labels"].tolist()  # the whole-image box always survives
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(out["labels"]) == len(b)


def test_train_transforms_are_seeded_and_give_valid_targets(synthetic: tuple[Path, Path]) -> None:
    def load(seed: int) -> list[tuple[torch.Tensor, dict]]:
        transforms = make_transforms(True, small_scales(), generator=torch.Generator().manual_seed(seed))
        dataset = CocoDetection(*synthetic, transforms=transforms)
        return [dataset[i] for i in range(12)]

    first, again, other = load(0), load(0), load(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(first, again))
    assert any(a[0].shape != c[0].shape or not torch.equal(a[0], c[0]) for a, c in zip(first, other))
    for image, target in first:
        h, w = target["size"].tolist()
        assert image.shape == (3, h, w)
        assert min(h, w) in small_scales()
        boxes = target["boxes"]
        assert ((boxes[:, :2] - boxes[:, 2:] / 2) >= -1e-5).all() and ((boxes[:, :2] + boxes[:, 2:] / 2) <= 1 + 1e-5).all()
        assert (boxes[:, 2:] > 0).all()
        assert len(target["labels"]) == len(boxes) == len(target["area"])


def test_eval_transforms_resize_to_the_largest_scale_and_normalise() -> None:
    transforms = make_transforms(False, scales=(64, 96), max_size=1000)
    image = torch.tensor([0.485, 0.456, 0.406])[:, None, None].expand(3, 48, 32).clone()
    out, target = transforms(image, {"boxes": torch.tensor([[0.0, 0.0, 32.0, 48.0]])})
    assert out.shape == (3, 144, 96)
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-5, rtol=0)
    assert target["boxes"].tolist() == [[0.0, 0.0, 96.0, 144.0]]
    ones, _ = Normalize()(torch.ones(3, 2, 2), {})
    torch.testing.assert_close(ones[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_make_transforms_crop_branch_scales_with_the_largest_scale() -> None:
    text = repr(make_transforms(True))
    # DETR's recipe at 800: resize to 400/500/600, crop 384..600.
    assert "sizes=(400, 500, 600)" in text and "RandomSizeCrop(min_size=384, max_size=600)" in text
    assert "max_size=1333" in text
    with pytest.raises(ValueError, match="scales"):
        make_transforms(True, scales=())


# ---------------------------------------------------------------------------
# Collate
# ---------------------------------------------------------------------------


def test_collate_pads_bottom_right_and_masks_padding() -> None:
    a, b = torch.rand(3, 4, 5) + 1, torch.rand(3, 6, 3) + 1  # strictly positive pixels
    targets = [{"labels": torch.tensor([0])}, {"labels": torch.tensor([1, 2])}]
    images, mask, out_targets = collate_fn([(a, targets[0]), (b, targets[1])])
    assert images.shape == (2, 3, 6, 5) and mask.shape == (2, 6, 5) and mask.dtype == torch.bool
    assert torch.equal(images[0, :, :4, :5], a) and torch.equal(images[1, :, :6, :3], b)
    expected_mask = torch.ones(2, 6, 5, dtype=torch.bool)
    expected_mask[0, :4, :5] = False
    expected_mask[1, :6, :3] = False
    assert torch.equal(mask, expected_mask)
    assert (images.abs().sum(1) == 0).eq(mask).all(), "padding is zero, real pixels are not"
    assert out_targets[0] is targets[0] and out_targets[1] is targets[1]
    with pytest.raises(ValueError, match="empty batch"):
        collate_fn([])


def test_collate_works_in_a_dataloader(synthetic: tuple[Path, Path]) -> None:
    dataset = CocoDetection(*synthetic, transforms=make_transforms(True, small_scales()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)
    torch.manual_seed(0)
    images, mask, targets = next(iter(loader))
    assert images.shape[0] == 4 and len(targets) == 4
    for b, target in enumerate(targets):
        h, w = target["size"].tolist()
        assert not mask[b, :h, :w].any() and mask[b].sum() == mask.shape[1] * mask.shape[2] - h * w
