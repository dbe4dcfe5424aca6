"""hybridmatch.integrations.transformers on tiny transformers detectors built from configs.

No weights and no network: every model is a few-thousand-parameter DETR, Deformable DETR or
Conditional DETR with a two-stage ResNet, built from a config with a fixed seed. The
reference for every loss is the *unmodified* model's own loss (transformers' matcher and
criterion) on the same inputs: on the original labels for one-to-one supervision, on the
labels repeated K times by hand (what H-DETR's one-to-many matching is) for one-to-many.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # no model hub: every model is built from a config
transformers = pytest.importorskip("transformers")

from hybridmatch import (  # noqa: E402
    ConfigurationError,
    HybridBranch,
    HybridEpoch,
    HybridLayer,
    InvalidTargetError,
)
from hybridmatch.integrations import transformers as integration  # noqa: E402
from hybridmatch.integrations.transformers import HybridLoss, install_hybrid_loss  # noqa: E402

KINDS = ("detr", "deformable", "conditional")
K = 3
LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou")


def _tiny_model(kind: str, **overrides: object) -> torch.nn.Module:
    """A tiny detector with 3 decoder layers, 12 queries and 3 classes, auxiliary losses on."""
    levels = 2 if kind == "deformable" else 1
    backbone = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 8, 16, 16],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage3", "stage4"][-levels:],
    )
    settings: dict[str, object] = dict(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=3,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        num_labels=3,
        auxiliary_loss=True,
        dropout=0.0,
    )
    if kind == "deformable":
        settings.update(num_feature_levels=levels, encoder_n_points=2, decoder_n_points=2)
    settings.update(overrides)
    config_class, model_class = {
        "detr": (transformers.DetrConfig, transformers.DetrForObjectDetection),
        "deformable": (transformers.DeformableDetrConfig, transformers.DeformableDetrForObjectDetection),
        "conditional": (transformers.ConditionalDetrConfig, transformers.ConditionalDetrForObjectDetection),
    }[kind]
    torch.manual_seed(0)
    # Training mode: the hybrid loss is a training loss (in eval() the model's own loss is
    # returned); dropout is 0 and the backbone's batch norms are frozen, so it is deterministic.
    model = model_class(config_class(**settings)).train()
    # Initialised weights predict nearly the same box for every query, where any matching
    # gives the same loss; spread the predictions so that the matching decides the losses.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def _inputs() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 64x64 images with 2 and 3 objects (cxcywh, normalised)."""
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.rand(2, 3, 64, 64, generator=generator)
    labels = [
        {
            "class_labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
        },
        {
            "class_labels": torch.tensor([1, 1, 0]),
            "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.8, 0.1, 0.2], [0.8, 0.2, 0.3, 0.1]]),
        },
    ]
    return pixel_values, labels


def _repeated(labels: list[dict[str, torch.Tensor]], k: int) -> list[dict[str, torch.Tensor]]:
    """H-DETR's one-to-many targets, written out: each image's objects tiled k times."""
    return [{"class_labels": t["class_labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in labels]


def _own_loss(model: torch.nn.Module, pixel_values: torch.Tensor, labels: list) -> object:
    """The model's own loss, from a copy without any hybrid loss installed."""
    twin = copy.deepcopy(model)
    if isinstance(twin.loss_function, HybridLoss):
        twin.loss_function.uninstall()
    with torch.no_grad():
        return twin(pixel_values=pixel_values, labels=labels)


def _assert_losses_equal(actual: dict, expected: dict, keys: object = None) -> None:
    keys = sorted(expected) if keys is None else keys
    for key in keys:
        torch.testing.assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}")


def _weighted_sum(loss_dict: dict, config: object, class_weight: float = 1.0) -> torch.Tensor:
    """transformers' weighting, written out: loss_ce 1, L1 and GIoU from the config."""
    weights = {
        "loss_ce": class_weight,
        "loss_bbox": config.bbox_loss_coefficient,
        "loss_giou": config.giou_loss_coefficient,
    }
    total = torch.zeros((), dtype=torch.float64)
    for key, value in loss_dict.items():
        base = key if key in weights else key.rsplit("_", 1)[0]
        if base in weights:
            total = total + weights[base] * value.double()
    return total


# ------------------------------------------------------------------ one-to-one = the model's own


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "scheme",
    [
        HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2, epoch=1),  # past its one-to-many epoch
        HybridLayer(k=K, num_one2many_layers=0),
    ],
    ids=["epoch-after-switch", "layer-none"],
)
def test_one2one_phase_equals_the_models_own_loss(kind: str, scheme: object) -> None:
    model = _tiny_model(kind)
    pixel_values, labels = _inputs()
    expected = _own_loss(model, pixel_values, labels)
    install_hybrid_loss(model, copy.deepcopy(scheme))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    assert sorted(actual.loss_dict) == sorted(expected.loss_dict)
    _assert_losses_equal(actual.loss_dict, expected.loss_dict)
    torch.testing.assert_close(actual.loss, expected.loss)
    assert len(actual.auxiliary_outputs) == 2
    for ours, theirs in zip(actual.auxiliary_outputs, expected.auxiliary_outputs):
        _assert_losses_equal(ours, theirs)


# ------------------------------------------------------------------ one-to-many = repeated targets


@pytest.mark.parametrize("kind", KINDS)
def test_epoch_scheme_one2many_phase_equals_loss_on_repeated_targets(kind: str) -> None:
    model = _tiny_model(kind)
    pixel_values, labels = _inputs()
    expected = _own_loss(model, pixel_values, _repeated(labels, K))
    one2one = _own_loss(model, pixel_values, labels)
    install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    assert sorted(actual.loss_dict) == sorted(expected.loss_dict)
    _assert_losses_equal(actual.loss_dict, expected.loss_dict)
    torch.testing.assert_close(actual.loss, expected.loss)
    # and it is not the one-to-one loss: K copies are matched
    assert not torch.allclose(actual.loss_dict["loss_bbox"], one2one.loss_dict["loss_bbox"])


@pytest.mark.parametrize("kind", KINDS)
def test_layer_scheme_supervises_the_first_layers_one2many(kind: str) -> None:
    model = _tiny_model(kind)
    pixel_values, labels = _inputs()
    one2many = _own_loss(model, pixel_values, _repeated(labels, K)).loss_dict
    one2one = _own_loss(model, pixel_values, labels).loss_dict
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    assert sorted(actual.loss_dict) == sorted(one2one)
    # layers 0 and 1 (auxiliary outputs) against the repeated labels, the final layer one-to-one
    _assert_losses_equal(actual.loss_dict, one2many, [f"{term}_{layer}" for term in LOSS_TERMS for layer in (0, 1)])
    _assert_losses_equal(actual.loss_dict, one2one, list(LOSS_TERMS))
    torch.testing.assert_close(actual.loss.double(), _weighted_sum(actual.loss_dict, model.config))


# ------------------------------------------------------------------ the config is what is used


@pytest.mark.parametrize("kind", ["detr", "deformable"])
@pytest.mark.parametrize("epoch", [0, 1], ids=["one2many-matcher", "one2one-matcher"])
def test_matcher_costs_come_from_the_config(kind: str, epoch: int) -> None:
    pixel_values, labels = _inputs()
    targets = _repeated(labels, K) if epoch == 0 else labels
    results = []
    for costs in ({"class_cost": 1, "bbox_cost": 0, "giou_cost": 0}, {"class_cost": 0, "bbox_cost": 1, "giou_cost": 0}):
        model = _tiny_model(kind, **costs)
        expected = _own_loss(model, pixel_values, targets)
        install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2, epoch=epoch))
        with torch.no_grad():
            actual = model(pixel_values=pixel_values, labels=labels)
        _assert_losses_equal(actual.loss_dict, expected.loss_dict)
        results.append(actual.loss_dict["loss_bbox"])
    # the two cost settings match differently (else this test could not tell them apart)
    assert not torch.allclose(results[0], results[1])


@pytest.mark.parametrize("kind", ["detr", "conditional"])
def test_loss_settings_come_from_the_config(kind: str) -> None:
    pixel_values, labels = _inputs()
    class_setting = {"eos_coefficient": 0.5} if kind == "detr" else {"focal_alpha": 0.4}
    model = _tiny_model(kind, bbox_loss_coefficient=7, giou_loss_coefficient=3, **class_setting)
    default = _own_loss(_tiny_model(kind), pixel_values, labels)
    expected = _own_loss(model, pixel_values, labels)
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=0))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    _assert_losses_equal(actual.loss_dict, expected.loss_dict)
    torch.testing.assert_close(actual.loss, expected.loss)
    torch.testing.assert_close(actual.loss.double(), _weighted_sum(actual.loss_dict, model.config))
    assert not torch.allclose(actual.loss_dict["loss_ce"], default.loss_dict["loss_ce"])  # eos / alpha used


def test_weight_dict_overrides_the_class_weight() -> None:
    model = _tiny_model("conditional")
    pixel_values, labels = _inputs()
    class_weight = model.config.cls_loss_coefficient  # 2; transformers' own loss uses 1
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1), weight_dict={"loss_ce": class_weight})
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    expected = _weighted_sum(actual.loss_dict, model.config, class_weight=2.0)
    torch.testing.assert_close(actual.loss.double(), expected)
    assert not torch.allclose(expected, _weighted_sum(actual.loss_dict, model.config))


# ------------------------------------------------------------------ training


def _train(model: torch.nn.Module, steps: int, pixel_values: torch.Tensor, labels: list) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        outputs = model(pixel_values=pixel_values, labels=labels)
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
        losses.append(float(outputs.loss.detach()))
    return losses


def test_deformable_detr_trains_with_the_layer_scheme() -> None:
    model = _tiny_model("deformable")
    pixel_values, labels = _inputs()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    losses = _train(model, 3, pixel_values, labels)
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("class_embed.0") for name in changed)  # the one-to-many layer's head learns
    assert any(name.startswith("model.decoder") for name in changed)
    # still the hybrid-layer loss after the updates
    one2many = _own_loss(model, pixel_values, _repeated(labels, K)).loss_dict
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels).loss_dict
    _assert_losses_equal(actual, one2many, ["loss_bbox_0", "loss_giou_0", "loss_ce_1"])


def test_deformable_detr_trains_with_the_epoch_scheme_and_switches() -> None:
    model = _tiny_model("deformable")
    pixel_values, labels = _inputs()
    scheme = HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2)
    hybrid = install_hybrid_loss(model, scheme)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for epoch, targets in ((0, _repeated(labels, K)), (1, labels)):
        assert scheme.epoch == epoch
        losses = _train(model, 2, pixel_values, labels)
        assert all(torch.isfinite(torch.tensor(losses)))
        with torch.no_grad():
            actual = model(pixel_values=pixel_values, labels=labels).loss_dict
        _assert_losses_equal(actual, _own_loss(model, pixel_values, targets).loss_dict)
        scheme.step()
    assert hybrid.scheme is scheme
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())


# ------------------------------------------------------------------ install / uninstall


def test_uninstall_restores_the_models_own_loss() -> None:
    model = _tiny_model("deformable")
    pixel_values, labels = _inputs()
    original = model.loss_function
    keys = sorted(model.state_dict())
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, labels=labels)
    hybrid = install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    assert model.loss_function is hybrid and hybrid.installed
    assert sorted(model.state_dict()) == keys  # nothing registered on the model
    with torch.no_grad():
        assert not torch.allclose(model(pixel_values=pixel_values, labels=labels).loss, expected.loss)
    hybrid.uninstall()
    assert model.loss_function is original and not hybrid.installed
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixel_values, labels=labels).loss, expected.loss)
    hybrid.uninstall()  # a second uninstall is a no-op
    assert model.loss_function is original


def test_context_manager_uninstalls() -> None:
    model = _tiny_model("detr")
    original = model.loss_function
    with install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1)) as hybrid:
        assert model.loss_function is hybrid
    assert model.loss_function is original


def test_uninstall_refuses_to_drop_a_later_replacement() -> None:
    model = _tiny_model("detr")
    hybrid = install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1))

    def custom(*args: object) -> None:
        return None

    model.loss_function = custom
    with pytest.raises(ConfigurationError, match="replaced after install"):
        hybrid.uninstall()
    assert model.loss_function is custom


# ------------------------------------------------------------------ errors


def test_installing_twice_is_an_error() -> None:
    model = _tiny_model("detr")
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1))
    with pytest.raises(ConfigurationError, match="already has a hybrid loss"):
        install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1))


def test_hybrid_branch_is_refused() -> None:
    model = _tiny_model("deformable")
    with pytest.raises(ConfigurationError, match="HybridBranch needs a second group"):
        install_hybrid_loss(model, HybridBranch(num_one2one=12, num_one2many=24, k=K))


def test_layer_scheme_needs_auxiliary_loss() -> None:
    model = _tiny_model("deformable", auxiliary_loss=False)
    with pytest.raises(ConfigurationError, match=r"auxiliary_loss = True"):
        install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    assert not isinstance(model.loss_function, HybridLoss)  # nothing installed
    # switched off after the install: the next forward says so
    model = _tiny_model("deformable")
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    model.config.auxiliary_loss = False
    pixel_values, labels = _inputs()
    with pytest.raises(ConfigurationError, match=r"auxiliary_loss is False"):
        model(pixel_values=pixel_values, labels=labels)


def test_epoch_scheme_without_auxiliary_loss_supervises_the_final_layer() -> None:
    model = _tiny_model("deformable", auxiliary_loss=False)
    pixel_values, labels = _inputs()
    expected = _own_loss(model, pixel_values, _repeated(labels, K))
    install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    assert sorted(actual.loss_dict) == ["cardinality_error", "loss_bbox", "loss_ce", "loss_giou"]
    _assert_losses_equal(actual.loss_dict, expected.loss_dict)
    assert actual.auxiliary_outputs is None


def test_other_models_of_the_detr_convention_work_too() -> None:
    # YOLOS computes its loss with transformers' ForObjectDetectionLoss, as DETR does
    config = transformers.YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=12,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.YolosForObjectDetection(config).train()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    pixel_values, labels = _inputs()
    expected = _own_loss(model, pixel_values, _repeated(labels, K))
    install_hybrid_loss(model, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    _assert_losses_equal(actual.loss_dict, expected.loss_dict)
    torch.testing.assert_close(actual.loss, expected.loss)


def test_layer_scheme_must_leave_the_final_layer_one2one() -> None:
    model = _tiny_model("conditional")
    with pytest.raises(ConfigurationError, match=r"decoder_layers = 3"):
        install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=3))


def test_unsupported_models_are_refused() -> None:
    with pytest.raises(TypeError, match="PreTrainedModel"):
        install_hybrid_loss(torch.nn.Linear(2, 2), HybridLayer(k=K, num_one2many_layers=1))
    torch.manual_seed(0)
    classifier = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_labels=3)
    )
    with pytest.raises(ConfigurationError, match="cannot wrap.*supported: DETR"):
        install_hybrid_loss(classifier, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    detector = _tiny_model("deformable")
    detector.loss_function = lambda *args: None  # a loss of unknown convention
    with pytest.raises(ConfigurationError, match="cannot wrap"):
        install_hybrid_loss(detector, HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2))
    with pytest.raises(TypeError, match="HybridLayer or a HybridEpoch"):
        install_hybrid_loss(_tiny_model("detr"), "layer")


def test_bad_weight_dict_is_refused() -> None:
    model = _tiny_model("detr")
    with pytest.raises(ConfigurationError, match=r"weight_dict\['loss_cls'\]: unknown loss"):
        install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1), weight_dict={"loss_cls": 2.0})
    with pytest.raises(ConfigurationError, match=r"weight_dict\['loss_ce'\] must be a finite number"):
        install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1), weight_dict={"loss_ce": float("nan")})


def test_bad_labels_name_transformers_keys() -> None:
    model = _tiny_model("deformable")
    pixel_values, labels = _inputs()
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=1))
    labels[1]["class_labels"] = torch.tensor([1, 3, 0])  # 3 classes: 3 is out of range
    with pytest.raises(InvalidTargetError, match=r"targets\[1\]\['class_labels'\]\[1\] is 3"):
        model(pixel_values=pixel_values, labels=labels)


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    integration._transformers.cache_clear()
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    try:
        with pytest.raises(ImportError, match=r"hybridmatch\[transformers\]"):
            install_hybrid_loss(torch.nn.Linear(2, 2), HybridLayer(k=K, num_one2many_layers=1))
    finally:
        integration._transformers.cache_clear()


def test_importing_hybridmatch_does_not_import_transformers() -> None:
    # transformers is imported by install_hybrid_loss, not by importing hybridmatch or the adapter
    code = (
        "import sys, hybridmatch, hybridmatch.integrations.transformers\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ issue 19: eval and the switch


@pytest.mark.parametrize("kind", ["detr", "deformable"])
def test_eval_mode_returns_the_models_own_loss(kind: str) -> None:
    # A Trainer's evaluation loss must be the model's own (one-to-one), as HybridCriterion.eval() gives.
    model = _tiny_model(kind)
    pixel_values, labels = _inputs()
    install_hybrid_loss(model, HybridLayer(k=K, num_one2many_layers=2))
    with torch.no_grad():
        hybrid = model(pixel_values=pixel_values, labels=labels).loss
        model.eval()
        evaluated = model(pixel_values=pixel_values, labels=labels)
    own = _own_loss(model, pixel_values, labels)
    assert torch.equal(evaluated.loss, own.loss)
    _assert_losses_equal(evaluated.loss_dict, own.loss_dict)
    assert not torch.allclose(hybrid, own.loss)  # in training it is the hybrid loss


def test_epoch_switch_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    model = _tiny_model("detr")
    pixel_values, labels = _inputs()
    scheme = HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2)
    install_hybrid_loss(model, scheme)
    with caplog.at_level("WARNING", logger="hybridmatch.criterion"), torch.no_grad():
        model(pixel_values=pixel_values, labels=labels)
        assert not caplog.records
        scheme.step()
        model(pixel_values=pixel_values, labels=labels)
        model(pixel_values=pixel_values, labels=labels)
    switched = [record for record in caplog.records if "switched from one-to-many (K=3)" in record.getMessage()]
    assert len(switched) == 1


@pytest.mark.parametrize("scheme", [HybridLayer(k=K, num_one2many_layers=0), HybridEpoch(k=K, one2many_fraction=0.5, total_epochs=2)],
                         ids=["one-to-one", "one-to-many"])
def test_the_decoder_layers_are_matched_in_one_solver_call(monkeypatch: pytest.MonkeyPatch, scheme: object) -> None:
    import hybridmatch.matchers.assigners as assigners

    model = _tiny_model("detr")
    pixel_values, labels = _inputs()
    expected = _own_loss(model, pixel_values, labels if isinstance(scheme, HybridLayer) else _repeated(labels, K))
    calls: list = []
    solve = assigners.batched_linear_sum_assignment
    monkeypatch.setattr(assigners, "batched_linear_sum_assignment",
                        lambda cost, *a, **k: calls.append(tuple(cost.shape)) or solve(cost, *a, **k))
    install_hybrid_loss(model, copy.deepcopy(scheme))
    with torch.no_grad():
        actual = model(pixel_values=pixel_values, labels=labels)
    _assert_losses_equal(actual.loss_dict, expected.loss_dict)
    # The final layer and 2 auxiliary ones of 2 images: one solve of 6 problems (capacity K, not K copies).
    assert [shape[0] for shape in calls] == [3 * len(labels)]
    assert calls[0][2] == max(len(label["class_labels"]) for label in labels)
