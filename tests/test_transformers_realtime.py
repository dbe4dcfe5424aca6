"""install_hybrid_loss on transformers' real-time DETRs (RT-DETR, RT-DETRv2, D-FINE) and Mask2Former.

Tiny models built from configs with a fixed seed: no download, no pretrained backbone. The
references are the unmodified models' own losses: on the original labels for one-to-one
supervision; for one-to-many, the model's own loss on labels repeated K times by hand, from a
twin without denoising queries (RT-DETR's decoder keeps its normal queries from seeing the
denoising ones, so their predictions are the same up to float rounding). Mask2Former's
one-to-many matching uses hybridmatch's point-sampled mask costs, so its reference is the
recorded matching: capacity K over the copies, and the class loss recomputed here from it.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"  # no model hub: every model is built from a config
transformers = pytest.importorskip("transformers")

from hybridmatch import ConfigurationError, HybridBranch, HybridEpoch, HybridLayer  # noqa: E402
from hybridmatch.integrations.transformers import HybridLoss, install_hybrid_loss  # noqa: E402

K = 3
DETECTORS = ("rt_detr", "rt_detr_v2", "d_fine")


def _tiny_detector(kind: str) -> torch.nn.Module:
    """3 decoder layers, 10 queries, 3 classes, 6 denoising queries; about 80k parameters."""
    if kind == "d_fine":
        backbone = transformers.HGNetV2Config(
            stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 16, 32], stage_mid_channels=[8, 8, 16, 16],
            stage_out_channels=[16, 16, 32, 32], stage_num_blocks=[1, 1, 1, 1],
            stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
            stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[2, 2, 2, 2],
            out_features=["stage2", "stage3", "stage4"], hidden_sizes=[16, 16, 32, 32],
        )
        channels = [16, 32, 32]
    else:
        backbone = transformers.RTDetrResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
            out_features=["stage2", "stage3", "stage4"],
        )
        channels = [16, 16, 32]
    config_class, model_class = {
        "rt_detr": (transformers.RTDetrConfig, transformers.RTDetrForObjectDetection),
        "rt_detr_v2": (transformers.RTDetrV2Config, transformers.RTDetrV2ForObjectDetection),
        "d_fine": (transformers.DFineConfig, transformers.DFineForObjectDetection),
    }[kind]
    config = config_class(
        backbone_config=backbone, encoder_hidden_dim=16, encoder_in_channels=channels, encoder_ffn_dim=32,
        encoder_attention_heads=2, d_model=16, decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32,
        decoder_attention_heads=2, decoder_layers=3, decoder_n_points=2, num_queries=10, num_denoising=6,
        num_labels=3,
    )
    torch.manual_seed(0)
    return model_class(config).train()


def _tiny_mask2former(**overrides: object) -> torch.nn.Module:
    """A Swin backbone of width 8, 3 decoder layers, 8 queries, 3 classes, 64 matching points."""
    backbone = transformers.SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    settings: dict[str, object] = dict(
        backbone_config=backbone, use_pretrained_backbone=False, feature_size=32, mask_feature_size=32,
        hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=3,
        num_attention_heads=2, num_queries=8, num_labels=3, train_num_points=64,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    return transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(**settings)).train()


def _boxes() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.rand(2, 3, 64, 64, generator=generator)
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    return pixel_values, labels


def _masks() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Two images with 2 and 1 rectangles as instance masks."""
    generator = torch.Generator().manual_seed(2)
    pixel_values = torch.rand(2, 3, 64, 64, generator=generator)
    first = torch.zeros(2, 64, 64)
    first[0, 8:30, 8:40] = 1
    first[1, 36:60, 20:50] = 1
    second = torch.zeros(1, 64, 64)
    second[0, 10:50, 10:30] = 1
    return pixel_values, [first, second], [torch.tensor([0, 2]), torch.tensor([1])]


def _repeated(labels: list[dict[str, torch.Tensor]], k: int) -> list[dict[str, torch.Tensor]]:
    return [{"class_labels": t["class_labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in labels]


def _run(model: torch.nn.Module, seed: int, **inputs: object) -> object:
    torch.manual_seed(seed)  # denoising queries and mask points are drawn at random
    with torch.no_grad():
        return model(**inputs)


def _own(model: torch.nn.Module, seed: int, **inputs: object) -> object:
    twin = copy.deepcopy(model)
    for slot in ("_loss_function", "get_loss_dict"):  # where an installed loss lives
        if isinstance(vars(twin).get(slot), HybridLoss):
            vars(twin)[slot].uninstall()
    return _run(twin, seed, **inputs)


# ------------------------------------------------------------- RT-DETR, RT-DETRv2, D-FINE


@pytest.mark.parametrize("kind", DETECTORS)
@pytest.mark.parametrize(
    "scheme",
    [HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2, epoch=1), HybridLayer(k=K, num_one2many_layers=0)],
    ids=["epoch-after-switch", "layer-none"],
)
def test_detector_one2one_equals_the_models_own_loss(kind: str, scheme: object) -> None:
    model = _tiny_detector(kind)
    pixel_values, labels = _boxes()
    expected = _own(model, 5, pixel_values=pixel_values, labels=labels)
    install_hybrid_loss(model, copy.deepcopy(scheme))
    actual = _run(model, 5, pixel_values=pixel_values, labels=labels)
    assert sorted(actual.loss_dict) == sorted(expected.loss_dict)
    assert any("_dn_" in key for key in actual.loss_dict)  # denoising losses kept
    for key, value in expected.loss_dict.items():
        assert torch.equal(actual.loss_dict[key], value), key
    assert torch.equal(actual.loss, expected.loss)


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_epoch_scheme_matches_k_copies_and_keeps_denoising(kind: str) -> None:
    model = _tiny_detector(kind)
    pixel_values, labels = _boxes()
    own = _own(model, 6, pixel_values=pixel_values, labels=labels).loss_dict
    no_denoising = copy.deepcopy(model)
    no_denoising.config.num_denoising = 0
    many = _own(no_denoising, 6, pixel_values=pixel_values, labels=_repeated(labels, K)).loss_dict
    install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    actual = _run(model, 6, pixel_values=pixel_values, labels=labels)
    assert sorted(actual.loss_dict) == sorted(own)
    for key in own:
        expected = own[key] if "_dn_" in key else many[key]
        torch.testing.assert_close(actual.loss_dict[key], expected, rtol=1e-4, atol=1e-6, msg=key)
    assert not torch.allclose(actual.loss_dict["loss_bbox"], own["loss_bbox"])  # K copies were matched
    torch.testing.assert_close(actual.loss, sum(actual.loss_dict.values()))


@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_layer_scheme_supervises_the_first_layers_one2many(kind: str) -> None:
    model = _tiny_detector(kind)
    pixel_values, labels = _boxes()
    own = _own(model, 7, pixel_values=pixel_values, labels=labels).loss_dict
    no_denoising = copy.deepcopy(model)
    no_denoising.config.num_denoising = 0
    many = _own(no_denoising, 7, pixel_values=pixel_values, labels=_repeated(labels, K)).loss_dict
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    actual = _run(model, 7, pixel_values=pixel_values, labels=labels).loss_dict
    for key in own:
        one2many = "_aux_0" in key or "_aux_1" in key  # decoder layers 0 and 1; _aux_2 is the encoder
        expected = many[key] if one2many else own[key]
        torch.testing.assert_close(actual[key], expected, rtol=1e-4, atol=1e-6, msg=key)
    assert not torch.allclose(actual["loss_bbox_aux_0"], own["loss_bbox_aux_0"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", DETECTORS)
def test_detector_trains_evaluates_post_processes_and_uninstalls(kind: str) -> None:
    model = _tiny_detector(kind)
    pixel_values, labels = _boxes()
    own_function = model.loss_function
    hybrid = install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(20):
        torch.manual_seed(0)  # the same denoising queries (mask points) at every step: one problem to fit
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses  # the loss falls

    model.eval()
    evaluated = _run(model, 0, pixel_values=pixel_values, labels=labels)
    assert torch.equal(evaluated.loss, _own(model, 0, pixel_values=pixel_values, labels=labels).loss)
    processor = transformers.RTDetrImageProcessor()
    detections = processor.post_process_object_detection(evaluated, threshold=0.0, target_sizes=[(64, 64)] * 2)
    assert len(detections) == 2 and detections[0]["boxes"].shape[-1] == 4

    hybrid.uninstall()
    assert model.loss_function is own_function and not hybrid.installed


# ---------------------------------------------------------------------------- Mask2Former


def _mask_inputs() -> dict[str, object]:
    pixel_values, masks, classes = _masks()
    return {"pixel_values": pixel_values, "mask_labels": masks, "class_labels": classes}


@pytest.mark.parametrize(
    "scheme",
    [HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2, epoch=1), HybridLayer(k=K, num_one2many_layers=0)],
    ids=["epoch-after-switch", "layer-none"],
)
def test_mask2former_one2one_equals_the_models_own_loss(scheme: object) -> None:
    model = _tiny_mask2former()
    expected = _own(model, 8, **_mask_inputs())
    install_hybrid_loss(model, copy.deepcopy(scheme))
    actual = _run(model, 8, **_mask_inputs())
    assert torch.equal(actual.loss, expected.loss)


def _record_class_loss_calls(model: torch.nn.Module) -> list:
    """Record (logits, class_labels, indices) of every call of Mask2Former's class loss."""
    calls = []
    criterion = model.criterion
    original = criterion.loss_labels

    def recording(class_queries_logits, class_labels, indices):
        calls.append((class_queries_logits, [c.clone() for c in class_labels], indices))
        return original(class_queries_logits, class_labels, indices)

    criterion.loss_labels = recording
    return calls


def test_mask2former_epoch_scheme_matches_each_object_up_to_k_times() -> None:
    model = _tiny_mask2former()
    install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    calls = _record_class_loss_calls(model)
    inputs = _mask_inputs()
    torch.manual_seed(9)
    with torch.no_grad():
        loss_dict = model.get_loss_dict(**_final_and_auxiliary(model, inputs))
    assert len(calls) == 3  # the final layer and two auxiliary ones, all one-to-many
    weight = model.config.class_weight
    for layer, (logits, class_labels, indices) in enumerate(calls):
        for image, (pred, tgt) in enumerate(indices):
            m = len(inputs["class_labels"][image])
            assert torch.equal(class_labels[image], inputs["class_labels"][image].repeat(K))  # K copies
            assert len(pred) == min(logits.shape[1], K * m) and len(set(pred.tolist())) == len(pred)
            assert len(set(tgt.tolist())) == len(tgt) and all(0 <= t < K * m for t in tgt.tolist())
        # Mask2Former's class loss on the copies, recomputed here from the matching (float64).
        target = torch.full(logits.shape[:2], model.config.num_labels, dtype=torch.long)
        for image, (pred, tgt) in enumerate(indices):
            target[image, pred] = class_labels[image][tgt]
        empty = torch.ones(model.config.num_labels + 1, dtype=torch.float64)
        empty[-1] = model.config.no_object_weight
        expected = F.cross_entropy(logits.double().transpose(1, 2), target, weight=empty) * weight
        key = "loss_cross_entropy" if layer == 0 else f"loss_cross_entropy_{layer - 1}"
        torch.testing.assert_close(loss_dict[key].double(), expected, rtol=1e-5, atol=1e-7)


def _final_and_auxiliary(model: torch.nn.Module, inputs: dict) -> dict:
    """get_loss_dict's arguments as the model's forward passes them (one forward without labels)."""
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], output_auxiliary_logits=True)
    return {
        "masks_queries_logits": outputs.masks_queries_logits,
        "class_queries_logits": outputs.class_queries_logits,
        "mask_labels": inputs["mask_labels"],
        "class_labels": inputs["class_labels"],
        "auxiliary_predictions": outputs.auxiliary_logits,
    }


def test_mask2former_layer_scheme_keeps_the_last_layers_one_to_one() -> None:
    model = _tiny_mask2former()
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1))
    calls = _record_class_loss_calls(model)
    inputs = _mask_inputs()
    with torch.no_grad():
        model.get_loss_dict(**_final_and_auxiliary(model, inputs))
    # one-to-one call (final + 2 auxiliary layers), then the one-to-many call on the K copies
    sizes = [sum(len(c) for c in class_labels) for _, class_labels, _ in calls]
    assert sizes == [3, 3, 3, 3 * K, 3 * K, 3 * K]


@pytest.mark.slow
def test_mask2former_trains_evaluates_post_processes_and_uninstalls() -> None:
    model = _tiny_mask2former()
    inputs = _mask_inputs()
    hybrid = install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(20):
        torch.manual_seed(0)  # the same denoising queries (mask points) at every step: one problem to fit
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses  # the loss falls

    model.eval()
    evaluated = _run(model, 0, **inputs)
    assert torch.equal(evaluated.loss, _own(model, 0, **inputs).loss)
    processor = transformers.Mask2FormerImageProcessor()
    segments = processor.post_process_instance_segmentation(evaluated, threshold=0.0, target_sizes=[(64, 64)] * 2)
    assert len(segments) == 2 and segments[0]["segmentation"].shape == (64, 64)

    hybrid.uninstall()
    assert "get_loss_dict" not in vars(model) and not hybrid.installed


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("name", ["Deimv2ForObjectDetection", "LwDetrForObjectDetection", "RfDetrForObjectDetection"])
def test_models_whose_loss_a_scheme_would_change_are_refused_with_the_reason(name: str) -> None:
    from transformers.loss.loss_utils import LOSS_MAPPING

    model = _tiny_detector("rt_detr")
    model.loss_function = LOSS_MAPPING[name]  # the model's loss, as that model has it
    reason = {"Deimv2": "dense one-to-one", "LwDetr": "Group DETR", "RfDetr": "Group DETR"}[name.split("For")[0]]
    with pytest.raises(ConfigurationError, match=f"not supported.*{reason}"):
        install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))


@pytest.mark.parametrize("build", [lambda: _tiny_detector("d_fine"), _tiny_mask2former], ids=["d_fine", "mask2former"])
def test_hybrid_branch_and_weight_overrides_are_refused(build) -> None:
    model = build()
    with pytest.raises(ConfigurationError, match="HybridBranch needs a second group.*docs/transformers.rst"):
        install_hybrid_loss(model, HybridBranch(5, 5))
    with pytest.raises(ConfigurationError, match="reads its loss weights from its config"):
        install_hybrid_loss(model, HybridEpoch(k=K), weight_dict={"loss_ce": 2.0})


def test_mask2former_layer_scheme_needs_auxiliary_losses() -> None:
    with pytest.raises(ConfigurationError, match="use_auxiliary_loss"):
        install_hybrid_loss(_tiny_mask2former(use_auxiliary_loss=False), HybridLayer(k=K, num_one2many_layers=1))
