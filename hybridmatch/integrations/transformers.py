"""Hybrid matching for Hugging Face transformers' DETR-family detectors.

transformers computes a detector's training loss in ``model.loss_function``, called by the
model's ``forward`` when ``labels=`` is given::

    loss, loss_dict, auxiliary_outputs = model.loss_function(
        logits, labels, device, pred_boxes, config, outputs_class, outputs_coord)

:func:`install_hybrid_loss` replaces that function with a :class:`HybridLoss`, which
computes the same losses under a hybrid-matching scheme of H-DETR ("DETRs with Hybrid
Matching", Jia et al., CVPR 2023): :class:`~hybridmatch.schemes.HybridLayer` (the first
decoder layers matched against the ground truth repeated K times) or
:class:`~hybridmatch.schemes.HybridEpoch` (every layer, in the first epochs). Neither
needs a change to the model. A forward with ``labels=`` then returns the hybrid loss;
nothing else about the model changes (its ``state_dict``, inference and outputs stay as
they were).

Everything is read from ``model.config``, as transformers' own loss reads it:

* matcher costs: ``class_cost``, ``bbox_cost``, ``giou_cost``; the class cost is the softmax
  probability for DETR, YOLOS and Table Transformer (transformers' ``ForObjectDetectionLoss``)
  and the sigmoid focal cost (alpha 0.25, gamma 2) for Deformable DETR, Conditional DETR and
  DAB-DETR (``DeformableDetrForObjectDetectionLoss``);
* class loss: cross-entropy with no-object weight ``eos_coefficient``, or sigmoid focal with
  ``focal_alpha``;
* loss weights: ``loss_ce`` 1, ``loss_bbox`` ``bbox_loss_coefficient``, ``loss_giou``
  ``giou_loss_coefficient``, the same for every decoder layer;
* per-layer losses: ``auxiliary_loss``.

The class and box losses are transformers' own criterion classes (so an inactive or
one-to-one scheme gives exactly the model's own loss); matching is hybridmatch's
:class:`~hybridmatch.matchers.HungarianMatcher` with the config's costs, batched, and the
one-to-many layers are matched with a capacity-K solve
(:class:`~hybridmatch.matchers.OneToManyMatcher`) rather than against K explicit copies,
which gives the same losses. RT-DETR, RT-DETRv2 and D-FINE (their own loss functions, denoising included) and Mask2Former
(``model.get_loss_dict``) are supported through their own loss code: the one-to-many layers'
terms come from a second call on the labels repeated K times (Mask2Former: matched with
capacity K by hybridmatch's mask costs), the rest from the model's own call; see
:func:`install_hybrid_loss`. DEIMv2, LW-DETR and RF-DETR are refused with the reason. In
``model.eval()`` every model's own loss is returned unchanged. The criterion classes live in private transformers modules;
this adapter is the only place hybridmatch imports them, and it names the transformers
version when they are missing.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..costs import CostSum, MaskBCECost, MaskDiceCost, SoftmaxClassCost
from ..criterion import HybridCriterion, KeyMap, note_epoch_switch
from ..errors import ConfigurationError, InvalidTargetError
from ..matchers import HungarianMatcher, Matches, OneToManyMatcher
from ..matchers._one2many import CopiesFromCapacity, MatcherView, override_matcher
from ..schemes import HybridBranch, HybridEpoch, HybridLayer
from ..targets import repeat_targets
from ..validation import NanPolicy

__all__ = ["HybridLoss", "install_hybrid_loss"]

#: The oldest transformers release with the DETR loss interfaces this adapter uses (read in
#: 5.0.0's source; the tests run on the installed release, 5.24 when this was written).
MIN_TRANSFORMERS_VERSION = "5.0"

_INSTALL_HINT = 'pip install "hybridmatch[transformers]"'
_LOSS_KEYS = ("loss_ce", "loss_bbox", "loss_giou")
_SUPPORTED = (
    "DETR, YOLOS and Table Transformer (transformers' ForObjectDetectionLoss), Deformable DETR, "
    "Conditional DETR and DAB-DETR (DeformableDetrForObjectDetectionLoss), RT-DETR, RT-DETRv2 and "
    "D-FINE (their denoising losses kept), and Mask2Former (Mask2FormerForUniversalSegmentation)"
)
# Models whose loss already supervises queries in a way a hybrid scheme would change (transformers'
# LOSS_MAPPING name -> why they are refused).
_REFUSED = {
    "Deimv2ForObjectDetection": (
        "DEIMv2's loss supervises every decoder layer with the union of all layers' one-to-one matches "
        "(dense one-to-one, config.use_dense_one_to_one) and weights its class loss by those matches "
        "(MAL), so a layer cannot be matched one-to-many on its own without changing that rule"
    ),
    "LwDetrForObjectDetection": (
        "LW-DETR already trains one-to-many: its queries form config.group_detr groups (Group DETR), "
        "each matched one-to-one, and matching them against K copies of the targets as well would "
        "mix two one-to-many schemes"
    ),
    "RfDetrForObjectDetection": (
        "RF-DETR (LW-DETR's loss) already trains one-to-many with config.group_detr query groups "
        "(Group DETR); a hybrid scheme on top would mix two one-to-many schemes"
    ),
    "RfDetrForInstanceSegmentation": (
        "RF-DETR (LW-DETR's loss) already trains one-to-many with config.group_detr query groups "
        "(Group DETR); a hybrid scheme on top would mix two one-to-many schemes"
    ),
}
# RT-DETR's per-layer loss names: decoder layers (and, last, the encoder's proposals) and denoising.
_RT_DETR_LAYER = re.compile(r".+_aux_(\d+)")
_RT_DETR_DENOISING = re.compile(r".+_dn_\d+")
_MASK2FORMER_LAYER = re.compile(r".+_(\d+)")

Convention = Literal["softmax", "focal", "rt_detr", "mask2former"]
LossOutput = tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]] | None]


@dataclass(frozen=True)
class _Transformers:
    """The parts of transformers the adapter uses; see :func:`_transformers`."""

    version: str
    pretrained_model: type
    losses: Mapping[Any, Convention]  # transformers' loss function -> its convention
    criteria: Mapping[Convention, type]  # convention -> transformers' criterion class
    refused: Mapping[Any, str]  # loss functions hybridmatch does not wrap -> why
    mask2former: type | None  # Mask2FormerForUniversalSegmentation, where transformers has it


@functools.lru_cache(maxsize=None)
def _transformers() -> _Transformers:
    """Import transformers and its DETR losses once, with errors that say what to install."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"hybridmatch.integrations.transformers needs transformers: {_INSTALL_HINT}"
        ) from error
    try:
        from transformers.loss.loss_deformable_detr import (
            DeformableDetrForObjectDetectionLoss,
            DeformableDetrImageLoss,
        )
        from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss, ImageLoss
        from transformers.loss.loss_utils import LOSS_MAPPING
    except ImportError as error:
        raise ImportError(
            f"transformers {transformers.__version__} lacks the DETR loss classes hybridmatch adapts "
            f"({error}); hybridmatch.integrations.transformers needs transformers >= "
            f"{MIN_TRANSFORMERS_VERSION}: {_INSTALL_HINT}"
        ) from error
    losses: dict[Any, Convention] = {ForObjectDetectionLoss: "softmax", DeformableDetrForObjectDetectionLoss: "focal"}
    # The real-time DETRs (transformers >= 5.x): their own loss functions, named in LOSS_MAPPING.
    for name in ("RTDetrForObjectDetection", "RTDetrV2ForObjectDetection", "DFineForObjectDetection"):
        if name in LOSS_MAPPING:
            losses[LOSS_MAPPING[name]] = "rt_detr"
    refused = {
        LOSS_MAPPING[name]: reason for name, reason in _REFUSED.items() if name in LOSS_MAPPING
    }
    return _Transformers(
        version=transformers.__version__,
        pretrained_model=transformers.PreTrainedModel,
        losses=losses,
        criteria={"softmax": ImageLoss, "focal": DeformableDetrImageLoss},
        refused=refused,
        mask2former=getattr(transformers, "Mask2FormerForUniversalSegmentation", None),
    )


def install_hybrid_loss(
    model: torch.nn.Module,
    scheme: HybridLayer | HybridEpoch,
    *,
    weight_dict: Mapping[str, float] | None = None,
    backend: str = "auto",
    nan_policy: NanPolicy = "raise",
) -> HybridLoss:
    """Make a transformers DETR-family detector train with a hybrid-matching scheme.

    Replaces ``model.loss_function`` with a :class:`HybridLoss` built from ``model.config``
    (see the module docstring for what is read); a forward with ``labels=`` then returns
    the hybrid loss in ``outputs.loss`` and its terms in ``outputs.loss_dict``, under the
    model's own key names (``loss_ce``, ``loss_bbox_0``, ...). Call ``scheme.step()`` once
    per finished epoch; :meth:`HybridLoss.uninstall` restores the model's own loss.

    RT-DETR, RT-DETRv2 and D-FINE keep their own loss function: in the one-to-many layers
    or epochs it is called a second time, on the normal (non-denoising) queries and the
    labels repeated K times, and the one-to-many layers' terms are taken from that call;
    the denoising terms (``*_dn_{i}``) always come from the model's own call on the
    original labels. Mask2Former's loss is ``model.get_loss_dict``, which is replaced the
    same way; its one-to-many calls match with hybridmatch's mask costs
    (:class:`~hybridmatch.costs.MaskBCECost`, :class:`~hybridmatch.costs.MaskDiceCost` on
    ``config.train_num_points`` points, :class:`~hybridmatch.costs.SoftmaxClassCost`,
    weighted by ``config.mask_weight``, ``dice_weight``, ``class_weight``) with capacity K.

    Args:
        model: a transformers model whose loss is ``ForObjectDetectionLoss`` (DETR, YOLOS,
            Table Transformer), ``DeformableDetrForObjectDetectionLoss`` (Deformable DETR,
            Conditional DETR, DAB-DETR), RT-DETR's or D-FINE's (RT-DETR, RT-DETRv2, D-FINE),
            or a ``Mask2FormerForUniversalSegmentation``. DEIMv2, LW-DETR and RF-DETR are
            refused (their losses already add supervision a scheme would change; the error
            says how).
        scheme: :class:`~hybridmatch.schemes.HybridLayer` (needs
            ``model.config.auxiliary_loss = True``: it supervises the decoder layers' own
            predictions) or :class:`~hybridmatch.schemes.HybridEpoch`. The hybrid branch
            needs a second query group and an attention mask in the decoder, which
            transformers' models do not have.
        weight_dict: optional overrides of the loss weights ``loss_ce``, ``loss_bbox``,
            ``loss_giou`` (default: transformers' ``1``, ``config.bbox_loss_coefficient``,
            ``config.giou_loss_coefficient``); DETR-convention models only (RT-DETR, D-FINE
            and Mask2Former read their weights from the config: set them there). transformers weights the class loss 1 even
            where the config has a ``cls_loss_coefficient`` (Conditional DETR, DAB-DETR);
            pass ``{"loss_ce": config.cls_loss_coefficient}`` to follow those papers.
        backend (str): the assignment solver, see
            :func:`~hybridmatch.solvers.batched_linear_sum_assignment`.
        nan_policy (str): ``"raise"`` (default: a NaN prediction raises an error naming it)
            or ``"worst"`` (NaN costs match last, as transformers' matcher does; warned once).

    Returns:
        HybridLoss: the installed loss function (also ``model.loss_function``).

    Raises:
        ImportError: transformers is missing or lacks the DETR losses.
        TypeError: ``model`` is not a transformers model, or ``scheme`` not a scheme.
        ConfigurationError: the model's loss is not one of the two above, a hybrid loss is
            already installed, the scheme is :class:`~hybridmatch.schemes.HybridBranch`,
            ``HybridLayer`` is used with ``config.auxiliary_loss = False`` or with as many
            one-to-many layers as the decoder has, or the config lacks a setting.

    Example:
        >>> import pytest; _ = pytest.importorskip("transformers")  # skipped without transformers
        >>> from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
        >>> from hybridmatch import HybridLayer
        >>> backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
        ...                         layer_type="basic", out_features=["stage4"])
        >>> config = DeformableDetrConfig(
        ...     backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        ...     num_feature_levels=1, d_model=32, encoder_layers=1, decoder_layers=3,
        ...     encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12, num_labels=3, auxiliary_loss=True)
        >>> model = DeformableDetrForObjectDetection(config)
        >>> hybrid = install_hybrid_loss(model, HybridLayer(k=4, num_one2many_layers=2))
        >>> labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
        >>> outputs = model(pixel_values=torch.rand(1, 3, 64, 64), labels=labels)
        >>> sorted(key for key in outputs.loss_dict if key.startswith("loss_ce"))
        ['loss_ce', 'loss_ce_0', 'loss_ce_1']
        >>> hybrid.uninstall()
    """
    parts = _transformers()
    if not isinstance(model, parts.pretrained_model):
        raise TypeError(
            f"model must be a transformers PreTrainedModel (e.g. DeformableDetrForObjectDetection), "
            f"got {type(model).__name__}"
        )
    name = type(model).__name__
    if isinstance(scheme, HybridBranch):
        raise ConfigurationError(
            f"HybridBranch needs a second group of queries and a self-attention mask in the decoder, "
            f"which {name} does not have; use HybridLayer or HybridEpoch, which need no model change "
            "(docs/transformers.rst says how to add the queries and the mask yourself)"
        )
    if not isinstance(scheme, (HybridLayer, HybridEpoch)):
        raise TypeError(f"scheme must be a HybridLayer or a HybridEpoch, got {type(scheme).__name__}")
    mask2former = parts.mask2former is not None and isinstance(model, parts.mask2former)
    slot = "get_loss_dict" if mask2former else "loss_function"
    current = getattr(model, slot)
    if isinstance(current, HybridLoss):
        raise ConfigurationError(
            f"{name} already has a hybrid loss installed ({current!r}); call its "
            "uninstall() before installing another"
        )
    if mask2former:
        if "get_loss_dict" in vars(model):
            raise ConfigurationError(
                f"{name}.get_loss_dict was replaced ({current!r}), which hybridmatch cannot wrap; "
                "delete the replacement first"
            )
        convention: Convention | None = "mask2former"
    else:
        reason = next((why for function, why in parts.refused.items() if current is function), None)
        if reason is not None:
            raise ConfigurationError(f"{name} is not supported by install_hybrid_loss: {reason}")
        convention = next((kind for function, kind in parts.losses.items() if current is function), None)
    if convention is None:
        function = getattr(current, "__qualname__", type(current).__name__)
        raise ConfigurationError(
            f"{name} computes its loss with {function} (loss_type="
            f"{getattr(model, 'loss_type', None)!r}), which hybridmatch cannot wrap; supported: {_SUPPORTED}; "
            "if model.loss_function was replaced, put transformers' own back first"
        )
    if weight_dict is not None and convention in ("rt_detr", "mask2former"):
        raise ConfigurationError(
            f"weight_dict overrides the DETR-convention weights only; {name} reads its loss weights from "
            "its config (RT-DETR, D-FINE: config.weight_loss_*; Mask2Former: config.class_weight, "
            "mask_weight, dice_weight): set them there"
        )
    hybrid = HybridLoss(
        model,
        scheme,
        convention=convention,
        original=current,
        weight_dict=weight_dict,
        backend=backend,
        nan_policy=nan_policy,
    )
    hybrid._check_scheme(model.config)  # every config check, before the model changes
    if convention in ("softmax", "focal"):
        hybrid.build_criterion()
    elif convention == "mask2former":
        hybrid._mask_matcher()
    setattr(model, slot, hybrid)
    hybrid._installed = True
    return hybrid


class HybridLoss:
    """A transformers ``loss_function`` that computes a DETR loss under a hybrid scheme.

    Built and installed by :func:`install_hybrid_loss`; called by the model's forward as
    transformers calls its own loss function. Not an ``nn.Module``, so installing it adds
    nothing to the model's ``state_dict``; the scheme's state is ``scheme.state_dict()``.

    Attributes:
        model: the model it is installed on.
        scheme (HybridLayer | HybridEpoch): the scheme; call ``scheme.step()`` per epoch.
        convention (str): ``"softmax"`` (DETR's loss), ``"focal"`` (Deformable DETR's),
            ``"rt_detr"`` (RT-DETR's and D-FINE's) or ``"mask2former"``.
        original: the loss function :meth:`uninstall` puts back (Mask2Former: the model's
            ``get_loss_dict``).

    Example:
        >>> import pytest; _ = pytest.importorskip("transformers")  # skipped without transformers
        >>> from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
        >>> from hybridmatch import HybridEpoch
        >>> backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
        ...                         layer_type="basic", out_features=["stage4"])
        >>> model = DetrForObjectDetection(DetrConfig(
        ...     backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        ...     d_model=16, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        ...     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8, num_labels=2))
        >>> own = model.loss_function
        >>> with install_hybrid_loss(model, HybridEpoch(k=2, one2many_fraction=0.5, total_epochs=2)) as hybrid:
        ...     isinstance(model.loss_function, HybridLoss), hybrid.convention
        (True, 'softmax')
        >>> model.loss_function == own          # put back on leaving the block
        True
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheme: HybridLayer | HybridEpoch,
        *,
        convention: Convention,
        original: Callable[..., Any],
        weight_dict: Mapping[str, float] | None = None,
        backend: str = "auto",
        nan_policy: NanPolicy = "raise",
    ) -> None:
        self.model = model
        self.scheme = scheme
        self.convention: Convention = convention
        self.original = original
        self.weight_overrides = _check_weight_dict(weight_dict)
        self.backend = backend
        self.nan_policy: NanPolicy = nan_policy
        self._installed = False
        # The criterion of the last call and the config it was built from: kept across calls,
        # so that it sees a HybridEpoch switch happen (and logs it once).
        self._criterion: tuple[Any, HybridCriterion] | None = None
        self._slot = "get_loss_dict" if convention == "mask2former" else "loss_function"
        self._last_k: int | None = None  # the last call's K, to log a HybridEpoch switch once
        self._switch_logged = False

    def __repr__(self) -> str:
        return (
            f"HybridLoss(model={type(self.model).__name__}, scheme={self.scheme!r}, "
            f"convention={self.convention!r}, installed={self._installed})"
        )

    @property
    def installed(self) -> bool:
        """Whether this loss is the model's ``loss_function`` (Mask2Former: ``get_loss_dict``)."""
        return self._installed and getattr(self.model, self._slot) is self

    def build_criterion(self, config: Any = None) -> HybridCriterion:
        """The criterion a call uses: transformers' criterion wrapped with the scheme.

        Args:
            config: the model config to read; default ``model.config``.

        Returns:
            HybridCriterion: over transformers' criterion for the model (its matcher replaced
            by a :class:`~hybridmatch.matchers.HungarianMatcher` with the config's costs),
            with :meth:`~hybridmatch.criterion.KeyMap.huggingface` keys and a capacity-K
            one-to-many matcher. Called as ``criterion(outputs, labels)`` on transformers'
            outputs dict (``logits``, ``pred_boxes``, ``auxiliary_outputs``).

        Raises:
            ConfigurationError: a setting is missing or out of range (see
                :func:`install_hybrid_loss`).
        """
        config = self.model.config if config is None else config
        self._check_scheme(config)
        focal = self.convention == "focal"
        costs = {
            "cost_class": _setting(config, "class_cost"),
            "cost_bbox": _setting(config, "bbox_cost"),
            "cost_giou": _setting(config, "giou_cost"),
        }
        # transformers' focal matcher fixes alpha 0.25 and gamma 2 (config.focal_alpha is the loss's).
        settings: dict[str, Any] = {
            "class_cost": "focal" if focal else "softmax",
            "backend": self.backend,
            "nan_policy": self.nan_policy,
        }
        matcher = _HuggingFaceMatcher(HungarianMatcher(**costs, **settings))
        one2many = _HuggingFaceMatcher(OneToManyMatcher(self.scheme.k, **costs, **settings))
        criterion_class = _transformers().criteria[self.convention]
        losses = ["labels", "boxes", "cardinality"]
        num_classes = _setting(config, "num_labels")
        class_setting = (
            {"focal_alpha": _setting(config, "focal_alpha")}
            if focal
            else {"eos_coef": _setting(config, "eos_coefficient")}
        )
        try:
            criterion = criterion_class(matcher=matcher, num_classes=num_classes, losses=losses, **class_setting)
        except TypeError as error:
            raise ImportError(
                f"transformers {_transformers().version}'s {criterion_class.__name__} takes other arguments "
                f"than hybridmatch expects ({error}); {_INSTALL_HINT}"
            ) from error
        return HybridCriterion(
            criterion,
            self.scheme,
            key_map=KeyMap.huggingface(),
            one2many_matcher=one2many,
            # transformers' criterion reads only class_labels and boxes, which are always repeated.
            per_object_keys=(),
        )

    def loss_weights(self, num_layers: int, config: Any = None) -> dict[str, float]:
        """The weight of every loss key, as transformers' ``weight_dict`` (overrides applied).

        Args:
            num_layers (int): decoder layers supervised (1 without auxiliary losses).
            config: the model config to read; default ``model.config``.

        Returns:
            dict: ``loss_ce``, ``loss_bbox``, ``loss_giou`` and their ``_{i}`` copies for the
            earlier layers ``i < num_layers - 1``; logging keys (``cardinality_error``) have none.
        """
        config = self.model.config if config is None else config
        base = {
            "loss_ce": 1.0,
            "loss_bbox": float(_setting(config, "bbox_loss_coefficient")),
            "loss_giou": float(_setting(config, "giou_loss_coefficient")),
        }
        base.update(self.weight_overrides)
        weights = dict(base)
        for layer in range(num_layers - 1):
            weights.update({f"{key}_{layer}": value for key, value in base.items()})
        return weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the hybrid loss, called as the function it replaces.

        For the DETR convention see :meth:`detr_loss`; RT-DETR and D-FINE take the same
        arguments plus their own keywords (``denoising_meta_values``, ...), and
        Mask2Former's ``get_loss_dict(masks_queries_logits, class_queries_logits,
        mask_labels, class_labels, auxiliary_predictions)`` returns its loss dict. In
        evaluation (``model.eval()``) the replaced function is called as it is: the model's
        own one-to-one loss.
        """
        if not self.model.training:
            # The model's own (one-to-one) loss, as HybridCriterion gives in eval(), so that an
            # evaluation loop reports the loss the model is judged by.
            return self.original(*args, **kwargs)
        if self.convention == "rt_detr":
            return self._rt_detr_loss(*args, **kwargs)
        if self.convention == "mask2former":
            return self._mask2former_loss(*args, **kwargs)
        return self.detr_loss(*args, **kwargs)

    def detr_loss(
        self,
        logits: Tensor,
        labels: Sequence[Mapping[str, Tensor]],
        device: torch.device | str,
        pred_boxes: Tensor,
        config: Any,
        outputs_class: Tensor | None = None,
        outputs_coord: Tensor | None = None,
        **kwargs: Any,
    ) -> LossOutput:
        """The hybrid loss of a DETR-convention model; the signature of transformers' DETR loss functions.

        Args:
            logits (Tensor[B, N, C]): the final layer's class logits.
            labels: B dicts with ``class_labels (Tensor[M_b] int64)`` and ``boxes
                (Tensor[M_b, 4])`` cxcywh normalised.
            device: the model's device.
            pred_boxes (Tensor[B, N, 4]): the final layer's boxes, cxcywh normalised.
            config: the model config.
            outputs_class (Tensor[L, B, N, C], optional): every decoder layer's logits, given
                when ``config.auxiliary_loss`` is True.
            outputs_coord (Tensor[L, B, N, 4], optional): every decoder layer's boxes.

        Returns:
            ``(loss, loss_dict, auxiliary_outputs)`` as transformers returns them: the weighted
            sum (0-dim Tensor), every loss term by name, and the earlier layers' predictions
            (or None).
        """
        outputs: dict[str, Any] = {"logits": logits, "pred_boxes": pred_boxes}
        auxiliary_outputs = None
        if _setting(config, "auxiliary_loss") and outputs_class is not None and outputs_coord is not None:
            auxiliary_outputs = [
                {"logits": layer_logits, "pred_boxes": layer_boxes}
                for layer_logits, layer_boxes in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
            outputs["auxiliary_outputs"] = auxiliary_outputs
        criterion = self._criterion_for(config).to(device)
        loss_dict = criterion(outputs, labels)
        weights = self.loss_weights(len(auxiliary_outputs or []) + 1, config)
        loss = sum(value * weights[key] for key, value in loss_dict.items() if key in weights)
        if not isinstance(loss, Tensor):
            loss = logits.sum() * 0.0  # no weighted term at all: keep the graph
        return loss, loss_dict, auxiliary_outputs

    def uninstall(self) -> None:
        """Put the model's own loss function back; a no-op when not installed.

        Raises:
            ConfigurationError: ``model.loss_function`` was replaced by something else since
                the install (nothing is restored, so that replacement is not lost).
        """
        if not self._installed:
            return
        current = getattr(self.model, self._slot)
        if current is not self:
            raise ConfigurationError(
                f"model.{self._slot} is no longer this HybridLoss (it is {current!r}); it was replaced "
                "after install_hybrid_loss, so nothing was restored"
            )
        if self._slot == "get_loss_dict":
            del self.model.get_loss_dict  # the class's own method shows through again
        else:
            self.model.loss_function = self.original
        self._installed = False

    def __enter__(self) -> HybridLoss:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    # ------------------------------------------------------------------ helpers

    def _criterion_for(self, config: Any) -> HybridCriterion:
        """The criterion built from ``config``, reused while the config stays the same object."""
        if self._criterion is None or self._criterion[0] is not config:
            self._criterion = (config, self.build_criterion(config))
        return self._criterion[1]

    def _one2many_layers(self, num_layers: int) -> set[int]:
        """The layers (0-based, ``num_layers - 1`` the final one) this call supervises one-to-many."""
        scheme = self.scheme
        layers = {layer for layer in range(num_layers) if scheme.supervision(layer, num_layers)[0].k > 1}
        if isinstance(scheme, HybridEpoch):
            k = scheme.supervision(num_layers - 1, num_layers)[0].k
            if not self._switch_logged and note_epoch_switch(scheme, self._last_k, k):
                self._switch_logged = True
            self._last_k = k
        return layers

    def _rt_detr_loss(
        self,
        logits: Tensor,
        labels: Sequence[Mapping[str, Tensor]],
        device: torch.device | str,
        pred_boxes: Tensor,
        config: Any,
        outputs_class: Tensor | None = None,
        outputs_coord: Tensor | None = None,
        **kwargs: Any,
    ) -> LossOutput:
        """RT-DETR / D-FINE: the model's own loss, one-to-many layers' terms from a call on K copies.

        Keys: the final layer ``loss_vfl``, decoder layer ``i`` ``loss_vfl_aux_{i}``, the encoder's
        proposals ``loss_vfl_aux_{L-1}`` (supervised as the final layer is), denoising
        ``loss_vfl_dn_{i}`` (always on the original labels). The weights are already applied
        by transformers' criterion; the loss is the sum of the dict, as transformers sums it.
        """
        num_layers = outputs_class.shape[1] if outputs_class is not None and outputs_class.ndim == 4 else 1
        one2many = self._one2many_layers(num_layers)
        own = self.original(logits, labels, device, pred_boxes, config, outputs_class, outputs_coord, **kwargs)
        if not one2many:
            return own  # type: ignore[no-any-return]
        _, own_dict, auxiliary_outputs = own
        repeated = _repeat_labels(labels, self.scheme.k)
        split = _without_denoising(kwargs.get("denoising_meta_values"))
        many_kwargs = dict(kwargs)
        if split is not None:
            # Drop the denoising queries (their losses need the original labels) and let the
            # loss function compute the normal queries' losses against the K copies.
            many_kwargs["denoising_meta_values"] = None
            for name in ("predicted_corners", "initial_reference_points"):
                if isinstance(kwargs.get(name), Tensor):
                    many_kwargs[name] = kwargs[name][:, :, split:]
            logits, pred_boxes = logits[:, split:], pred_boxes[:, split:]
            outputs_class = outputs_class[:, :, split:] if outputs_class is not None else None
            outputs_coord = outputs_coord[:, :, split:] if outputs_coord is not None else None
        _, many_dict, _ = self.original(
            logits, repeated, device, pred_boxes, config, outputs_class, outputs_coord, **many_kwargs
        )
        merged = {}
        for key, value in own_dict.items():
            if _RT_DETR_DENOISING.fullmatch(key):
                merged[key] = value
                continue
            match = _RT_DETR_LAYER.fullmatch(key)
            layer = num_layers - 1 if match is None else min(int(match[1]), num_layers - 1)
            merged[key] = many_dict[key] if layer in one2many else value
        loss = sum(merged.values())
        if not isinstance(loss, Tensor):
            loss = logits.sum() * 0.0
        return loss, merged, auxiliary_outputs

    def _mask2former_loss(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        auxiliary_predictions: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """Mask2Former: its own weighted loss dict, one-to-many layers' terms matched with capacity K.

        Keys: the final layer ``loss_mask``, ``loss_dice``, ``loss_cross_entropy``;
        ``auxiliary_predictions[i]``'s with the suffix ``_{i}``.
        """
        num_layers = len(auxiliary_predictions or []) + 1
        one2many = self._one2many_layers(num_layers)
        call = functools.partial(
            self.original, masks_queries_logits, class_queries_logits, auxiliary_predictions=auxiliary_predictions
        )
        if not one2many:
            return call(mask_labels, class_labels)  # type: ignore[no-any-return]
        own = call(mask_labels, class_labels) if len(one2many) < num_layers else {}
        k = self.scheme.k
        per_image = [{"class_labels": c, "masks": m} for c, m in zip(class_labels, mask_labels)]
        repeated = repeat_targets(per_image, k, per_object_keys=("masks",), require_boxes=False, label_key="class_labels")
        stand_in = _Mask2FormerMatcher(CopiesFromCapacity(self._mask_matcher(), k, "labels"))
        with override_matcher(self.model.criterion, stand_in):
            many = call([t["masks"] for t in repeated], [t["class_labels"] for t in repeated])
        merged = {}
        for key, value in many.items():
            match = _MASK2FORMER_LAYER.fullmatch(key)
            layer = num_layers - 1 if match is None else int(match[1])
            merged[key] = value if layer in one2many else own[key]
        return merged

    def _mask_matcher(self) -> OneToManyMatcher:
        """Mask2Former's matching cost from hybridmatch.costs, with capacity K."""
        config = self.model.config
        points = int(_setting(config, "train_num_points"))
        cost = CostSum(
            [
                (float(_setting(config, "class_weight")), SoftmaxClassCost()),
                (float(_setting(config, "mask_weight")), MaskBCECost(num_points=points)),
                (float(_setting(config, "dice_weight")), MaskDiceCost(num_points=points)),
            ]
        )
        return OneToManyMatcher(self.scheme.k, cost=cost, backend=self.backend, nan_policy=self.nan_policy)

    def _check_scheme(self, config: Any) -> None:
        if self.convention == "mask2former":
            auxiliary = bool(_setting(config, "use_auxiliary_loss"))
            if isinstance(self.scheme, HybridLayer) and self.scheme.num_one2many_layers > 0 and not auxiliary:
                raise ConfigurationError(
                    f"HybridLayer supervises the decoder layers' own predictions, but "
                    f"{type(config).__name__}.use_auxiliary_loss is False, so the model computes none; set "
                    "model.config.use_auxiliary_loss = True before training"
                )
            return
        auxiliary = bool(_setting(config, "auxiliary_loss"))
        if isinstance(self.scheme, HybridLayer) and self.scheme.num_one2many_layers > 0:
            if not auxiliary:
                raise ConfigurationError(
                    f"HybridLayer supervises the decoder layers' own predictions, but "
                    f"{type(config).__name__}.auxiliary_loss is False, so the model computes none; set "
                    "model.config.auxiliary_loss = True before training"
                )
            num_layers = getattr(config, "decoder_layers", None)
            if isinstance(num_layers, int):
                try:
                    self.scheme.supervision(num_layers - 1, num_layers)
                except ConfigurationError as error:
                    raise ConfigurationError(f"{error} (model.config.decoder_layers = {num_layers})") from None


class _HuggingFaceMatcher(torch.nn.Module):
    """A hybridmatch matcher speaking transformers' keys (``logits``, ``class_labels``).

    It stands in for transformers' matcher inside transformers' criterion, which calls
    ``matcher(outputs, targets)`` and expects DETR's ``(pred_idx, tgt_idx)`` pairs.
    """

    def __init__(self, matcher: HungarianMatcher) -> None:
        super().__init__()
        self.matcher = matcher

    @property
    def capacity(self) -> int:
        """Queries per target (read by :class:`~hybridmatch.criterion.HybridCriterion`)."""
        return self.matcher.capacity

    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Matches:
        renamed_targets = self._targets(targets)
        try:
            return self.matcher(self._outputs(outputs), renamed_targets)
        except InvalidTargetError as error:  # name transformers' key, not hybridmatch's
            raise InvalidTargetError(str(error).replace("['labels']", "['class_labels']")) from None

    def hybridmatch_view(self) -> MatcherView:
        """The wrapped matcher with this renaming: :class:`~hybridmatch.HybridCriterion` matches a
        call's decoder layers at once through it."""
        return MatcherView(self.matcher, self._outputs, self._targets)

    @staticmethod
    def _outputs(outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"pred_logits": outputs["logits"], "pred_boxes": outputs["pred_boxes"]}

    @staticmethod
    def _targets(targets: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
        for index, target in enumerate(targets):
            if "class_labels" not in target or "boxes" not in target:
                raise InvalidTargetError(
                    f"labels[{index}] has keys {sorted(target)}; transformers' detection models need "
                    "'class_labels' (Tensor[M] int64) and 'boxes' (Tensor[M, 4], cxcywh normalised)"
                )
        return [{"labels": t["class_labels"], "boxes": t["boxes"]} for t in targets]


class _Mask2FormerMatcher(torch.nn.Module):
    """Speaks Mask2Former's matcher call, ``matcher(masks, classes, mask_labels, class_labels)``."""

    def __init__(self, matcher: CopiesFromCapacity) -> None:
        super().__init__()
        self.matcher = matcher

    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
    ) -> Matches:
        outputs = {"pred_logits": class_queries_logits, "pred_masks": masks_queries_logits}
        targets = [{"labels": labels, "masks": masks} for labels, masks in zip(class_labels, mask_labels)]
        return self.matcher(outputs, targets)  # type: ignore[no-any-return]


def _repeat_labels(labels: Sequence[Mapping[str, Tensor]], k: int) -> list[dict[str, Any]]:
    """transformers' detection labels with ``class_labels`` and ``boxes`` tiled K times (GT-major)."""
    return repeat_targets(labels, k, per_object_keys=(), label_key="class_labels")


def _without_denoising(meta: Any) -> int | None:
    """The number of leading denoising queries (``dn_num_split[0]``), or None without denoising."""
    if not isinstance(meta, Mapping) or "dn_num_split" not in meta:
        return None
    return int(meta["dn_num_split"][0])


def _setting(config: Any, name: str) -> Any:
    if not hasattr(config, name):
        raise ConfigurationError(
            f"{type(config).__name__} has no {name!r}, which hybridmatch reads as transformers' DETR loss "
            f"does; set model.config.{name} (supported models: {_SUPPORTED})"
        )
    return getattr(config, name)


def _check_weight_dict(weight_dict: Mapping[str, float] | None) -> dict[str, float]:
    if weight_dict is None:
        return {}
    if not isinstance(weight_dict, Mapping):
        raise TypeError(f"weight_dict must be a mapping of loss name to weight, got {type(weight_dict).__name__}")
    checked = {}
    for key, value in weight_dict.items():
        if key not in _LOSS_KEYS:
            raise ConfigurationError(
                f"weight_dict[{key!r}]: unknown loss; the weights are {list(_LOSS_KEYS)} (the per-layer "
                "copies loss_ce_0, ... follow them)"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigurationError(f"weight_dict[{key!r}] must be a finite number, got {value!r}")
        checked[key] = float(value)
    return checked
