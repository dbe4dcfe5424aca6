"""The detection demo's pieces: paired initial weights, NMS, the report, fidelity details."""

from __future__ import annotations

import argparse
import doctest
import json
import math
from pathlib import Path

import pytest
import torch

from examples.common.comparison import format_report, summarize
from examples.common.runner import build_optimizer
from examples.detection import main_job, model, nms
from examples.detection.config import ModelConfig
from examples.detection.task import config_for_scheme
from examples.detection.model import build_model
from examples.detection.nms import batched_nms, postprocess_one2many
from examples.detection.nms import nms as greedy_nms

Q1, Q2 = 6, 18


def _config(scheme: str) -> ModelConfig:
    cfg = ModelConfig.tiny(3)
    cfg.num_queries_one2one, cfg.num_queries_one2many = Q1, Q2
    return config_for_scheme(cfg, scheme)


# ------------------------------------------------------------------ paired initial weights


@pytest.mark.parametrize("two_stage", [True, False], ids=["two-stage", "one-stage"])
def test_one2one_and_branch_models_start_from_the_same_weights(two_stage: bool) -> None:
    flags = {} if two_stage else {"two_stage": False, "mixed_selection": False}
    models = {}
    for scheme in ("one2one", "branch"):
        torch.manual_seed(7)
        models[scheme] = build_model(ModelConfig(**{**vars(_config(scheme)), **flags})).state_dict()
    one2one, branch = models["one2one"], models["branch"]
    assert set(one2one) == set(branch)
    embedding = "transformer.query_content.weight" if two_stage else "transformer.query_embed.weight"
    for name, value in one2one.items():
        if name == embedding:
            assert value.shape[0] == Q1 and branch[name].shape[0] == Q1 + Q2
            assert torch.equal(branch[name][:Q1], value)
        else:
            assert torch.equal(branch[name], value), name
    # The extra rows are drawn, not left empty, and differ from the one-to-one rows.
    extra = branch[embedding][Q1:]
    assert torch.isfinite(extra).all() and 0.8 < float(extra.std()) < 1.2
    # A different seed gives different weights: the test compares something seeded.
    torch.manual_seed(8)
    other = build_model(_config("one2one")).state_dict()
    assert not torch.equal(other["transformer.level_embed"], one2one["transformer.level_embed"])


def test_transformer_layers_are_xavier_initialised() -> None:
    torch.manual_seed(0)
    model = build_model(_config("branch"))
    linear = model.transformer.decoder.layers[0].ffn.linear1  # 64 -> 128
    fan_in, fan_out = linear.weight.shape[1], linear.weight.shape[0]
    xavier_bound = math.sqrt(6.0 / (fan_in + fan_out))  # 0.177; torch's default bound is 1/sqrt(64) = 0.125
    assert 1 / math.sqrt(fan_in) < float(linear.weight.detach().abs().max()) <= xavier_bound
    assert float(linear.weight.detach().std()) == pytest.approx(xavier_bound / math.sqrt(3), rel=0.05)
    # The deformable attention keeps its own scheme: zero offset weights, grid biases.
    attention = model.transformer.decoder.layers[0].cross_attn
    assert float(attention.sampling_offsets.weight.detach().abs().max()) == 0.0
    assert float(attention.sampling_offsets.bias.detach().abs().max()) > 0.5


def test_a_random_backbone_gets_the_full_learning_rate() -> None:
    torch.manual_seed(0)
    model = build_model(_config("one2one"))
    args = argparse.Namespace(lr=4e-4, lr_backbone=None, lr_linear_proj_mult=0.1, weight_decay=1e-4)
    backbone_ids = {id(p) for p in model.backbone.parameters()}

    def backbone_lr(optimizer: torch.optim.Optimizer) -> float:
        (lr,) = {g["lr"] for g in optimizer.param_groups if any(id(p) in backbone_ids for p in g["params"])}
        return lr

    assert backbone_lr(build_optimizer(model, args)) == 4e-4
    assert backbone_lr(build_optimizer(model, args, pretrained_backbone=True)) == pytest.approx(4e-5)
    args.lr_backbone = 1e-5
    assert backbone_lr(build_optimizer(model, args)) == 1e-5


# ------------------------------------------------------------------ NMS


def test_nms_on_a_hand_made_case() -> None:
    # b0 = [0,0,10,10]; b1 shifted right by 1: IoU 90/110 = 0.82; b2 shifted by 5: IoU(b0) 50/150 = 0.33,
    # IoU(b1) 60/140 = 0.43; b3 far away.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [40, 40, 50, 50]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.1])
    # b1 (best) suppresses b0 (0.82 > 0.5); b2 overlaps b1 by 0.43: kept; b3 kept.
    assert greedy_nms(boxes, scores, 0.5).tolist() == [1, 2, 3]
    # At 0.4, b2 goes too (0.43 > 0.4).
    assert greedy_nms(boxes, scores, 0.4).tolist() == [1, 3]
    # The threshold is strict: an IoU exactly at it survives (b0 vs b1 at 9/11).
    assert greedy_nms(boxes[:2], scores[:2], 90 / 110).tolist() == [1, 0]
    # Equal scores: the lower index first.
    assert greedy_nms(boxes[:2], torch.tensor([0.5, 0.5]), 0.5).tolist() == [0]
    assert greedy_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_batched_nms_suppresses_within_a_class_only() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 1])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2]


def test_postprocess_one2many_keeps_one_box_per_duplicated_object() -> None:
    # Three one-to-many queries: two duplicates of an object of class 1, one of class 0 elsewhere.
    big = 10.0
    logits = torch.full((1, 3, 2), -big)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 0] = 2.0, 1.0, 0.0
    boxes = torch.tensor([[[0.25, 0.25, 0.2, 0.2], [0.26, 0.25, 0.2, 0.2], [0.75, 0.75, 0.1, 0.1]]])
    out = {"pred_logits_one2many": logits, "pred_boxes_one2many": boxes}
    (found,) = postprocess_one2many(out, torch.tensor([[100, 200]]), top_k=2)
    assert found["labels"].tolist() == [1, 0]  # the duplicate's class-1 pair is gone, then top 2
    torch.testing.assert_close(found["scores"], torch.sigmoid(torch.tensor([2.0, 0.0])))
    # cxcywh (0.25, 0.25, 0.2, 0.2) of a 100 x 200 (h x w) image: x 30..70, y 15..35.
    torch.testing.assert_close(found["boxes"][0], torch.tensor([30.0, 15.0, 70.0, 35.0]))
    with pytest.raises(Exception, match="one2many=True"):
        postprocess_one2many({"pred_logits": logits}, torch.tensor([[100, 200]]))


def test_the_model_reports_one2many_outputs_in_eval_when_asked() -> None:
    torch.manual_seed(0)
    model = build_model(_config("branch")).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(images)
        both = model(images, one2many=True)
    assert "pred_logits_one2many" not in plain
    assert both["pred_logits_one2many"].shape == (1, Q2, 3)
    # The group mask keeps the one-to-one outputs unchanged.
    torch.testing.assert_close(both["pred_logits"], plain["pred_logits"], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ docstrings and the demo


@pytest.mark.parametrize("module", [nms, model], ids=lambda m: m.__name__)
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_the_demo_end_to_end_on_a_tiny_setting(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    summary = main_job.main(["--seeds", "0", "1", "--epochs", "2", "--early-epoch", "1", "--train-images", "4",
                             "--val-images", "2", "--image-size", "64", "--max-objects", "3", "--workers", "2",
                             "--num-queries-one2one", "4", "--num-queries-one2many", "8", "--k", "2",
                             "--output-dir", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    assert (tmp_path / "demo_ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert set(saved["curves"]) == {"one2one", "branch o2o", "branch o2m+NMS"}
    assert all(len(curve) == 2 for line in saved["curves"].values() for curve in line.values())
    # The printed table is the saved run's, recomputed independently of the summary object.
    curves = {name: {int(seed): values for seed, values in line.items()} for name, line in saved["curves"].items()}
    expected = format_report(summarize(curves, early_epoch=1, end_epochs=2, hybrid="branch o2o",
                                       baseline="one2one"), metric="COCO AP", val_images=2)
    assert expected in printed and summary["seeds"] == [0, 1]
    assert "cannot show" in printed
