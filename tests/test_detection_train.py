"""Training side of examples/detection: criterion, training step per scheme, DDP, COCO eval.

(Exact resume of every task is in tests/test_runner.py.)

Everything runs the tiny configuration on the CPU and keeps to a few seconds per test.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from examples.common.criterion import layer_weight_dict
from examples.common.runner import detr_loss
from examples.common.training import train_step as common_train_step
from examples.detection.criterion import WEIGHTS, SetCriterion, build_criterion, sigmoid_focal_loss, total_loss
from examples.detection.task import config_for_scheme
from hybridmatch import HungarianMatcher

from .spawn import run_ranks

pytest.importorskip("pycocotools")

NUM_CLASSES = 3
SCHEMES = ("one2one", "branch", "epoch", "layer")


# ------------------------------------------------------------------ float64 reference math


def _focal64(logits: torch.Tensor, onehot: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    x, t = logits.double(), onehot.double()
    p = 1.0 / (1.0 + torch.exp(-x))
    positive = -alpha * (1 - p) ** gamma * torch.log(p)
    negative = -(1 - alpha) * p**gamma * torch.log(1 - p)
    return t * positive + (1 - t) * negative


def _giou64(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes, written out."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (enclosing - union) / enclosing


def _hand_made_case() -> tuple[dict, list[dict]]:
    # Image 0: target 0 (label 1) at (0.3, 0.3), target 1 (label 0) at (0.7, 0.6); query 0 sits on
    # target 1, query 2 on target 0, query 1 far from both. Image 1 holds no objects.
    boxes = torch.tensor([
        [[0.70, 0.60, 0.25, 0.35], [0.50, 0.90, 0.10, 0.10], [0.32, 0.28, 0.20, 0.25]],
        [[0.40, 0.40, 0.30, 0.30], [0.60, 0.60, 0.20, 0.20], [0.20, 0.80, 0.10, 0.20]],
    ])
    logits = torch.tensor([
        [[2.0, -1.0], [-3.0, -2.5], [-1.5, 1.0]],
        [[0.5, -0.5], [-2.0, -2.0], [1.0, 0.0]],
    ])
    targets = [
        {"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.30, 0.30, 0.20, 0.20], [0.70, 0.60, 0.20, 0.40]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def test_criterion_matches_float64_math() -> None:
    outputs, targets = _hand_made_case()
    matcher = HungarianMatcher(2.0, 5.0, 2.0)
    pairs = matcher(outputs, targets)
    assert [p.tolist() for p in pairs[0]] == [[0, 2], [1, 0]] and pairs[1][0].numel() == 0

    enc_logits = torch.tensor([[[0.3], [-1.0], [0.8]], [[-0.2], [0.1], [-2.0]]])  # a class-agnostic head
    full = dict(outputs, aux_outputs=[dict(outputs)], enc_outputs={"pred_logits": enc_logits,
                                                                   "pred_boxes": outputs["pred_boxes"]})
    criterion = SetCriterion(2, matcher)
    losses = criterion(full, targets)

    num_boxes = 2.0
    onehot = torch.zeros(2, 3, 2)
    onehot[0, 0, 0] = onehot[0, 2, 1] = 1.0  # query 0 -> label 0, query 2 -> label 1
    expected_ce = float(_focal64(outputs["pred_logits"], onehot).sum()) / num_boxes
    pred, gt = outputs["pred_boxes"][0].double(), targets[0]["boxes"].double()
    expected_l1 = float((pred[0] - gt[1]).abs().sum() + (pred[2] - gt[0]).abs().sum()) / num_boxes
    expected_giou = ((1 - _giou64(pred[0].tolist(), gt[1].tolist()))
                     + (1 - _giou64(pred[2].tolist(), gt[0].tolist()))) / num_boxes
    enc_onehot = torch.zeros(2, 3, 1)
    enc_onehot[0, 0, 0] = enc_onehot[0, 2, 0] = 1.0  # every object is label 0 for the encoder
    expected_enc_ce = float(_focal64(enc_logits, enc_onehot).sum()) / num_boxes

    for suffix in ("", "_0"):
        assert losses[f"loss_ce{suffix}"].item() == pytest.approx(expected_ce, rel=1e-5)
        assert losses[f"loss_bbox{suffix}"].item() == pytest.approx(expected_l1, rel=1e-5)
        assert losses[f"loss_giou{suffix}"].item() == pytest.approx(expected_giou, rel=1e-5)
    assert losses["loss_ce_enc"].item() == pytest.approx(expected_enc_ce, rel=1e-5)
    assert losses["loss_bbox_enc"].item() == pytest.approx(expected_l1, rel=1e-5)
    assert set(losses) == set(layer_weight_dict(WEIGHTS, 2, encoder=WEIGHTS))


def test_focal_loss_is_stable_for_large_logits() -> None:
    logits = torch.tensor([[-100.0, 100.0, 0.0]])
    values = sigmoid_focal_loss(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    assert torch.isfinite(values).all()
    assert values[0, 2].item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)


def test_batch_without_objects_is_finite_and_differentiable() -> None:
    outputs, _ = _hand_made_case()
    logits = outputs["pred_logits"].clone().requires_grad_(True)
    boxes = outputs["pred_boxes"].clone().requires_grad_(True)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    losses = SetCriterion(2, HungarianMatcher())({"pred_logits": logits, "pred_boxes": boxes}, empty)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    total_loss(losses, layer_weight_dict(WEIGHTS, 1)).backward()
    assert torch.isfinite(logits.grad).all() and boxes.grad is not None


def test_total_loss_refuses_unweighted_keys() -> None:
    with pytest.raises(KeyError, match="loss_ce_7"):
        total_loss({"loss_ce_7": torch.tensor(1.0)}, layer_weight_dict(WEIGHTS, 2, encoder=WEIGHTS))


# ------------------------------------------------------------------ the tiny model


def train_step(model, criterion, weight_dict, images, pixel_mask, targets, optimizer) -> dict[str, float]:
    """One detection step as the runner takes it: :func:`detr_loss` through the shared step."""
    return common_train_step(model, detr_loss(criterion, weight_dict, "cpu"), (images, pixel_mask, targets),
                             optimizer, clip_max_norm=0.1)


def _tiny_cfg(scheme: str):
    from examples.detection.config import ModelConfig

    return config_for_scheme(ModelConfig.tiny(NUM_CLASSES), scheme)


def _batch(num_images: int = 2, size: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, size, size, generator=generator)
    pixel_mask = torch.zeros(num_images, size, size, dtype=torch.bool)
    targets = []
    for index in range(num_images):
        count = 1 + index % 3
        centres = 0.25 + 0.5 * torch.rand(count, 2, generator=generator)
        sizes = 0.1 + 0.3 * torch.rand(count, 2, generator=generator)
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (count,), generator=generator),
                        "boxes": torch.cat([centres, sizes], dim=1)})
    return images, pixel_mask, targets


def _model_and_criterion(scheme: str, seed: int = 0):
    from examples.detection.model import build_model

    cfg = _tiny_cfg(scheme)
    torch.manual_seed(seed)
    model = build_model(cfg)
    criterion, scheme_object, weight_dict = build_criterion(scheme, cfg, epochs=3)
    return model, criterion, scheme_object, weight_dict


@pytest.mark.parametrize("scheme", SCHEMES)
def test_training_step_of_every_scheme(scheme: str) -> None:
    torch.set_num_threads(1)
    model, criterion, scheme_object, weight_dict = _model_and_criterion(scheme)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    images, pixel_mask, targets = _batch()
    record = train_step(model, criterion, weight_dict, images, pixel_mask, targets, optimizer)
    assert math.isfinite(record["loss"]) and record["loss"] > 0
    assert math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_ce_enc"} <= set(record)
    if scheme == "branch":
        assert {"loss_ce_one2many", "loss_bbox_0_one2many"} <= set(record)
        assert not any(key.endswith("_enc_one2many") for key in record)  # no encoder loss for o2m
    else:
        assert not any("one2many" in key for key in record)
    if scheme_object is not None:
        state = scheme_object.state_dict()
        scheme_object.step()
        assert scheme_object.epoch == state["epoch"] + 1


# ------------------------------------------------------------------ two processes, gloo


def _flat_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _ddp_rank(rank: int) -> tuple[float, dict]:
    model, criterion, _, weight_dict = _model_and_criterion("branch")
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    images, pixel_mask, targets = _batch(4)
    part = slice(2 * rank, 2 * rank + 2)
    record = train_step(ddp, criterion, weight_dict, images[part], pixel_mask[part], targets[part], None)
    # numpy, not tensors: a tensor sent through the queue lives in this process's shared memory.
    return record["loss"], {k: v.numpy() for k, v in _flat_grads(model).items()}


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed")
def test_two_gloo_ranks_give_the_single_process_gradient() -> None:
    results = run_ranks(_ddp_rank)

    torch.set_num_threads(1)
    model, criterion, _, weight_dict = _model_and_criterion("branch")
    model.train()
    images, pixel_mask, targets = _batch(4)
    single = train_step(model, criterion, weight_dict, images, pixel_mask, targets, None)
    expected = _flat_grads(model)
    # Each rank divides by the global object count / 2, DDP averages: the ranks' mean loss is the loss.
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(single["loss"], rel=1e-4)
    for grads in (results[0][1], results[1][1]):  # all-reduced: the same on both ranks
        assert set(grads) == set(expected)
        for name, grad in grads.items():
            torch.testing.assert_close(torch.from_numpy(grad), expected[name], rtol=1e-3, atol=1e-6, msg=name)


# ------------------------------------------------------------------ runs on a tiny synthetic set


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.detection.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(root, num_images=6, image_size=(64, 64), num_classes=NUM_CLASSES, split="train")
    generate_synthetic_coco(root, num_images=3, image_size=(64, 64), num_classes=NUM_CLASSES, split="val")
    return root


def test_evaluate_coco_returns_twelve_numbers(synthetic_root: Path) -> None:
    from examples.detection.data import CocoDetection, collate_fn, make_transforms
    from examples.detection.evaluate import STAT_NAMES, evaluate_coco, format_side_by_side
    from examples.detection.model import build_model

    torch.set_num_threads(1)
    dataset = CocoDetection(synthetic_root / "val", synthetic_root / "annotations" / "instances_val.json",
                            make_transforms(False, scales=(64,), max_size=64))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    torch.manual_seed(0)
    stats = evaluate_coco(build_model(_tiny_cfg("one2one")), loader, dataset, "cpu")
    assert list(stats) == list(STAT_NAMES)
    assert all(-1.0 <= value <= 1.0 for value in stats.values())
    assert "AP50" in format_side_by_side({"a": stats, "b": stats})


class _Oracle(torch.nn.Module):
    """Returns given detections in loader order: the ground truth, or nothing."""

    def __init__(self, detections: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.detections = detections
        self.cursor = 0

    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, int]:
        return {"count": images.shape[0]}

    def postprocess(self, outputs, target_sizes, top_k: int = 100):
        batch = self.detections[self.cursor: self.cursor + outputs["count"]]
        self.cursor += outputs["count"]
        return batch


def test_evaluate_coco_scores_the_ground_truth_1_and_nothing_0(synthetic_root: Path) -> None:
    from examples.detection.data import CocoDetection, collate_fn, make_transforms
    from examples.detection.evaluate import evaluate_coco

    dataset = CocoDetection(synthetic_root / "val", synthetic_root / "annotations" / "instances_val.json",
                            make_transforms(False, scales=(64,), max_size=64))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    truth = []
    for image_id in dataset.image_ids:
        annotations = dataset.coco.imgToAnns[image_id]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy, absolute, as postprocess returns
        truth.append({"boxes": boxes, "scores": torch.ones(len(annotations)),
                      "labels": torch.tensor([dataset.category_to_label[a["category_id"]] for a in annotations])})
    perfect = evaluate_coco(_Oracle(truth), loader, dataset, "cpu")
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR100"] == pytest.approx(1.0)

    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    empty = evaluate_coco(_Oracle(nothing * len(dataset)), loader, dataset, "cpu")
    assert empty["AP"] == 0.0 and all(value <= 0.0 for value in empty.values())


@pytest.mark.slow
def test_convergence_benchmark_quick_mode(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "convergence.py"
    spec = importlib.util.spec_from_file_location("convergence_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main

    torch.set_num_threads(1)
    summary = main(["--quick", "--output-dir", str(tmp_path)])
    assert set(summary["ap_per_epoch"]) == set(SCHEMES) | {"branch o2m+NMS"}
    assert all(len(curve["mean"]) == 2 for curve in summary["ap_per_epoch"].values())
    assert (tmp_path / "convergence.json").is_file()
    assert (tmp_path / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
