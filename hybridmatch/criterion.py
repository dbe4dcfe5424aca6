"""Wrap an existing DETR-style criterion with a hybrid-matching scheme.

:class:`HybridCriterion` takes any callable ``criterion(outputs, targets) -> dict``
of the DETR convention and a scheme from :mod:`hybridmatch.schemes`, and returns
one loss dict:

- hybrid branch: the one-to-one losses on the original targets, plus the
  one-to-many group's losses on the targets repeated K times, suffixed
  ``_one2many`` and scaled by the weight; the one-to-many group comes either as
  H-DETR's ``pred_logits_one2many`` / ``pred_boxes_one2many`` /
  ``aux_outputs_one2many`` keys or as a query dimension concatenated
  ``[one-to-one | one-to-many]``;
- hybrid epoch: all queries matched against repeated targets in the first
  epochs, one-to-one afterwards, under the usual loss names;
- hybrid layer: the first decoder layers (``aux_outputs[i]``) matched against
  repeated targets, the later ones and the final output one-to-one.

The loss keys are always those the wrapped criterion returns on the same outputs,
plus, for the hybrid branch, a ``_one2many`` copy of each key of the one-to-many
group. In evaluation (``.eval()``), or when the outputs hold only the one-to-one
queries, the wrapper returns the wrapped criterion's losses on the one-to-one
queries, as DETR's ``evaluate()`` expects.

:func:`hybrid_weight_dict` extends a DETR ``weight_dict`` with the ``_one2many``
keys and :func:`weighted_loss` sums the weighted losses, skipping the logging keys
(``class_error``, ``cardinality_error``) that DETR criteria return next to them.

The wrapped criterion keeps doing what it did: its matcher, its losses, its
``num_boxes`` (which counts the repeated targets in one-to-many calls, as in
H-DETR).
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ._warnings import warn_once
from .errors import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError
from .matchers._one2many import (
    CopiesFromCapacity,
    capacity_of,
    one2many_matcher_for,
    override_matcher,
    precompute_layers,
)
from .schemes import ONE2MANY_SUFFIX, HybridBranch, HybridEpoch, HybridLayer, Scheme, Supervision
from .targets import repeat_targets

__all__ = ["HybridCriterion", "KeyMap", "hybrid_weight_dict", "weighted_loss"]

Criterion = Callable[..., Mapping[str, Tensor]]
Matches = list[tuple[Tensor, Tensor]]

_logger = logging.getLogger(__name__)

# DETR's logging keys: returned next to the losses, never weighted.
_LOGGING_PREFIXES = ("class_error", "cardinality_error")


@dataclass(frozen=True)
class KeyMap:
    """Names of the entries a criterion convention uses.

    Attributes:
        logits (str): per-query class logits, ``(B, N, C)``.
        aux_outputs (str): list of per-layer output dicts of the earlier decoder layers.
        enc_outputs (str): two-stage encoder proposals (never given to a one-to-many group
            whose losses are added next to the one-to-one ones).
        labels (str): the target dicts' class labels, ``(M,)``.
        one2many_suffix (str): suffix of H-DETR's one-to-many output keys
            (``pred_logits_one2many``, ``aux_outputs_one2many``, ...).
        layer_key (str): how the criterion names an earlier layer's loss, with the
            placeholders ``{key}`` (the final layer's name, ``loss_ce``) and ``{layer}``
            (its index in ``aux_outputs``): DETR's ``"{key}_{layer}"`` (``loss_ce_0``), or
            e.g. ``"aux{layer}/{key}"``. :class:`~hybridmatch.schemes.HybridLayer` reads it
            to give each layer's losses the model's layer index.

    Example:
        >>> KeyMap.huggingface().logits, KeyMap.huggingface().labels
        ('logits', 'class_labels')
        >>> KeyMap(layer_key="aux{layer}/{key}").layer_name("loss_bbox", 2)
        'aux2/loss_bbox'
    """

    logits: str = "pred_logits"
    aux_outputs: str = "aux_outputs"
    enc_outputs: str = "enc_outputs"
    labels: str = "labels"
    one2many_suffix: str = "_one2many"
    layer_key: str = "{key}_{layer}"

    def __post_init__(self) -> None:
        fields = ("logits", "aux_outputs", "enc_outputs", "labels", "one2many_suffix", "layer_key")
        for name in fields:
            value = getattr(self, name)
            if not isinstance(value, str) or (not value and name != "one2many_suffix"):
                raise ConfigurationError(f"KeyMap: {name} must be a non-empty str, got {value!r}")
        layer_key = self.layer_key
        if layer_key.count("{key}") != 1 or layer_key.count("{layer}") != 1:
            raise ConfigurationError(
                f"KeyMap: layer_key must hold '{{key}}' and '{{layer}}' once each (DETR: '{{key}}_{{layer}}'), "
                f"got {layer_key!r}"
            )
        pattern = re.escape(layer_key).replace(re.escape("{key}"), "(?P<key>.+)")
        pattern = pattern.replace(re.escape("{layer}"), r"(?P<layer>\d+)")
        object.__setattr__(self, "_layer_pattern", re.compile(pattern))

    def layer_name(self, key: str, layer: int) -> str:
        """The loss name of ``key`` at earlier layer ``layer`` (``aux_outputs[layer]``)."""
        return self.layer_key.replace("{key}", key).replace("{layer}", str(layer))

    def split_layer_name(self, name: str) -> tuple[str, int] | None:
        """``(key, layer)`` of a per-layer loss name, or None for another name."""
        match = self._layer_pattern.fullmatch(name)  # type: ignore[attr-defined]
        return None if match is None else (match["key"], int(match["layer"]))

    @classmethod
    def huggingface(cls) -> KeyMap:
        """Hugging Face transformers: ``logits``, ``auxiliary_outputs``, ``class_labels``."""
        return cls(logits="logits", aux_outputs="auxiliary_outputs", labels="class_labels")


class HybridCriterion(torch.nn.Module):
    """Hybrid matching around an existing criterion.

    Args:
        criterion: ``criterion(outputs, targets, **kwargs) -> dict[str, Tensor]`` of the DETR
            convention (``pred_logits``, ``pred_boxes``, ``aux_outputs`` (losses suffixed
            ``_{i}``), ``enc_outputs``); it matches and normalises by ``num_boxes`` itself.
        scheme (Scheme): :class:`~hybridmatch.schemes.HybridBranch`,
            :class:`~hybridmatch.schemes.HybridEpoch` or :class:`~hybridmatch.schemes.HybridLayer`.
        key_map (KeyMap): the names of the entries; :meth:`KeyMap.huggingface` for
            Hugging Face models.
        one2many_matcher: optional; ``None`` (default) matches the K copies of the targets
            with ``criterion.matcher`` itself. Otherwise a matcher that takes the *original*
            targets and lets each object take up to K queries; during one-to-many calls it
            stands in for ``criterion.matcher``, so the K copies are never matched
            explicitly, and its pairs are spread over the copies, so the losses are those of
            matching the copies. ``"derive"`` builds it from ``criterion.matcher`` when that
            is a hybridmatch matcher (same cost, backend and NaN policy, capacity K). A
            matcher given here must use the costs of ``criterion.matcher``: for a hybridmatch
            matcher the costs are compared term by term; for another one (DETR's) its
            ``cost_class`` / ``cost_bbox`` / ``cost_giou`` weights, and the class cost
            (softmax when the criterion has DETR's ``eos_coef``, focal when it has
            ``focal_alpha``), are compared where they can be read. Its capacity must be the
            scheme's ``k``. Mismatches raise :class:`~hybridmatch.errors.ConfigurationError`
            here, at construction.
        per_object_keys: target keys to replicate; ``None`` replicates every per-object key
            (``boxes``, ``masks``, ``keypoints``, ``area``, ...).

    Loss keys are the wrapped criterion's keys on the same outputs; the hybrid branch adds a
    ``_one2many`` copy of each key of its one-to-many call. The hybrid layer scheme calls
    the criterion once on the one-to-many layers, passed as ``aux_outputs`` so that the
    criterion names them itself (the last of them is also passed as the final output, and
    those final-output losses are dropped), and once on the one-to-one layers; the layer
    indices are shifted back to the model's (``loss_ce_{i}``).

    In evaluation (``self.training`` is False), or when the outputs hold only the
    one-to-one group of a :class:`~hybridmatch.schemes.HybridBranch`
    (``num_one2one`` queries, no ``*_one2many`` keys), the wrapped criterion is called
    once on the one-to-one queries and its losses are returned as they are.

    In the one-to-many phase of a :class:`~hybridmatch.schemes.HybridEpoch` the wrapped
    criterion's ``num_boxes`` counts the K copies (``K * M``), as in H-DETR: terms summed
    over matched pairs keep their scale, but terms summed over every query (the "no
    object" part of the classification loss) are divided by about K compared with the
    one-to-one phase, so the logged loss jumps at the switch. The wrapper logs this once
    (``logging``, WARNING) when it sees the switch.

    Example:
        >>> from hybridmatch.schemes import HybridBranch
        >>> def criterion(outputs, targets):  # any DETR-convention criterion
        ...     n = sum(len(t["labels"]) for t in targets)
        ...     return {"loss_bbox": outputs["pred_boxes"].sum() * 0 + n}
        >>> hybrid = HybridCriterion(criterion, HybridBranch(num_one2one=2, num_one2many=3, k=2))
        >>> outputs = {"pred_logits": torch.zeros(1, 5, 4), "pred_boxes": torch.rand(1, 5, 4)}
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.rand(1, 4)}]
        >>> {k: float(v) for k, v in hybrid(outputs, targets).items()}
        {'loss_bbox': 1.0, 'loss_bbox_one2many': 2.0}
        >>> {k: float(v) for k, v in hybrid.eval()(outputs, targets).items()}  # one-to-one only
        {'loss_bbox': 1.0}
    """

    def __init__(
        self,
        criterion: Criterion,
        scheme: Scheme,
        *,
        key_map: KeyMap | None = None,
        one2many_matcher: Callable[..., Matches] | Literal["derive"] | None = None,
        per_object_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not callable(criterion):
            raise TypeError(f"criterion must be callable (outputs, targets) -> dict, got {type(criterion).__name__}")
        if not isinstance(scheme, Scheme):
            raise TypeError(
                f"scheme must be a hybridmatch.schemes.Scheme (HybridBranch, HybridEpoch, HybridLayer), "
                f"got {type(scheme).__name__}"
            )
        if one2many_matcher is not None:
            k = getattr(scheme, "k", None)
            one2many_matcher = one2many_matcher_for(criterion, k, repr(scheme), one2many_matcher)
        if key_map is not None and not isinstance(key_map, KeyMap):
            raise TypeError(f"key_map must be a hybridmatch.criterion.KeyMap, got {type(key_map).__name__}")
        self.criterion = criterion
        self.scheme = scheme
        self.key_map = key_map if key_map is not None else KeyMap()
        self.one2many_matcher = one2many_matcher
        self.per_object_keys = per_object_keys
        self._last_final_k: int | None = None
        self._switch_logged = False
        self._weight_dict: dict[str, float] | None = None
        self._epoch_parameter = _takes_epoch(criterion)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, key_map={self.key_map!r}"

    def get_extra_state(self) -> dict[str, Any]:
        """The scheme's state (its epoch and settings) for ``state_dict()``, under ``_extra_state``.

        So a checkpoint of the criterion resumes the scheme in its phase:
        ``load_state_dict`` restores the epoch (and checks the settings, see
        :meth:`~hybridmatch.schemes.Scheme.load_state_dict`).
        """
        return {"scheme": self.scheme.state_dict(), "last_k": self._last_final_k}

    def set_extra_state(self, state: Any) -> None:
        """Restore :meth:`get_extra_state`'s output (called by ``load_state_dict``)."""
        if not isinstance(state, Mapping) or "scheme" not in state:
            raise ConfigurationError(
                f"HybridCriterion.load_state_dict: '_extra_state' must be the dict HybridCriterion.state_dict() "
                f"saves (with the scheme's state), got {type(state).__name__}"
            )
        self.scheme.load_state_dict(state["scheme"])
        last_k = state.get("last_k")
        self._last_final_k = last_k if isinstance(last_k, int) and not isinstance(last_k, bool) else None

    # ------------------------------------------------------------------ weight dict

    @property
    def weight_dict(self) -> dict[str, float]:
        """The loss weights of every key this criterion returns, as DETR engines read them.

        By default :func:`hybrid_weight_dict` of the wrapped criterion's ``weight_dict``
        (read at each access): its keys plus, for a :class:`~hybridmatch.schemes.HybridBranch`,
        a ``_one2many`` copy of each with the same weight. DETR's logging keys
        (``class_error``, ``cardinality_error``) have no weight, as in DETR. So the lines
        DETR, Deformable-DETR and H-DETR's ``train_one_epoch`` and ``evaluate`` use run
        unchanged and weight every loss::

            loss_dict = criterion(outputs, targets)
            weight_dict = criterion.weight_dict
            losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict.keys() if k in weight_dict)

        Setting it replaces the dict (taken as given, not extended); a dict that lacks
        ``_one2many`` keys of the scheme is warned about at once, and a loss key the
        criterion returns without a weight is warned about once, by name, at the call
        that returns it (DETR's loss line would leave it out silently).

        Raises:
            AttributeError: the wrapped criterion has no ``weight_dict`` and none was set.

        Example:
            >>> from hybridmatch.schemes import HybridBranch
            >>> class SetCriterion:                     # a DETR criterion: weights, matcher, losses
            ...     weight_dict = {"loss_ce": 1.0, "loss_bbox": 5.0}
            ...     def __call__(self, outputs, targets):
            ...         return {"loss_ce": torch.tensor(1.0), "loss_bbox": torch.tensor(0.5)}
            >>> criterion = HybridCriterion(SetCriterion(), HybridBranch(2, 4, k=2))
            >>> criterion.weight_dict
            {'loss_ce': 1.0, 'loss_bbox': 5.0, 'loss_ce_one2many': 1.0, 'loss_bbox_one2many': 5.0}
        """
        if self._weight_dict is not None:
            return self._weight_dict
        base = getattr(self.criterion, "weight_dict", None)
        if not isinstance(base, Mapping):
            raise AttributeError(self._no_weight_dict())
        return hybrid_weight_dict(base, self.scheme)

    @weight_dict.setter
    def weight_dict(self, weight_dict: Mapping[str, float]) -> None:
        if not isinstance(weight_dict, Mapping):
            raise ConfigurationError(
                f"HybridCriterion.weight_dict must be a dict of loss name -> weight, got {type(weight_dict).__name__}"
            )
        missing = [key for key in hybrid_weight_dict(weight_dict, self.scheme) if key not in weight_dict]
        if missing:
            warn_once(
                f"criterion.weight_dict_set:{id(self)}:{','.join(missing)}",
                f"HybridCriterion.weight_dict was set to a dict without the one-to-many keys {missing} of "
                f"{self.scheme!r}: DETR's loss line would train one-to-one only. Leave it unset (it extends "
                f"the wrapped criterion's weight_dict) or set hybrid_weight_dict(weight_dict, scheme)",
            )
        self._weight_dict = dict(weight_dict)

    def _no_weight_dict(self) -> str:
        return (
            f"HybridCriterion.weight_dict: the wrapped {type(self.criterion).__name__} has no weight_dict "
            f"to extend; set criterion.weight_dict = hybrid_weight_dict(weights, scheme) with your loss weights"
        )

    def __getattr__(self, name: str) -> Any:
        if name == "weight_dict":  # the property raised: keep its message, not nn.Module's
            raise AttributeError(self._no_weight_dict())
        return super().__getattr__(name)

    def _check_weighted(self, losses: Mapping[str, Any]) -> None:
        """Warn once about loss keys the weight dict in use leaves out (DETR's loss line drops them)."""
        weights = self._weight_dict
        if weights is None:
            base = getattr(self.criterion, "weight_dict", None)
            if not isinstance(base, Mapping):
                return
            weights = hybrid_weight_dict(base, self.scheme)
        missing = [
            key for key in losses if key not in weights and not key.startswith(_LOGGING_PREFIXES)
        ]
        if missing:
            warn_once(
                f"criterion.unweighted:{id(self)}:{','.join(missing)}",
                f"HybridCriterion returned {missing}, which have no weight in criterion.weight_dict, so "
                f"DETR's loss line (sum of loss_dict[k] * weight_dict[k] for k in weight_dict) leaves them "
                f"out of the total; give them a weight (hybrid_weight_dict(weight_dict, scheme) adds the "
                f"_one2many keys)",
            )

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        *,
        epoch: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Tensor]:
        """Compute every loss of the scheme.

        Args:
            outputs: the model's outputs in the criterion's convention.
            targets: a list of B target dicts.
            epoch (int, optional): the epoch to supervise for; default ``scheme.epoch``.
            **kwargs: passed on to the criterion.

        Returns:
            The merged loss dict: the criterion's keys, one-to-many ones suffixed per the
            scheme and already multiplied by the group's weight. In evaluation, or for
            outputs of the one-to-one group only, the criterion's own dict.
        """
        keys = self.key_map
        if not isinstance(outputs, Mapping) or keys.logits not in outputs:
            present = list(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise InvalidPredictionError(
                f"outputs[{keys.logits!r}] is missing (got {present}); pass key_map= for another convention"
            )
        _check_targets_list(targets, keys.labels)
        logits = outputs[keys.logits]
        if isinstance(logits, Tensor) and logits.ndim >= 1 and logits.shape[0] != len(targets):
            raise InvalidTargetError(
                f"targets holds {len(targets)} dicts but outputs[{keys.logits!r}] has batch size "
                f"{logits.shape[0]} (shape {tuple(logits.shape)}); pass one target dict per image, in the "
                f"order of the batch"
            )
        aux = _aux_layers(outputs, keys.aux_outputs)
        counts = [self._count(target, index) for index, target in enumerate(targets)]

        if self._epoch_parameter and "epoch" not in kwargs:
            # The wrapped criterion takes the epoch too: hand it the one this call supervises for.
            kwargs["epoch"] = self.scheme.epoch if epoch is None else epoch

        one2one = self._one2one_only(outputs, aux)
        if one2one is not None:
            result = dict(_check_result(self.criterion(one2one, targets, **kwargs), "criterion"))
            self._check_weighted(result)
            return result

        self._check_query_counts(outputs, aux)
        num_layers = len(aux) + 1
        self.scheme.check_targets(max(counts, default=0), epoch)
        self._check_layers_found(outputs, aux, num_layers)
        plan: list[tuple[Supervision, list[int]]] = []
        for layer in range(num_layers):
            for group in self.scheme.supervision(layer, num_layers, epoch):
                for known, layers in plan:
                    if known == group:
                        layers.append(layer)
                        break
                else:
                    plan.append((group, [layer]))
        self._note_epoch_switch(num_layers, epoch)

        losses: dict[str, Tensor] = {}
        repeated: dict[int, list[dict[str, Any]]] = {}
        for group, layers in plan:
            group_outputs = self._group_outputs(outputs, group)
            if group.k > 1 and group.k not in repeated:
                repeated[group.k] = self._repeat(targets, group.k)
            group_targets = repeated[group.k] if group.k > 1 else targets
            for call_outputs, first, num_aux, keep_final in self._layer_calls(group_outputs, layers, num_layers):
                result = self._call(call_outputs, group_targets, group, **kwargs)
                for key, value in self._layer_losses(result, first, num_aux, keep_final).items():
                    name = f"{key}{group.suffix}"
                    value = value * group.weight if group.weight != 1.0 else value
                    losses[name] = losses[name] + value if name in losses else value
        self._check_weighted(losses)
        return losses

    def _check_layers_found(self, outputs: Mapping[str, Any], aux: list[Mapping[str, Any]], num_layers: int) -> None:
        """A layer scheme on outputs without earlier layers: point at the key they are under."""
        scheme = self.scheme
        if not isinstance(scheme, HybridLayer) or scheme.num_one2many_layers < num_layers:
            return
        others = [
            key
            for key, value in outputs.items()
            if key != self.key_map.aux_outputs
            and isinstance(value, (list, tuple))
            and len(value) > 0
            and all(isinstance(layer, Mapping) for layer in value)
        ]
        where = (
            f"; outputs{others} holds a list of per-layer dicts: if those are the earlier layers, pass "
            f"key_map=KeyMap(aux_outputs={others[0]!r})"
            if others
            else f" (outputs has no {self.key_map.aux_outputs!r}: does the model return its earlier layers?)"
        )
        raise ConfigurationError(
            f"HybridLayer: num_one2many_layers={scheme.num_one2many_layers} must be < num_layers={num_layers}, "
            f"the decoder layers found in the outputs (the final one plus {len(aux)} in "
            f"outputs[{self.key_map.aux_outputs!r}]){where}"
        )

    def _layer_losses(
        self, result: Mapping[str, Tensor], first: int, num_aux: int, keep_final: bool
    ) -> dict[str, Tensor]:
        """A call's losses under the model's layer indices (see ``HybridCriterion._layer_calls``)."""
        if first == 0 and keep_final:
            return dict(result)
        keys = self.key_map
        out = {}
        found = False
        for key, value in result.items():
            split = keys.split_layer_name(key)
            if split is not None and split[1] < num_aux:
                out[keys.layer_name(split[0], split[1] + first)] = value
                found = True
            elif keep_final:
                out[key] = value
        if num_aux > 0 and not found:
            raise ConfigurationError(
                f"HybridCriterion: the criterion was given {num_aux} earlier layer(s) in "
                f"outputs[{keys.aux_outputs!r}] but none of its loss keys {list(result)} names a layer as "
                f"{keys.layer_key!r}, so those layers' losses would be lost; pass "
                f"key_map=KeyMap(layer_key=...) with the criterion's naming, e.g. 'aux{{layer}}/{{key}}' "
                f"for 'aux0/loss_bbox'"
            )
        return out

    # ------------------------------------------------------------------ helpers

    def _count(self, target: Mapping[str, Any], index: int) -> int:
        if not isinstance(target, Mapping) or self.key_map.labels not in target:
            raise InvalidTargetError(
                f"targets[{index}] has no {self.key_map.labels!r} entry; pass "
                "key_map=KeyMap(labels=...) for another convention"
            )
        return len(target[self.key_map.labels])

    def _one2one_only(self, outputs: Mapping[str, Any], aux: list[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The outputs to hand to the plain criterion, or None when the scheme applies.

        In evaluation: the one-to-one queries (the outputs themselves for schemes of one
        group). In training: the outputs themselves when they hold only a hybrid branch's
        one-to-one group (said once, since a model that forgot its one-to-many queries
        would otherwise train one-to-one unnoticed).
        """
        keys = self.key_map
        scheme = self.scheme
        if not isinstance(scheme, HybridBranch):
            return None if self.training else dict(outputs)
        suffix = keys.one2many_suffix
        if f"{keys.logits}{suffix}" in outputs:
            if self.training:
                return None
            one2one = {key: value for key, value in outputs.items() if not key.endswith(suffix)}
            where = f"outputs[{keys.logits!r}]"
            _expect_queries(one2one, keys.logits, where, scheme.num_one2one, "num_one2one")
            return one2one
        stray = [key for key in outputs if key.endswith(suffix)]
        if stray:
            raise InvalidPredictionError(
                f"outputs has {stray} but no '{keys.logits}{suffix}'; H-DETR's layout needs the "
                f"one-to-many group's logits too (or pass both groups concatenated in '{keys.logits}')"
            )
        total = _query_count(outputs, keys.logits, f"outputs[{keys.logits!r}]")
        if total == scheme.num_queries():
            if self.training:
                return None
            group = Supervision(scheme.one2one_queries, 1, 1.0, False, "")
            return self._group_outputs(outputs, group)
        if total != scheme.num_one2one:
            mode = "training" if self.training else "evaluation"
            raise ShapeError(
                f"outputs[{keys.logits!r}] has {total} queries but {scheme!r} expects "
                f"num_one2one={scheme.num_one2one} (the one-to-one group, as at inference) or "
                f"num_one2one + num_one2many={scheme.num_queries()} (both groups concatenated "
                f"[one-to-one | one-to-many]) in {mode}; or pass H-DETR's "
                f"'{keys.logits}{suffix}' entries for the one-to-many group"
            )
        for index, layer in enumerate(aux):
            got = _query_count(layer, keys.logits, f"{keys.aux_outputs}[{index}][{keys.logits!r}]")
            if got != total:
                raise ShapeError(
                    f"outputs[{keys.aux_outputs!r}][{index}][{keys.logits!r}] has {got} queries but "
                    f"outputs[{keys.logits!r}] has {total}; every decoder layer must output the same queries"
                )
        if self.training:
            warn_once(
                f"criterion.one2one_only_in_training:{id(self)}",
                f"HybridCriterion: the outputs hold only the {total} one-to-one queries of {scheme!r} "
                f"while it is in training mode, so only the wrapped criterion's one-to-one losses are "
                f"computed; pass the {scheme.num_queries()} concatenated queries (or H-DETR's "
                f"'{keys.logits}{suffix}' entries) in training, and call .eval() on the criterion "
                f"for evaluation",
            )
        return dict(outputs)

    def _check_query_counts(self, outputs: Mapping[str, Any], aux: list[Mapping[str, Any]]) -> None:
        """Every layer of every group has the query count the scheme expects."""
        keys = self.key_map
        suffix = keys.one2many_suffix
        aux_key = keys.aux_outputs
        logits_name = f"{keys.logits}{suffix}"
        scheme = self.scheme
        if logits_name in outputs and isinstance(scheme, HybridBranch):  # H-DETR's layout
            aux_name = f"{aux_key}{suffix}"
            aux_many = _aux_layers(outputs, aux_name)
            if len(aux_many) != len(aux):
                raise ShapeError(
                    f"outputs[{aux_name!r}] has {len(aux_many)} layers but outputs[{aux_key!r}] has "
                    f"{len(aux)}; the one-to-many group needs one entry per decoder layer, as the "
                    f"one-to-one group (missing layers would go unsupervised)"
                )
            _expect_queries(outputs, keys.logits, f"outputs[{keys.logits!r}]", scheme.num_one2one, "num_one2one")
            _expect_queries(outputs, logits_name, f"outputs[{logits_name!r}]", scheme.num_one2many, "num_one2many")
            for index, (one, many) in enumerate(zip(aux, aux_many)):
                where = f"outputs[{aux_key!r}][{index}][{keys.logits!r}]"
                _expect_queries(one, keys.logits, where, scheme.num_one2one, "num_one2one")
                where = f"outputs[{aux_name!r}][{index}][{keys.logits!r}]"
                _expect_queries(many, keys.logits, where, scheme.num_one2many, "num_one2many")
            return
        expected = scheme.num_queries()
        total = _query_count(outputs, keys.logits, f"outputs[{keys.logits!r}]")
        if expected is not None and total != expected:
            raise ShapeError(
                f"outputs[{keys.logits!r}] has {total} queries but {scheme!r} expects {expected}; "
                "pass the concatenated [one-to-one | one-to-many] queries in training, or H-DETR's "
                f"'{logits_name}' entries"
            )
        for index, layer in enumerate(aux):
            where = f"outputs[{aux_key!r}][{index}][{keys.logits!r}]"
            got = _query_count(layer, keys.logits, where)
            if got != total:
                raise ShapeError(
                    f"{where} has {got} queries but outputs[{keys.logits!r}] has {total} "
                    f"(expected {total} in every decoder layer); check how the model builds "
                    f"{aux_key!r}"
                )

    def _note_epoch_switch(self, num_layers: int, epoch: int | None) -> None:
        """Log once when a hybrid epoch scheme turns one-to-one (the loss scale changes)."""
        if not isinstance(self.scheme, HybridEpoch):
            return
        k = self.scheme.supervision(num_layers - 1, num_layers, epoch)[0].k
        if not self._switch_logged and note_epoch_switch(self.scheme, self._last_final_k, k):
            self._switch_logged = True
        self._last_final_k = k

    def _group_outputs(self, outputs: Mapping[str, Any], group: Supervision) -> dict[str, Any]:
        """The outputs a group is supervised on, in the criterion's own layout."""
        keys = self.key_map
        suffix = keys.one2many_suffix
        added = bool(group.suffix)  # losses added next to the one-to-one ones
        if f"{keys.logits}{suffix}" in outputs:  # H-DETR's layout: separate *_one2many entries
            if group.one2many and added:
                return {key[: -len(suffix)]: value for key, value in outputs.items() if key.endswith(suffix)}
            return {key: value for key, value in outputs.items() if not key.endswith(suffix)}
        total = outputs[keys.logits].shape[1]
        queries = group.queries
        if queries == slice(None) or range(total)[queries] == range(total):
            selected = dict(outputs)
        else:
            selected = {}
            for key, value in outputs.items():
                if key == keys.aux_outputs:
                    selected[key] = [_slice_queries(layer, queries, total) for layer in value]
                elif isinstance(value, Tensor) and value.ndim >= 2 and value.shape[1] == total:
                    selected[key] = value[:, queries]
                elif not added:
                    selected[key] = value
        if added:
            selected.pop(keys.enc_outputs, None)  # H-DETR's one-to-many branch has no encoder loss
        return selected

    def _layer_calls(
        self, outputs: dict[str, Any], layers: list[int], num_layers: int
    ) -> list[tuple[dict[str, Any], int, int, bool]]:
        """The criterion calls that supervise ``layers``: ``(outputs, first, num_aux, keep_final)``.

        One call per run of consecutive layers ``first .. last``. The run's earlier layers
        are passed as ``aux_outputs`` so that the criterion names their losses as it always
        does (``_{j}``, shifted to ``_{first + j}`` afterwards). A run that ends at the
        final output passes the final output (and the encoder's) as they are; a run that
        ends earlier passes its last layer both as the final output, whose losses are
        dropped (``keep_final`` False), and as the last ``aux_outputs`` entry.
        """
        aux_key = self.key_map.aux_outputs
        final_layer = num_layers - 1
        aux = outputs.get(aux_key) or []
        if len(layers) == num_layers:
            return [(outputs, 0, len(aux), True)]
        runs: list[list[int]] = []
        for layer in sorted(layers):
            if runs and runs[-1][-1] == layer - 1:
                runs[-1].append(layer)
            else:
                runs.append([layer])
        calls = []
        for run in runs:
            first, last = run[0], run[-1]
            if last == final_layer:
                call = {key: value for key, value in outputs.items() if key != aux_key}
                if first < final_layer:
                    call[aux_key] = list(aux[first:final_layer])
                calls.append((call, first, final_layer - first, True))
            else:
                call = {**aux[last], aux_key: list(aux[first : last + 1])}
                calls.append((call, first, last + 1 - first, False))
        return calls

    def _repeat(self, targets: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, Any]]:
        # Boxes are repeated when the targets have them; keypoints- or masks-only targets need none.
        return repeat_targets(
            targets, k, per_object_keys=self.per_object_keys, label_key=self.key_map.labels, require_boxes=False
        )

    def _call(
        self, outputs: dict[str, Any], targets: Sequence[Mapping[str, Any]], group: Supervision, **kwargs: Any
    ) -> Mapping[str, Tensor]:
        """One call of the criterion, its matcher standing in as the group needs.

        Where the matcher is a hybridmatch matcher, the call's decoder layers are matched
        up front in one batched call (:class:`~hybridmatch.matchers._one2many.PrecomputedMatches`),
        and the criterion's per-layer calls are answered from it.
        """
        layers = self._decoder_layers(outputs)
        if group.k == 1 or self.one2many_matcher is None:
            matcher = getattr(self.criterion, "matcher", None)
            stand_in = precompute_layers(matcher, matcher, layers, targets) if _settable_matcher(self.criterion) else None
            if stand_in is None:
                return _check_result(self.criterion(outputs, targets, **kwargs), "criterion")
        else:
            capacity = capacity_of(self.one2many_matcher)
            if capacity is not None and capacity != group.k:
                raise ConfigurationError(
                    f"one2many_matcher lets a target take {capacity} queries but {self.scheme!r} repeats the "
                    f"targets K={group.k} times; build it with OneToManyMatcher(k={group.k})"
                )
            copies = CopiesFromCapacity(self.one2many_matcher, group.k, self.key_map.labels)
            stand_in = precompute_layers(self.one2many_matcher, copies, layers, targets, copies) or copies
        with override_matcher(self.criterion, stand_in):
            return _check_result(self.criterion(outputs, targets, **kwargs), "criterion")

    def _decoder_layers(self, outputs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The final output and the earlier layers of a call (not the encoder's proposals)."""
        aux = outputs.get(self.key_map.aux_outputs)
        earlier = [layer for layer in aux if isinstance(layer, Mapping)] if isinstance(aux, (list, tuple)) else []
        return [outputs, *earlier]


def note_epoch_switch(scheme: Scheme, last_k: int | None, k: int) -> bool:
    """Log (WARNING) that ``scheme`` switched from one-to-many (``last_k``) to one-to-one (``k``).

    Returns whether it logged: only when ``last_k > 1`` and ``k == 1``. Shared by the
    criterion wrapper and the transformers adapter, which each log it once.
    """
    if last_k is None or last_k <= 1 or k != 1:
        return False
    _logger.warning(
        "HybridCriterion: %r switched from one-to-many (K=%d) to one-to-one matching. "
        "In the one-to-many epochs the criterion's num_boxes counted the K copies of each "
        "object, so losses summed over every query (the 'no object' part of the "
        "classification loss) were divided by about K=%d more than now: expect the loss "
        "to jump at this epoch; this is H-DETR's normalisation, not a divergence.",
        scheme,
        last_k,
        last_k,
    )
    return True


def hybrid_weight_dict(weight_dict: Mapping[str, float], scheme: Scheme) -> dict[str, float]:
    """The loss weights for :class:`HybridCriterion`'s keys under ``scheme``.

    For a :class:`~hybridmatch.schemes.HybridBranch` every key ``k`` gains a key
    ``k + "_one2many"`` with the *same* weight, as H-DETR builds its ``weight_dict``:
    the wrapper has already multiplied the one-to-many losses by the scheme's weight
    (``lambda``), so the weight dict must not do it again. Keys that already end in
    ``_one2many`` are kept as they are. The hybrid epoch and layer schemes return the
    criterion's own keys, so their weight dict is a copy of ``weight_dict``.

    Args:
        weight_dict (Mapping[str, float]): the DETR weight dict (``loss_ce``, ``loss_bbox``,
            ``loss_giou``, their ``_{i}`` and ``_enc`` copies, ...).
        scheme (Scheme): the scheme the criterion is wrapped with.

    Returns:
        dict[str, float]: a new dict; ``weight_dict`` is left as it is.

    Example:
        >>> from hybridmatch.schemes import HybridBranch
        >>> hybrid_weight_dict({"loss_ce": 2.0, "loss_bbox": 5.0}, HybridBranch(weight=0.5))
        {'loss_ce': 2.0, 'loss_bbox': 5.0, 'loss_ce_one2many': 2.0, 'loss_bbox_one2many': 5.0}
    """
    if not isinstance(weight_dict, Mapping):
        raise ConfigurationError(
            f"hybrid_weight_dict: weight_dict must be a dict of loss name -> weight, got "
            f"{type(weight_dict).__name__}"
        )
    if not isinstance(scheme, Scheme):
        raise TypeError(
            f"hybrid_weight_dict: scheme must be a hybridmatch.schemes.Scheme, got {type(scheme).__name__}"
        )
    out = dict(weight_dict)
    if isinstance(scheme, HybridBranch):
        for key, value in weight_dict.items():
            if not key.endswith(ONE2MANY_SUFFIX):
                out.setdefault(f"{key}{ONE2MANY_SUFFIX}", value)
    return out


def weighted_loss(losses: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """``sum(weight_dict[key] * losses[key])`` over the loss keys that have a weight.

    DETR criteria return logging keys (``class_error``, ``cardinality_error``, their
    ``_{i}`` and ``_one2many`` copies) next to the losses; they have no weight and are
    skipped, as DETR's training loop does. Weights of keys absent from ``losses`` are
    ignored (an evaluation call returns fewer keys). A key starting with ``loss`` that has
    no weight is skipped too, but warned about once: it usually means the weight dict
    lacks the one-to-many keys (see :func:`hybrid_weight_dict`).

    Args:
        losses (Mapping[str, Tensor]): a criterion's loss dict, scalar tensors.
        weight_dict (Mapping[str, float]): loss name -> weight.

    Returns:
        Tensor: the scalar total.

    Raises:
        ConfigurationError: no key of ``losses`` has a weight, or a weight used is not a finite
            number (NaN, inf, a string).

    Example:
        >>> losses = {"loss_ce": torch.tensor(1.0), "class_error": torch.tensor(50.0)}
        >>> weighted_loss(losses, {"loss_ce": 2.0})
        tensor(2.)
    """
    if not isinstance(losses, Mapping) or not isinstance(weight_dict, Mapping):
        raise ConfigurationError(
            f"weighted_loss: losses and weight_dict must be dicts, got {type(losses).__name__} and "
            f"{type(weight_dict).__name__}"
        )
    total: Tensor | None = None
    unweighted = []
    for key, value in losses.items():
        if key in weight_dict:
            weight = weight_dict[key]
            if isinstance(weight, Tensor) and weight.numel() == 1:
                weight = float(weight)  # a one-element weight reads like a number
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ConfigurationError(
                    f"weighted_loss: weight_dict[{key!r}] is {weight!r}; a loss weight must be a finite "
                    f"number (NaN or inf would make the total NaN or inf); fix the weight dict"
                )
            term = weight * value
            total = term if total is None else total + term
        elif key.startswith("loss"):
            unweighted.append(key)
    if unweighted:
        warn_once(
            f"criterion.weighted_loss:{','.join(unweighted)}",
            f"weighted_loss: {unweighted} have no weight in weight_dict and are left out of the "
            f"total; add them (hybrid_weight_dict(weight_dict, scheme) adds the _one2many keys)",
        )
    if total is None:
        raise ConfigurationError(
            f"weighted_loss: none of the keys {list(losses)} has a weight in weight_dict "
            f"(keys {list(weight_dict)}); pass the weight dict of this criterion"
        )
    return total


# --------------------------------------------------------------------- private helpers


def _settable_matcher(criterion: object) -> bool:
    """Whether ``criterion.matcher`` exists and can be replaced for a call (set to itself to find out)."""
    if not hasattr(criterion, "matcher"):
        return False
    try:
        criterion.matcher = criterion.matcher  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return False
    return True


def _check_targets_list(targets: object, label_key: str) -> None:
    if isinstance(targets, Mapping):
        raise InvalidTargetError(
            f"targets must be a list of per-image dicts (one per image, each with {label_key!r}, "
            f"'boxes', ...), got a single dict with keys {list(targets)}; for one image pass [targets]"
        )
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        raise InvalidTargetError(
            f"targets must be a list of per-image dicts (one per image, each with {label_key!r}, "
            f"'boxes', ...), got a {type(targets).__name__}"
        )


def _aux_layers(outputs: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    aux = outputs.get(key)
    if aux is None:
        return []
    if isinstance(aux, Mapping) or not isinstance(aux, (list, tuple)):
        raise InvalidPredictionError(
            f"outputs[{key!r}] must be a list of per-layer dicts (one per earlier decoder layer, "
            f"each like the outputs: logits, boxes, ...), got a {type(aux).__name__}"
        )
    for index, layer in enumerate(aux):
        if not isinstance(layer, Mapping):
            raise InvalidPredictionError(
                f"outputs[{key!r}][{index}] must be a dict of that decoder layer's outputs "
                f"(logits, boxes, ...), got a {type(layer).__name__}"
            )
    return list(aux)


def _query_count(layer: Mapping[str, Any], key: str, where: str) -> int:
    value = layer.get(key)
    if not isinstance(value, Tensor) or value.ndim < 2:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise InvalidPredictionError(
            f"{where} must be a tensor (B, N, C) of per-query logits, got {got}; every decoder "
            f"layer's dict needs its logits"
        )
    return int(value.shape[1])


def _expect_queries(layer: Mapping[str, Any], key: str, where: str, expected: int, name: str) -> None:
    got = _query_count(layer, key, where)
    if got != expected:
        raise ShapeError(
            f"{where} has {got} queries but the scheme's {name} is {expected}; build the model's "
            f"query groups with the scheme's sizes"
        )


def _check_result(result: object, name: str) -> Mapping[str, Tensor]:
    if not isinstance(result, Mapping):
        raise ConfigurationError(
            f"{name} returned a {type(result).__name__}, expected a dict of loss name -> Tensor (the "
            f"DETR convention); if it returns (losses, extras), as H-DETR's timing criterion does, "
            f"wrap it: lambda outputs, targets: criterion(outputs, targets)[0]"
        )
    for key, value in result.items():
        if not isinstance(value, Tensor) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigurationError(
                f"{name} returned {key!r}: a {type(value).__name__}, but every value must be a loss Tensor "
                f"(the DETR convention: a flat dict of loss name -> Tensor); flatten nested dicts into "
                f"their own keys (e.g. '{key}/<name>')"
            )
    return result


def _takes_epoch(criterion: object) -> bool:
    """Whether calling ``criterion`` takes an ``epoch`` argument by name."""
    call = criterion.forward if isinstance(criterion, torch.nn.Module) else criterion
    try:
        parameters = inspect.signature(call).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("epoch")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _slice_queries(layer: Mapping[str, Any], queries: slice, total: int) -> dict[str, Any]:
    return {
        key: value[:, queries] if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[1] == total else value
        for key, value in layer.items()
    }
