"""Tests of the H-Deformable-DETR example model (examples/detection).

Small configurations and images keep the whole module to a few seconds on one CPU
thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from examples.detection import model as model_module
from examples.detection.backbone import ResNet50, TinyBackbone, load_backbone_weights
from examples.detection.config import ModelConfig
from examples.detection.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)
from examples.detection.model import build_model, postprocess
from examples.detection.position_encoding import PositionEmbeddingSine
from examples.detection.transformer import encoder_output_proposals, valid_ratios
from hybridmatch import ConfigurationError, ShapeError

from .conftest import cpu_and_cuda

Q1, Q2 = 6, 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_config(num_queries_one2many: int = Q2, **changes: object) -> ModelConfig:
    cfg = ModelConfig.tiny(num_classes=3)
    cfg.hidden_dim = 32
    cfg.nheads = 2
    cfg.dim_feedforward = 64
    cfg.num_queries_one2one = Q1
    cfg.num_queries_one2many = num_queries_one2many
    for name, value in changes.items():
        setattr(cfg, name, value)
    cfg.validate()
    return cfg


def make_model(cfg: ModelConfig, seed: int = 0) -> model_module.HDeformableDETR:
    torch.manual_seed(seed)
    return build_model(cfg)


def padded_batch(sizes: list[tuple[int, int]], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the given (h, w) padded at the bottom/right into one batch."""
    generator = torch.Generator().manual_seed(seed)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, height, width)
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)
    for index, (h, w) in enumerate(sizes):
        images[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        mask[index, :h, :w] = False
    return images, mask


def flat_outputs(outputs: dict, suffix: str = "") -> list[torch.Tensor]:
    """pred_logits/pred_boxes of every layer of one group, last layer first."""
    tensors = [outputs[f"pred_logits{suffix}"], outputs[f"pred_boxes{suffix}"]]
    for aux in outputs[f"aux_outputs{suffix}"]:
        tensors += [aux["pred_logits"], aux["pred_boxes"]]
    return tensors


# --------------------------------------------------------------------------------------------
# Config.


def test_config_defaults_are_h_deformable_detr() -> None:
    cfg = ModelConfig()
    assert (cfg.num_queries_one2one, cfg.num_queries_one2many, cfg.num_queries) == (300, 1500, 1800)
    assert (cfg.hidden_dim, cfg.enc_layers, cfg.dec_layers, cfg.num_feature_levels) == (256, 6, 6, 4)
    assert cfg.two_stage and cfg.with_box_refine and cfg.mixed_selection and cfg.look_forward_twice


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"nheads": 3}, "multiple of nheads"),
        ({"backbone": "vgg"}, "backbone must be one of"),
        ({"two_stage": False}, "mixed_selection"),
        ({"num_queries_one2one": 0}, "num_queries_one2one"),
    ],
)
def test_config_rejects_bad_settings(changes: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ModelConfig(**{**ModelConfig.tiny(3).__dict__, **changes})


# --------------------------------------------------------------------------------------------
# Forward / backward for every scheme layout.


@pytest.mark.parametrize("num_one2many", [0, Q2], ids=["single-group", "hybrid-branch"])
@pytest.mark.parametrize(
    "flags",
    [{}, {"two_stage": False, "mixed_selection": False}, {"mixed_selection": False, "look_forward_twice": False}],
    ids=["two-stage-mixed", "one-stage", "two-stage-plain"],
)
def test_forward_backward_layout(num_one2many: int, flags: dict) -> None:
    cfg = small_config(num_one2many, **flags)
    model = make_model(cfg).train()
    images, mask = padded_batch([(64, 64), (48, 56)])
    outputs = model(images, mask)
    batch, classes, layers = 2, cfg.num_classes, cfg.dec_layers

    expected = {"pred_logits", "pred_boxes", "aux_outputs"}
    if num_one2many:
        expected |= {"pred_logits_one2many", "pred_boxes_one2many", "aux_outputs_one2many"}
    if cfg.two_stage:
        expected.add("enc_outputs")
    assert set(outputs) == expected
    groups = [("", Q1)] + ([("_one2many", num_one2many)] if num_one2many else [])
    for suffix, count in groups:
        assert outputs[f"pred_logits{suffix}"].shape == (batch, count, classes)
        assert outputs[f"pred_boxes{suffix}"].shape == (batch, count, 4)
        assert len(outputs[f"aux_outputs{suffix}"]) == layers - 1
        for aux in outputs[f"aux_outputs{suffix}"]:
            assert aux["pred_logits"].shape == (batch, count, classes)
            assert aux["pred_boxes"].shape == (batch, count, 4)
        for tensor in flat_outputs(outputs, suffix):
            assert torch.isfinite(tensor).all()
        boxes = outputs[f"pred_boxes{suffix}"]
        assert ((boxes >= 0) & (boxes <= 1)).all()
    if cfg.two_stage:
        # S = 8*8 + 4*4 pixels of the two levels (strides 8 and 16 of the 64x64 batch).
        assert outputs["enc_outputs"]["pred_logits"].shape == (batch, 80, classes)
        assert outputs["enc_outputs"]["pred_boxes"].shape == (batch, 80, 4)

    loss = sum(t.sum() for suffix, _ in groups for t in flat_outputs(outputs, suffix))
    if cfg.two_stage:
        loss = loss + outputs["enc_outputs"]["pred_logits"].sum() + outputs["enc_outputs"]["pred_boxes"].sum()
    loss.backward()
    first_conv = model.backbone.stem[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    transformer = model.transformer
    query = transformer.query_content if cfg.mixed_selection else getattr(transformer, "query_embed", None)
    if query is not None:
        grad = query.weight.grad
        assert grad is not None
        assert grad[:Q1].abs().sum() > 0
        if num_one2many:
            assert grad[Q1:].abs().sum() > 0
    else:  # two-stage without mixed selection: queries come from the proposals
        assert transformer.pos_trans.weight.grad.abs().sum() > 0
    if cfg.two_stage:
        assert transformer.enc_class_head.weight.grad.abs().sum() > 0


def test_backward_of_one2many_loss_alone_reaches_backbone_not_one2one_queries() -> None:
    model = make_model(small_config()).train()
    images, mask = padded_batch([(64, 64), (64, 48)])
    outputs = model(images, mask)
    sum(t.sum() for t in flat_outputs(outputs, "_one2many")).backward()
    grad = model.transformer.query_content.weight.grad
    assert grad[Q1:].abs().sum() > 0
    assert torch.equal(grad[:Q1], torch.zeros_like(grad[:Q1]))  # the mask blocks o2m -> o2o
    assert model.backbone.stem[0][0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# The hybrid mask isolates the branches inside the real decoder.


@pytest.mark.parametrize("two_stage", [True, False], ids=["two-stage", "one-stage"])
def test_one2many_queries_do_not_change_one2one_outputs(two_stage: bool) -> None:
    flags = {} if two_stage else {"two_stage": False, "mixed_selection": False}
    model = make_model(small_config(**flags)).train()
    images, mask = padded_batch([(64, 64), (40, 64)])
    # The o2m-only parameter: their learned content queries (two-stage; the o2m proposals
    # come from the same top-k ranking, so they cannot be perturbed alone) or their query
    # embeddings, which also set their reference points (one-stage).
    embedding = model.transformer.query_content if two_stage else model.transformer.query_embed
    with torch.no_grad():
        before = model(images, mask)
        embedding.weight[Q1:] += 3.0 * torch.randn_like(embedding.weight[Q1:])
        after = model(images, mask)
    for old, new in zip(flat_outputs(before), flat_outputs(after)):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    # ... while the o2m outputs did change, so the perturbation reached the decoder.
    assert not torch.allclose(before["pred_logits_one2many"], after["pred_logits_one2many"], atol=1e-3)


def test_without_the_mask_one2many_queries_leak_into_one2one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Control for the test above: with an all-open mask the same perturbation does leak.
    monkeypatch.setattr(
        model_module, "hybrid_attention_mask", lambda q1, q2, device=None: torch.zeros(q1 + q2, q1 + q2, dtype=torch.bool)
    )
    model = make_model(small_config()).train()
    images, mask = padded_batch([(64, 64), (40, 64)])
    with torch.no_grad():
        before = model(images, mask)
        model.transformer.query_content.weight[Q1:] += 3.0
        after = model(images, mask)
    assert not torch.allclose(before["pred_logits"], after["pred_logits"], atol=1e-3)


@pytest.mark.parametrize("two_stage", [True, False], ids=["two-stage", "one-stage"])
def test_eval_equals_training_one2one_outputs(two_stage: bool) -> None:
    flags = {} if two_stage else {"two_stage": False, "mixed_selection": False}
    model = make_model(small_config(**flags))
    images, mask = padded_batch([(64, 64), (56, 40)])
    with torch.no_grad():
        trained = model.train()(images, mask)
        evaluated = model.eval()(images, mask)
    assert not any(key.endswith("one2many") for key in evaluated)
    for old, new in zip(flat_outputs(trained), flat_outputs(evaluated)):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    if two_stage:
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(evaluated["enc_outputs"][key], trained["enc_outputs"][key])


def test_two_stage_seeds_one2one_with_the_top_ranked_proposals() -> None:
    # Ranks 1..Q1 of the encoder's proposals by objectness, the logit of class 0 that the
    # class-agnostic encoder loss trains (the official topk(enc_outputs_class[..., 0])), seed
    # the o2o group: with zero box deltas, layer 0's boxes are those proposals.
    model = make_model(small_config()).train()
    for head in model.transformer.decoder.box_heads:
        torch.nn.init.zeros_(head.layers[-1].weight)
        torch.nn.init.zeros_(head.layers[-1].bias)
    with torch.no_grad():  # class 1 dominates every proposal: ranking by the best class would follow it
        model.transformer.enc_class_head.weight[1] *= 20.0
        model.transformer.enc_class_head.bias[1] += 20.0
    images, mask = padded_batch([(64, 64), (64, 64)])
    with torch.no_grad():
        outputs = model(images, mask)
    enc = outputs["enc_outputs"]
    order = enc["pred_logits"][..., 0].argsort(dim=1, descending=True)
    by_best_class = enc["pred_logits"].max(-1).values.argsort(dim=1, descending=True)
    assert not torch.equal(order[:, :Q1], by_best_class[:, :Q1])  # the case tells the two apart
    ranked = torch.gather(enc["pred_boxes"], 1, order[..., None].expand(-1, -1, 4))
    layer0 = outputs["aux_outputs"][0]["pred_boxes"]
    layer0_o2m = outputs["aux_outputs_one2many"][0]["pred_boxes"]
    torch.testing.assert_close(layer0, ranked[:, :Q1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer0_o2m, ranked[:, Q1 : Q1 + Q2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_sends_the_next_layers_loss_to_the_previous_box_head(look_forward_twice: bool) -> None:
    model = make_model(small_config(0, look_forward_twice=look_forward_twice)).train()
    images, mask = padded_batch([(64, 64)])
    model(images, mask)["pred_boxes"].sum().backward()
    grad = model.transformer.decoder.box_heads[0].layers[-1].weight.grad
    reached = grad is not None and bool(grad.abs().sum() > 0)
    assert reached == look_forward_twice


# --------------------------------------------------------------------------------------------
# Odd sizes and padding.


def test_odd_sizes_and_padding_masks() -> None:
    model = make_model(small_config()).train()
    images, mask = padded_batch([(61, 77), (45, 50)])
    outputs = model(images, mask)
    assert outputs["pred_boxes"].shape == (2, Q1, 4)
    assert all(torch.isfinite(t).all() for t in flat_outputs(outputs) + flat_outputs(outputs, "_one2many"))
    # Strides 8 and 16 of 61x77, rounded up: 8x10 + 4x5 pixels.
    enc_boxes = outputs["enc_outputs"]["pred_boxes"]
    assert enc_boxes.shape == (2, 100, 4)
    # Image 1 covers 6x7 pixels of the 8x10 level-0 map: its padding proposals are invalid (box 1.0).
    level0 = enc_boxes[1, :80].reshape(8, 10, 4)
    assert torch.equal(level0[7], torch.ones(10, 4))
    assert torch.equal(level0[:, 9], torch.ones(8, 4))
    model.eval()
    with torch.no_grad():
        evaluated = model(images, mask)
    assert evaluated["pred_logits"].shape == (2, Q1, 3)


def test_images_smaller_than_the_query_count_fill_the_ranking_cyclically() -> None:
    model = make_model(small_config()).train()
    images, mask = padded_batch([(24, 24), (20, 17)])  # S = 3*3 + 2*2 = 13 < Q1 + Q2 = 16
    outputs = model(images, mask)
    assert outputs["pred_boxes_one2many"].shape == (2, Q2, 4)
    assert torch.isfinite(outputs["pred_boxes_one2many"]).all()


def test_model_rejects_a_mismatched_pixel_mask() -> None:
    model = make_model(small_config())
    images, mask = padded_batch([(32, 32)])
    with pytest.raises(ShapeError, match="pixel_mask"):
        model(images, mask[:, :-1])
    with pytest.raises(ShapeError, match="images"):
        model(images[:, :2], None)


def test_sine_encoding_ignores_padding() -> None:
    encoder = PositionEmbeddingSine(8)
    alone = encoder(torch.zeros(1, 5, 6, dtype=torch.bool))
    padded_mask = torch.ones(1, 7, 9, dtype=torch.bool)
    padded_mask[:, :5, :6] = False
    padded = encoder(padded_mask)
    assert padded.shape == (1, 16, 7, 9)
    torch.testing.assert_close(padded[..., :5, :6], alone)
    # y features first: channel 0 is sin of y; the first row's y = 0.5 / 5 * 2 pi.
    torch.testing.assert_close(alone[0, 0, 0, 0], torch.tensor(math.sin(0.5 / 5 * 2 * math.pi)))


def test_encoder_proposals_follow_the_valid_region() -> None:
    # One level of 4x4 pixels; the image covers the top-left 2 rows x 3 columns.
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[:, :2, :3] = False
    torch.testing.assert_close(valid_ratios(mask), torch.tensor([[0.75, 0.5]]))
    memory = torch.ones(1, 16, 2)
    zeroed, logits, valid = encoder_output_proposals(memory, mask.flatten(1), [(4, 4)])
    expected_valid = ~mask.flatten(1)
    assert torch.equal(valid, expected_valid)
    boxes = logits.sigmoid()[0].reshape(4, 4, 4)
    # Pixel (row 1, col 2) is centred at ((2 + 0.5) / 3, (1 + 0.5) / 2), 0.05 wide and high.
    torch.testing.assert_close(boxes[1, 2], torch.tensor([2.5 / 3, 0.75, 0.05, 0.05]))
    assert torch.equal(zeroed[0, ~expected_valid[0]], torch.zeros(10, 2))
    assert torch.isinf(logits[0, ~expected_valid[0]]).all()


# --------------------------------------------------------------------------------------------
# Deformable attention against an explicit bilinear-sampling loop.


def reference_deformable_attention(value, shapes, locations, weights) -> torch.Tensor:
    """Slow reference: bilinear interpolation written out, zero outside the map.

    With align_corners=False a normalised x in [0, 1] lies at pixel coordinate
    x * w - 0.5 (pixel centres at integers).
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        for q in range(queries):
            for head in range(heads):
                for level, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = locations[b, q, head, level, p, 0].item() * w - 0.5
                        y = locations[b, q, head, level, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(head_dim, dtype=torch.float64)
                        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= xi < w and 0 <= yi < h:
                                    pixel = value[b, starts[level] + yi * w + xi, head].double()
                                    sample += wx * wy * pixel
                        out[b, q, head] += weights[b, q, head, level, p].item() * sample
    return out.reshape(batch, queries, heads * head_dim)


def test_deformable_attention_matches_an_explicit_bilinear_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    batch, queries, heads, head_dim, points = 2, 3, 2, 3, 2
    value = torch.randn(batch, 12 + 6, heads, head_dim, generator=generator)
    # Locations in [-0.2, 1.2]: some fall off the map and must read zeros.
    locations = torch.rand(batch, queries, heads, 2, points, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, 2, points, generator=generator)
    got = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = reference_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_deformable_attention_module_samples_around_its_reference(reference_dim: int) -> None:
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    module = MultiScaleDeformableAttention(embed_dim=4, num_heads=2, num_levels=2, num_points=2)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.3)
    torch.nn.init.normal_(module.attention_weights.weight)
    query = torch.randn(1, 3, 4)
    value_input = torch.randn(1, 18, 4)
    padding = torch.zeros(1, 18, dtype=torch.bool)
    padding[0, 3] = True
    reference = torch.rand(1, 3, 2, reference_dim)
    got = module(query, reference, value_input, shapes, padding)

    value = module.value_proj(value_input).masked_fill(padding[..., None], 0).view(1, 18, 2, 2)
    offsets = module.sampling_offsets(query).view(1, 3, 2, 2, 2, 2)
    weights = module.attention_weights(query).view(1, 3, 2, 4).softmax(-1).view(1, 3, 2, 2, 2)
    locations = torch.empty_like(offsets)
    for level, (h, w) in enumerate(shapes):
        ref = reference[:, :, None, level, None, :]
        if reference_dim == 2:  # offsets in pixels of the level
            locations[:, :, :, level] = ref + offsets[:, :, :, level] / torch.tensor([w, h])
        else:  # offsets in units of the half box, divided by the number of points
            locations[:, :, :, level] = ref[..., :2] + offsets[:, :, :, level] / 2 * ref[..., 2:] * 0.5
    expected = reference_deformable_attention(value.detach(), shapes, locations.detach(), weights.detach())
    expected = module.output_proj(expected.float())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_deformable_attention_initial_offsets_form_a_direction_grid() -> None:
    module = MultiScaleDeformableAttention(embed_dim=8, num_heads=4, num_levels=2, num_points=3)
    offsets = module.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right, head 1 down (angle pi/2), at distances 1, 2, 3 on every level.
    torch.testing.assert_close(offsets[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(offsets[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(module.attention_weights.weight, torch.zeros_like(module.attention_weights.weight))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_deformable_attention_under_autocast(device: str) -> None:
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(16, 2, 2, 2).to(device)
    query = torch.randn(2, 5, 16, device=device, requires_grad=True)
    value = torch.randn(2, 12 + 6, 16, device=device)
    reference = torch.rand(2, 5, 2, 4, device=device)
    expected = module(query, reference, value, [(3, 4), (2, 3)])
    with torch.autocast(device_type=device, dtype=amp_dtype):
        got = module(query, reference, value, [(3, 4), (2, 3)])
    got.float().sum().backward()
    assert got.dtype == amp_dtype
    assert torch.isfinite(query.grad).all()
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.cuda
def test_model_forward_backward_on_cuda_under_amp() -> None:
    model = make_model(small_config()).cuda().train()
    images, mask = padded_batch([(64, 64), (48, 56)])
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        outputs = model(images.cuda(), mask.cuda())
    loss = sum(t.float().sum() for t in flat_outputs(outputs) + flat_outputs(outputs, "_one2many"))
    loss.backward()
    assert all(torch.isfinite(t).all() for t in flat_outputs(outputs))
    model.eval()
    with torch.no_grad():
        evaluated = model(images.cuda(), mask.cuda())
        trained = model.train()(images.cuda(), mask.cuda())
    torch.testing.assert_close(evaluated["pred_boxes"], trained["pred_boxes"], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Postprocess.


def test_postprocess_ranks_query_class_pairs_and_scales_boxes() -> None:
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # 2 queries x 3 classes; the best pairs: (q1, c2) 0.9, (q0, c0) 0.8, (q1, c0) 0.7.
    logits = torch.tensor([[[logit(0.8), logit(0.1), logit(0.2)], [logit(0.7), logit(0.05), logit(0.9)]]])
    # q0: centre (0.5, 0.5), 0.2 x 0.4; q1: centre (0.25, 0.75), 0.5 x 0.5.
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    # Image 100 high, 200 wide: q0 -> (80, 30, 120, 70); q1 -> (0, 50, 100, 100).
    result = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), top_k=3)
    assert len(result) == 1
    torch.testing.assert_close(result[0]["scores"], torch.tensor([0.9, 0.8, 0.7]))
    assert result[0]["labels"].tolist() == [2, 0, 0]
    assert result[0]["labels"].dtype == torch.int64
    torch.testing.assert_close(
        result[0]["boxes"],
        torch.tensor([[0.0, 50.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 100.0, 100.0]]),
    )
    # top_k above Q * C keeps every pair.
    everything = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), top_k=100)
    assert everything[0]["scores"].shape == (6,)
    assert (everything[0]["scores"].diff() <= 0).all()


def test_postprocess_on_model_outputs() -> None:
    model = make_model(small_config()).eval()
    images, mask = padded_batch([(64, 64), (48, 32)])
    with torch.no_grad():
        results = postprocess(model(images, mask), torch.tensor([[480, 640], [300, 200]]), top_k=10)
    assert [r["boxes"].shape for r in results] == [(10, 4), (10, 4)]
    assert all((r["labels"] >= 0).all() and (r["labels"] < 3).all() for r in results)


# --------------------------------------------------------------------------------------------
# Backbones and weight loading.


def test_tiny_backbone_strides() -> None:
    features = TinyBackbone()(torch.zeros(1, 3, 61, 77))
    assert [tuple(f.shape[1:]) for f in features] == [(32, 8, 10), (64, 4, 5)]


@pytest.fixture(scope="module")
def resnet_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    torch.manual_seed(0)
    state = ResNet50().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return state, str(path)


def test_resnet50_has_torchvision_names_and_strides(resnet_state: tuple[dict, str]) -> None:
    state, _ = resnet_state
    for key in (
        "conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
        "layer2.3.conv2.weight", "layer3.5.bn3.weight", "layer4.2.conv3.weight",
    ):
        assert key in state
    assert not any(key.startswith("fc.") for key in state)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    model = ResNet50()
    assert not model.conv1.weight.requires_grad and model.layer2[0].conv1.weight.requires_grad
    with torch.no_grad():
        features = model(torch.zeros(1, 3, 65, 47))
    assert [tuple(f.shape[1:]) for f in features] == [(512, 9, 6), (1024, 5, 3), (2048, 3, 2)]


def test_load_backbone_weights_round_trip(resnet_state: tuple[dict, str]) -> None:
    state, path = resnet_state
    target = ResNet50()
    load_backbone_weights(target, path)
    loaded = target.state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_load_backbone_weights_ignores_torchvision_extras(resnet_state: tuple[dict, str], tmp_path) -> None:
    state, _ = resnet_state
    extended = dict(state)
    extended["fc.weight"] = torch.zeros(1000, 2048)
    extended["fc.bias"] = torch.zeros(1000)
    extended["bn1.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "torchvision_like.pth"
    torch.save(extended, path)
    target = ResNet50()
    load_backbone_weights(target, path)
    assert torch.equal(target.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])


def test_load_backbone_weights_is_strict_on_used_names(resnet_state: tuple[dict, str], tmp_path) -> None:
    state, _ = resnet_state
    missing = {key: value for key, value in state.items() if key != "layer2.0.bn1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConfigurationError, match="missing .*layer2.0.bn1.weight"):
        load_backbone_weights(ResNet50(), tmp_path / "missing.pth")
    wrong_shape = dict(state)
    wrong_shape["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(ConfigurationError, match="conv1.weight"):
        load_backbone_weights(ResNet50(), tmp_path / "shape.pth")
