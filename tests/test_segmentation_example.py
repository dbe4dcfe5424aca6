"""examples.segmentation: masks through repeat_targets and the matcher, memory, the model, data, AP, the demo.

Exact resume of every task is in tests/test_runner.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from examples.detection.config import ModelConfig
from examples.common.criterion import total_loss
from examples.segmentation.criterion import MaskSetCriterion, build_criterion, read_masks_at
from examples.segmentation.data import CocoInstanceSegmentation, collate_fn
from examples.segmentation.evaluate import coco_segm_stats, encode_mask
from examples.segmentation.model import build_model
from examples.segmentation.synthetic import generate_synthetic_segmentation
from hybridmatch import Hungarian, MaskDiceCost, Matcher, repeat_targets
from hybridmatch.costs import point_sample

# ------------------------------------------------------------------ helpers


def blob_masks(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` random rectangles (bool ``(count, size, size)``), none empty."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for i in range(count):
        y0, x0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        h, w = (int(v) for v in torch.randint(size // 8 + 1, size // 2, (2,), generator=g))
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def image_target(count: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    return {"labels": torch.randint(0, 3, (count,), generator=g), "masks": blob_masks(count, size, seed),
            "boxes": torch.rand(count, 4, generator=g) * 0.5 + 0.25}


def read_reference(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """float64 bilinear read with border padding via grid_sample: ``(C, H, W)`` at ``(P, 2)`` -> ``(C, P)``."""
    grid = (points.double() * 2 - 1)[None, None]  # (1, 1, P, 2)
    return F.grid_sample(masks.double()[None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0, :, 0]


def focal_cost64(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = logits.double().sigmoid()
    pos = alpha * (1 - p) ** gamma * -torch.log(p)
    neg = (1 - alpha) * p**gamma * -torch.log(1 - p)
    return (pos - neg)[:, labels]


def reference_cost(logits, pred_masks, target, points) -> torch.Tensor:
    """Mask2Former's matching cost 2 focal + 5 CE + 5 dice, float64, one image: ``(N, M)``."""
    pv = read_reference(pred_masks, points)  # (N, P) logits
    tv = read_reference(target["masks"], points)  # (M, P)
    p = pv.sigmoid()
    ce = (F.softplus(-pv) @ tv.T + F.softplus(pv) @ (1 - tv).T) / points.shape[0]
    dice = 1 - (2 * p @ tv.T + 1) / (p.sum(1)[:, None] + tv.sum(1)[None] + 1)
    return 2 * focal_cost64(logits, target["labels"]) + 5 * ce + 5 * dice


# ------------------------------------------------------------------ masks through repeat_targets and the matcher


def test_read_masks_at_matches_point_sample_without_copies() -> None:
    masks = blob_masks(3, 20).float()
    points = torch.rand(5, 7, 2)
    index = torch.tensor([2, 0, 2, 1, 2])
    got = read_masks_at(masks, index, points)
    want = torch.stack([read_reference(masks[j : j + 1], points[i])[0] for i, j in enumerate(index.tolist())])
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_repeat_targets_shares_masks_and_reports_bytes() -> None:
    k, target = 6, image_target(8, 64)
    shared = repeat_targets([target], k, per_object_keys=["boxes"])[0]
    copied = repeat_targets([target], k, per_object_keys=["boxes", "masks"])[0]
    assert len(shared["labels"]) == k * 8 and shared["boxes"].shape == (k * 8, 4)
    assert shared["masks"].data_ptr() == target["masks"].data_ptr() and shared["masks"].shape == (8, 64, 64)
    # Copying costs K * M * H * W bytes of bool masks; sharing costs none.
    assert copied["masks"].untyped_storage().nbytes() == k * 8 * 64 * 64 == 196608
    assert torch.equal(copied["masks"][8 * 3 + 5], target["masks"][5])


@pytest.mark.parametrize("k", [1, 3])
def test_match_equals_float64_hungarian_over_copies(k: int) -> None:
    torch.manual_seed(0)
    batch, queries, size, num_points = 2, 12, 32, 64
    logits = torch.randn(batch, queries, 3)
    pred_masks = torch.randn(batch, queries, 8, 8) * 3
    targets = [image_target(3, size, seed=1), image_target(2, size, seed=2)]
    repeated = repeat_targets(targets, k, per_object_keys=["boxes"])  # masks stay M per image
    criterion = MaskSetCriterion(3, num_points=num_points)
    torch.manual_seed(7)
    points = torch.rand(batch, num_points, 2)  # what match draws first from the same seed
    torch.manual_seed(7)
    indices = criterion.match({"pred_logits": logits, "pred_masks": pred_masks}, repeated)
    for b, (target, (src, tgt)) in enumerate(zip(targets, indices)):
        cost = reference_cost(logits[b], pred_masks[b], target, points[b]).repeat(1, k)  # K copies, GT-major
        rows, cols = linear_sum_assignment(cost.numpy())
        assert math.isclose(float(cost[src, tgt].sum()), float(cost[rows, cols].sum()), rel_tol=1e-5)
        m = len(target["labels"])
        assert sorted(zip(src.tolist(), (tgt % m).tolist())) == sorted(zip(rows.tolist(), (cols % m).tolist()))


def test_shared_and_copied_masks_give_the_same_one2many_losses() -> None:
    cfg = ModelConfig.tiny(3)
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 80, 3), torch.randn(2, 80, 8, 8)
    outputs = {"pred_logits": logits[:, :20], "pred_masks": masks[:, :20], "pred_boxes": torch.rand(2, 20, 4),
               "pred_logits_one2many": logits[:, 20:], "pred_masks_one2many": masks[:, 20:],
               "pred_boxes_one2many": torch.rand(2, 60, 4)}
    targets = [image_target(3, 32, seed=1), image_target(4, 32, seed=2)]
    losses = {}
    for copy in (False, True):
        criterion, _, _ = build_criterion("branch", cfg, k=3, copy_masks=copy, box_loss=False)
        torch.manual_seed(5)
        losses[copy] = criterion(outputs, targets)
    assert set(losses[False]) == set(losses[True])
    # Capacity-K matching (shared masks) finds the same pairs as Hungarian on K copies; the
    # pairs come in another order, so the loss points differ: the values agree to sampling noise.
    for key in losses[False]:
        assert abs(float(losses[False][key]) - float(losses[True][key])) < 0.05 * float(losses[True][key]) + 1e-3, key


def test_matching_memory_does_not_grow_with_mask_resolution() -> None:
    profiler = pytest.importorskip("torch.profiler")

    def allocated(size: int, library_cost: bool = False) -> int:
        torch.manual_seed(0)
        outputs = {"pred_logits": torch.randn(2, 30, 3), "pred_masks": torch.randn(2, 30, 16, 16)}
        targets = repeat_targets([image_target(6, size, 1), image_target(5, size, 2)], 6, per_object_keys=["boxes"])
        criterion = MaskSetCriterion(3, num_points=200)
        with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            if library_cost:  # the library's cost on whole masks: the matcher pads (copies) them
                Matcher(MaskDiceCost(200, seed=0), Hungarian())(outputs, [image_target(6, size, 1),
                                                                         image_target(5, size, 2)])
            else:
                criterion.match(outputs, targets)
        return sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())

    small, large = allocated(64), allocated(512)
    assert large <= small * 1.05 + 4096
    # The measurement can tell: padding whole masks grows with their size.
    assert allocated(512, library_cost=True) > allocated(64, library_cost=True) + 6 * 512 * 512


# ------------------------------------------------------------------ the model with each scheme


@pytest.mark.parametrize("scheme", ["one2one", "branch", "epoch", "layer"])
def test_tiny_model_forward_backward(scheme: str) -> None:
    cfg = ModelConfig.tiny(3)
    if scheme != "branch":
        cfg.num_queries_one2many = 0
    torch.manual_seed(0)
    model = build_model(cfg)
    criterion, _, weights = build_criterion(scheme, cfg, k=2, num_points=64)
    images = torch.randn(2, 3, 64, 48)
    pixel_mask = torch.zeros(2, 64, 48, dtype=torch.bool)
    pixel_mask[1, :, 40:] = True
    targets = [image_target(3, 64, 1), image_target(2, 64, 2)]
    for t in targets:
        t["masks"] = t["masks"][:, :, :48]
    outputs = model(images, pixel_mask)
    assert outputs["pred_masks"].shape == (2, 20, 16, 12)
    assert ("pred_masks_one2many" in outputs) == (scheme == "branch")
    losses = criterion(outputs, targets)
    assert set(losses) == set(weights)
    assert set(losses) <= set(criterion.weight_dict)  # DETR's loss line in client code weights them all
    total = total_loss(losses, weights)
    assert torch.isfinite(total)
    total.backward()
    for module in (model.mask_embed, model.stem, model.pixel_embed):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    if scheme == "branch":  # the one-to-one masks do not see the one-to-many queries
        model.eval()
        with torch.no_grad():
            alone = model(images, pixel_mask)["pred_masks"]
        torch.testing.assert_close(alone, outputs["pred_masks"].detach(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ data and evaluation


def test_synthetic_is_seeded_dense_and_readable(tmp_path: Path) -> None:
    a = generate_synthetic_segmentation(tmp_path / "a", num_images=12, max_objects=20, seed=3)
    b = generate_synthetic_segmentation(tmp_path / "b", num_images=12, max_objects=20, seed=3)
    assert a.read_text() == b.read_text()
    data = json.loads(a.read_text())
    assert len(data["annotations"]) / 12 >= 5  # dense: several instances per image
    dataset = CocoInstanceSegmentation(tmp_path / "a" / "train", a, size=64)
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and target["masks"].dtype == torch.bool
    assert target["masks"].shape[0] == len(target["labels"]) == len(dataset.coco.imgToAnns[dataset.ids[0]])
    masks = target["masks"]
    assert not (masks.sum(0) > 1).any()  # visible masks of overlapping shapes never overlap
    areas = [a["area"] for a in dataset.coco.imgToAnns[dataset.ids[0]]]
    assert masks.flatten(1).sum(1).tolist() == areas


def test_reader_decodes_polygons_and_rle(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    square = np.zeros((20, 30), dtype=bool)
    square[5:10, 12:20] = True
    rle = encode_mask(torch.from_numpy(square))
    # Uncompressed RLE of a column-major run: rows 2..3 of column 0.
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
            "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 9, "iscrowd": 0, "area": 20.0, "bbox": [2, 2, 5, 4],
                 "segmentation": [[2, 2, 7, 2, 7, 6, 2, 6]]},
                {"id": 2, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 40.0, "bbox": [12, 5, 8, 5],
                 "segmentation": rle},
                {"id": 3, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 2.0, "bbox": [0, 2, 1, 2],
                 "segmentation": {"size": [20, 30], "counts": [2, 2, 596]}}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    dataset = CocoInstanceSegmentation(tmp_path / "img", tmp_path / "ann.json", size=30)
    _, target = dataset[0]
    assert target["labels"].tolist() == [1, 0, 0]
    polygon = target["masks"][0]
    ys, xs = polygon.nonzero().T
    assert (int(ys.min()), int(xs.min())) == (2, 2) and (int(ys.max()), int(xs.max())) <= (6, 7)
    assert polygon.sum() >= 20
    assert torch.equal(target["masks"][1], torch.from_numpy(square))
    assert target["masks"][2].nonzero().tolist() == [[2, 0], [3, 0]]
    assert torch.allclose(target["boxes"][1], torch.tensor([16 / 30, 7.5 / 20, 8 / 30, 5 / 20]))
    _, _, batch = collate_fn([dataset[0], (torch.zeros(3, 25, 40), {**target, "masks": target["masks"][:, :, :]})])
    assert batch[0]["masks"].shape == (3, 25, 40) and not batch[0]["masks"][:, 20:].any()


def test_perfect_predictions_score_ap_one_and_a_wrong_mask_less(tmp_path: Path) -> None:
    path = generate_synthetic_segmentation(tmp_path, num_images=6, max_objects=10, seed=1, split="val")
    dataset = CocoInstanceSegmentation(tmp_path / "val", path, size=64)
    coco = dataset.coco
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentation": encode_mask(coco.annToMask(a))} for a in coco.dataset["annotations"]]
    assert coco_segm_stats(coco, results)["AP"] == pytest.approx(1.0)
    wrong = [dict(r) for r in results]
    wrong[0]["segmentation"] = encode_mask(np.roll(coco.annToMask(coco.dataset["annotations"][0]), 9, axis=1))
    assert coco_segm_stats(coco, wrong)["AP"] < 1.0
    assert coco_segm_stats(coco, [])["AP"] <= 0.0


def test_postprocess_crops_the_padding_and_ranks_by_class_and_mask_scores() -> None:
    from examples.segmentation.evaluate import postprocess

    masks = torch.full((1, 3, 16, 16), -10.0)
    masks[0, 0, 2:6, 3:8] = 10.0  # inside the image's 16 x 12 cells
    masks[0, 1, :, 12:] = 10.0  # only in the padding: empty after cropping
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 0, 1], logits[0, 1, 0] = 3.0, 4.0
    found = postprocess({"pred_logits": logits, "pred_masks": masks}, torch.tensor([[64, 48]]),
                        torch.tensor([[16, 12]]), top_k=2)[0]
    assert found["masks"].shape == (2, 16, 12)
    # Query 1 has the highest class score but its mask lies in the padding: cropped away, its
    # mask score is 0, so both candidates are query 0's (class 1, then class 0).
    assert found["labels"].tolist() == [1, 0]
    assert torch.equal(found["masks"][0], masks[0, 0, :, :12] > 0) and torch.equal(found["masks"][1], found["masks"][0])
    assert found["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-3)


def test_mask_stride_two_gives_finer_masks_and_bad_strides_are_refused() -> None:
    cfg = ModelConfig.tiny(2)
    cfg.num_queries_one2many = 0
    model = build_model(cfg, mask_stride=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48))["pred_masks"].shape == (1, 20, 32, 24)
    with pytest.raises(ValueError, match="mask_stride must be 2 or 4"):
        build_model(cfg, mask_stride=8)


@pytest.mark.slow
def test_main_job_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.segmentation.main_job import main

    summary = main(["--seeds", "0", "--epochs", "2", "--train-images", "8", "--val-images", "4", "--workers", "1",
                    "--max-objects", "6", "--output-dir", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    assert "COCO segm AP (%) on 4 validation images" in printed and "branch o2o - one2one" in printed
    assert set(summary["lines"]) == {"one2one", "branch o2o"} and summary["epochs"] == 2
    assert all(0.0 <= v <= 1.0 for line in summary["curves"].values() for c in line.values() for v in c)
    assert (tmp_path / "segmentation_ap.png").is_file() and (tmp_path / "segmentation.json").is_file()
