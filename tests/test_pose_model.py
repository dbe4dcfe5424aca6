"""examples/pose model and criterion: forward/backward per scheme, the hybrid mask in the real
decoder, the OKS loss against pycocotools, postprocess."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from examples.detection.config import ModelConfig
from examples.common.criterion import total_loss
from examples.detection.task import config_for_scheme
from examples.pose.criterion import build_criterion, pair_oks
from examples.pose.model import build_model, postprocess
from examples.pose.skeleton import FIGURE

J = FIGURE.num_joints


def _config(scheme: str) -> ModelConfig:
    cfg = ModelConfig.tiny(1)
    cfg.num_queries_one2one, cfg.num_queries_one2many = 6, 12
    return config_for_scheme(cfg, scheme)


def _targets(generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    targets = []
    for m in (2, 0):
        keypoints = torch.cat([torch.rand(m, J, 2, generator=generator),
                               torch.randint(0, 3, (m, J, 1), generator=generator).float()], dim=-1)
        boxes = torch.cat([torch.rand(m, 2, generator=generator) * 0.5 + 0.25, torch.full((m, 2), 0.3)], dim=-1)
        targets.append({"labels": torch.zeros(m, dtype=torch.int64), "boxes": boxes, "keypoints": keypoints,
                        "area": torch.full((m,), 0.09)})
    return targets


def _perturb_heads(model: torch.nn.Module, generator: torch.Generator) -> None:
    # The keypoint heads start at zero; random weights make every query's keypoints its own.
    with torch.no_grad():
        for head in model.keypoint_heads:
            head.layers[-1].weight.copy_(torch.randn(head.layers[-1].weight.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("scheme", ["one2one", "branch", "epoch", "layer"])
def test_forward_backward_of_every_scheme(scheme: str) -> None:
    torch.manual_seed(0)
    cfg = _config(scheme)
    model = build_model(cfg, J)
    criterion, _, weights = build_criterion(scheme, cfg, FIGURE.sigmas, k=2)
    images = torch.randn(2, 3, 64, 64)
    outputs = model(images)
    assert outputs["pred_keypoints"].shape == (2, cfg.num_queries_one2one, J, 2)
    assert len(outputs["aux_outputs"]) == cfg.dec_layers - 1
    assert all("pred_keypoints" in aux for aux in outputs["aux_outputs"])
    assert ("pred_keypoints_one2many" in outputs) == (scheme == "branch")
    losses = criterion(outputs, _targets(torch.Generator().manual_seed(1)))
    assert {"loss_keypoints", "loss_oks", "loss_ce_enc"} <= set(losses)
    assert "loss_keypoints_enc" not in losses
    if scheme == "branch":
        assert "loss_oks_one2many" in losses and "loss_keypoints_0_one2many" in losses
    total = total_loss(losses, weights)
    assert torch.isfinite(total)
    total.backward()
    for head in model.keypoint_heads:
        assert head.layers[-1].weight.grad is not None and head.layers[-1].weight.grad.abs().sum() > 0


def test_the_mask_keeps_the_groups_apart_in_the_real_decoder() -> None:
    torch.manual_seed(0)
    model = build_model(_config("branch"), J)
    _perturb_heads(model, torch.Generator().manual_seed(3))
    q1 = model.cfg.num_queries_one2one
    images = torch.randn(2, 3, 64, 64)
    both = model(images, one2many=True)
    alone = model(images, one2many=False)
    assert "pred_keypoints_one2many" in both and "pred_keypoints_one2many" not in alone
    for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
        torch.testing.assert_close(both[key], alone[key], rtol=1e-5, atol=1e-5)

    # Changing the one-to-many queries' content moves their own outputs but not the one-to-one ones.
    content = model.detr.transformer.query_content.weight
    with torch.no_grad():
        content[q1:] += torch.randn(content[q1:].shape, generator=torch.Generator().manual_seed(4))
    moved = model(images, one2many=True)
    torch.testing.assert_close(moved["pred_keypoints"], both["pred_keypoints"], rtol=1e-5, atol=1e-5)
    assert (moved["pred_keypoints_one2many"] - both["pred_keypoints_one2many"]).abs().max() > 1e-3

    # And no gradient runs from the one-to-one outputs into the one-to-many rows.
    model.zero_grad()
    out = model(images, one2many=True)
    (out["pred_keypoints"].sum() + out["pred_logits"].sum()).backward()
    assert content.grad[q1:].abs().max() == 0
    assert content.grad[:q1].abs().max() > 0


def test_oks_loss_matches_pycocotools() -> None:
    from pycocotools.cocoeval import COCOeval

    generator = torch.Generator().manual_seed(5)
    target = torch.cat([torch.rand(4, J, 2, generator=generator) * 50,
                        torch.randint(0, 3, (4, J, 1), generator=generator).float()], dim=-1)
    target[:, 0, 2] = 2.0
    pred = target[..., :2] + torch.randn(4, J, 2, generator=generator) * 2.0
    area = torch.tensor([300.0, 900.0, 150.0, 2000.0])
    ours = pair_oks(pred, target, area, torch.tensor(FIGURE.sigmas))

    evaluator = COCOeval(iouType="keypoints")
    evaluator.params.kpt_oks_sigmas = np.array(FIGURE.sigmas)
    evaluator.params.imgIds, evaluator.params.catIds = [1], [1]
    for i in range(4):
        gt = [{"keypoints": target[i].reshape(-1).tolist(), "area": float(area[i]), "bbox": [0, 0, 60, 60],
               "num_keypoints": int((target[i, :, 2] > 0).sum())}]
        flat = torch.cat([pred[i], torch.ones(J, 1)], dim=-1).reshape(-1).tolist()
        dt = [{"keypoints": flat, "score": 1.0}]
        evaluator._gts, evaluator._dts = {(1, 1): gt}, {(1, 1): dt}
        reference = evaluator.computeOks(1, 1)[0, 0]
        assert float(ours[i]) == pytest.approx(float(reference), abs=1e-5)


def test_postprocess_keeps_the_best_poses_in_pixels() -> None:
    logits = torch.tensor([[[0.0], [3.0], [-2.0]]])
    keypoints = torch.rand(1, 3, J, 2)
    found = postprocess({"pred_logits": logits, "pred_keypoints": keypoints}, torch.tensor([[50, 100]]), top_k=2)
    assert found[0]["scores"].tolist() == pytest.approx([1 / (1 + np.exp(-3.0)), 0.5])
    expected = keypoints[0, [1, 0]] * torch.tensor([100.0, 50.0])
    torch.testing.assert_close(found[0]["keypoints"], expected)


def test_one2one_and_branch_start_from_the_same_weights() -> None:
    torch.manual_seed(11)
    plain = build_model(_config("one2one"), J).state_dict()
    torch.manual_seed(11)
    branch = build_model(_config("branch"), J).state_dict()
    q1 = _config("one2one").num_queries_one2one
    for name, value in plain.items():
        other = branch[name]
        if other.shape != value.shape:  # the query rows: the branch has Q2 more
            other = other[:q1]
        torch.testing.assert_close(other, value, rtol=0, atol=0, msg=name)
    assert dataclasses.replace(_config("one2one")).num_queries_one2many == 0


def test_keypoint_losses_match_float64_math_on_a_hand_made_case() -> None:
    from examples.pose.criterion import PoseCriterion, pose_matcher

    # Figure 0 at the left, figure 1 at the right; query 2 sits near figure 0 (0.02 off in x on every
    # joint), query 0 exactly on figure 1, query 1 far away: the matching is {2: 0, 0: 1}.
    base = torch.rand(J, 2, generator=torch.Generator().manual_seed(2)) * 0.2
    figure0 = torch.cat([base + 0.1, torch.full((J, 1), 2.0)], dim=-1)
    figure1 = torch.cat([base + 0.6, torch.full((J, 1), 2.0)], dim=-1)
    figure0[4, 2] = 0.0  # one unlabelled joint: no loss there
    figure0[4, :2] = 0.0
    pred = torch.stack([figure1[:, :2], torch.full((J, 2), 0.95), figure0[:, :2] + torch.tensor([0.02, 0.0])])
    pred[2, 4] = torch.tensor([0.9, 0.9])  # far off, but unlabelled
    targets = [{"labels": torch.zeros(2, dtype=torch.int64), "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.2]] * 2),
                "keypoints": torch.stack([figure0, figure1]), "area": torch.tensor([0.04, 0.04])}]
    outputs = {"pred_logits": torch.zeros(1, 3, 1), "pred_boxes": torch.full((1, 3, 4), 0.2),
               "pred_keypoints": pred[None]}
    criterion = PoseCriterion(1, pose_matcher(FIGURE.sigmas), FIGURE.sigmas)
    losses = criterion.layer_losses(outputs, targets, num_boxes=2.0)

    sigmas = np.array(FIGURE.sigmas)
    labelled = figure0[:, 2].numpy() > 0
    oks0 = np.exp(-(0.02**2) / (2 * sigmas) ** 2 / (0.04 + np.spacing(1)) / 2)[labelled].mean()
    assert float(losses["loss_keypoints"]) == pytest.approx((0.02 + 0.0) / 2, abs=1e-6)
    assert float(losses["loss_oks"]) == pytest.approx(((1 - oks0) + 0.0) / 2, abs=1e-6)
