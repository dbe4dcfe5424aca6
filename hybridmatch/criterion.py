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

The wrapped criterion keeps doing what it did: its matcher, its losses, its
``num_boxes`` (which counts the repeated targets in one-to-many calls, as in
H-DETR).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigurationError, InvalidPredictionError, InvalidTargetError, ShapeError
from .matchers import assignment_to_repeated
from .schemes import Scheme, Supervision
from .targets import PER_IMAGE_KEYS, repeat_targets

__all__ = ["HybridCriterion", "KeyMap"]

Criterion = Callable[..., Mapping[str, Tensor]]
Matches = list[tuple[Tensor, Tensor]]


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

    Example:
        >>> KeyMap.huggingface().logits, KeyMap.huggingface().labels
        ('logits', 'class_labels')
    """

    logits: str = "pred_logits"
    aux_outputs: str = "aux_outputs"
    enc_outputs: str = "enc_outputs"
    labels: str = "labels"
    one2many_suffix: str = "_one2many"

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
        one2many_matcher: optional. A matcher that takes the *original* targets and lets each
            object take up to K queries (e.g. ``OneToManyMatcher(k)`` or
            ``HungarianMatcher(capacity=k)``). During one-to-many calls it stands in for
            ``criterion.matcher``, so the K copies are never matched explicitly; its pairs are
            spread over the copies, so the losses are those of matching the copies.
        per_object_keys: target keys to replicate; ``None`` replicates every per-object key
            (``boxes``, ``masks``, ``keypoints``, ``area``, ...).

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
    """

    def __init__(
        self,
        criterion: Criterion,
        scheme: Scheme,
        *,
        key_map: KeyMap | None = None,
        one2many_matcher: Callable[..., Matches] | None = None,
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
        if one2many_matcher is not None and not hasattr(criterion, "matcher"):
            raise TypeError(
                "one2many_matcher replaces criterion.matcher during one-to-many calls, but the "
                f"{type(criterion).__name__} passed has no 'matcher' attribute"
            )
        self.criterion = criterion
        self.scheme = scheme
        self.key_map = key_map if key_map is not None else KeyMap()
        self.one2many_matcher = one2many_matcher
        self.per_object_keys = per_object_keys

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, key_map={self.key_map!r}"

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
            targets: B target dicts.
            epoch (int, optional): the epoch to supervise for; default ``scheme.epoch``.
            **kwargs: passed on to the criterion.

        Returns:
            The merged loss dict: the criterion's keys, one-to-many ones suffixed per the
            scheme and already multiplied by the group's weight.
        """
        keys = self.key_map
        if not isinstance(outputs, Mapping) or keys.logits not in outputs:
            present = list(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise InvalidPredictionError(
                f"outputs[{keys.logits!r}] is missing (got {present}); pass key_map= for another convention"
            )
        aux = outputs.get(keys.aux_outputs) or []
        num_layers = len(aux) + 1
        counts = [self._count(target, index) for index, target in enumerate(targets)]
        self.scheme.check_targets(max(counts, default=0), epoch)

        plan: list[tuple[Supervision, list[int]]] = []
        for layer in range(num_layers):
            for group in self.scheme.supervision(layer, num_layers, epoch):
                for known, layers in plan:
                    if known == group:
                        layers.append(layer)
                        break
                else:
                    plan.append((group, [layer]))

        losses: dict[str, Tensor] = {}
        repeated: dict[int, list[dict[str, Any]]] = {}
        for group, layers in plan:
            group_outputs = self._group_outputs(outputs, group)
            if group.k > 1 and group.k not in repeated:
                repeated[group.k] = self._repeat(targets, group.k)
            group_targets = repeated[group.k] if group.k > 1 else targets
            for layer_outputs, layer_suffix in self._layer_calls(group_outputs, layers, num_layers):
                result = self._call(layer_outputs, group_targets, group, **kwargs)
                for key, value in result.items():
                    name = f"{key}{layer_suffix}{group.suffix}"
                    value = value * group.weight if group.weight != 1.0 else value
                    losses[name] = losses[name] + value if name in losses else value
        return losses

    # ------------------------------------------------------------------ helpers

    def _count(self, target: Mapping[str, Any], index: int) -> int:
        if not isinstance(target, Mapping) or self.key_map.labels not in target:
            raise InvalidTargetError(
                f"targets[{index}] has no {self.key_map.labels!r} entry; pass "
                "key_map=KeyMap(labels=...) for another convention"
            )
        return len(target[self.key_map.labels])

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
        expected = self.scheme.num_queries()
        if expected is not None and total != expected:
            raise ShapeError(
                f"outputs[{keys.logits!r}] has {total} queries but {self.scheme!r} expects {expected}; "
                "pass the concatenated [one-to-one | one-to-many] queries in training, or H-DETR's "
                f"'{keys.logits}{suffix}' entries"
            )
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
    ) -> list[tuple[dict[str, Any], str]]:
        """One criterion call for all layers, or one per layer when the group has only some."""
        if len(layers) == num_layers:
            return [(outputs, "")]
        aux_key = self.key_map.aux_outputs
        calls = []
        for layer in layers:
            if layer == num_layers - 1:
                final = {key: value for key, value in outputs.items() if key != aux_key}
                calls.append((final, ""))
            else:
                calls.append((dict(outputs[aux_key][layer]), f"_{layer}"))
        return calls

    def _repeat(self, targets: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, Any]]:
        label_key = self.key_map.labels
        if label_key == "labels":
            return repeat_targets(targets, k, per_object_keys=self.per_object_keys)
        renamed = [{("labels" if key == label_key else key): value for key, value in t.items()} for t in targets]
        out = repeat_targets(renamed, k, per_object_keys=self.per_object_keys)
        return [{(label_key if key == "labels" else key): value for key, value in t.items()} for t in out]

    def _call(
        self, outputs: dict[str, Any], targets: Sequence[Mapping[str, Any]], group: Supervision, **kwargs: Any
    ) -> Mapping[str, Tensor]:
        if group.k == 1 or self.one2many_matcher is None:
            return self.criterion(outputs, targets, **kwargs)
        capacity = getattr(self.one2many_matcher, "capacity", group.k)
        if capacity != group.k:
            raise ConfigurationError(
                f"one2many_matcher lets a target take {capacity} queries but {self.scheme!r} repeats the "
                f"targets K={group.k} times; build it with OneToManyMatcher(k={group.k})"
            )
        original = self.criterion.matcher  # type: ignore[attr-defined]
        self.criterion.matcher = _CopiesFromCapacity(  # type: ignore[attr-defined]
            self.one2many_matcher, group.k, self.key_map.labels
        )
        try:
            return self.criterion(outputs, targets, **kwargs)
        finally:
            self.criterion.matcher = original  # type: ignore[attr-defined]


def _slice_queries(layer: Mapping[str, Any], queries: slice, total: int) -> dict[str, Any]:
    return {
        key: value[:, queries] if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[1] == total else value
        for key, value in layer.items()
    }


def _spread_over_copies(pred_idx: Tensor, tgt_idx: Tensor, num_targets: int) -> Tensor:
    """Indices into the GT-major repeated targets for one image's pairs (distinct copies)."""
    if pred_idx.numel() == 0:
        return tgt_idx.clone()
    row = torch.full((1, int(pred_idx.max()) + 1), -1, dtype=torch.int64, device=pred_idx.device)
    row[0, pred_idx] = tgt_idx.long()
    return assignment_to_repeated(row, [num_targets])[0, pred_idx]


class _CopiesFromCapacity(torch.nn.Module):
    """Stands in for a criterion's matcher in one-to-many calls.

    It receives the repeated targets, matches the original objects with a capacity-K
    matcher, and hands back indices into the repeated targets. A module, so that it can
    replace a matcher that is a registered submodule of the criterion.
    """

    def __init__(self, matcher: Callable[..., Matches], k: int, label_key: str) -> None:
        super().__init__()
        self.matcher = matcher
        self.k = k
        self.label_key = label_key

    def forward(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], *args: Any, **kwargs: Any
    ) -> Matches:
        originals = []
        for target in targets:
            m = len(target[self.label_key]) // self.k
            originals.append(
                {
                    key: value[:m] if key not in PER_IMAGE_KEYS and _per_object(value, m * self.k) else value
                    for key, value in target.items()
                }
            )
        matches = self.matcher(outputs, originals, *args, **kwargs)
        out = []
        for (pred_idx, tgt_idx), target in zip(matches, originals):
            out.append((pred_idx, _spread_over_copies(pred_idx, tgt_idx, len(target[self.label_key]))))
        return out


def _per_object(value: Any, length: int) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == length
