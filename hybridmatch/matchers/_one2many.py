"""Matchers standing in for another criterion's matcher: one-to-many, and a call's layers at once.

:class:`~hybridmatch.criterion.HybridCriterion` can match the K copies of the targets
with a capacity-K matcher instead of the wrapped criterion's own matcher. This module
holds what that needs, next to the matchers it is about:

* :func:`one2many_matcher_for` checks a given matcher against the criterion's (its
  capacity, and its costs where they can be read: term by term for a hybridmatch
  matcher, DETR's ``cost_class`` / ``cost_bbox`` / ``cost_giou`` and class-cost kind for
  a foreign one) or derives it (``"derive"``);
* :class:`CopiesFromCapacity` adapts it to the criterion's call: it receives the repeated
  targets, matches the original objects and hands back indices into the copies;
* :class:`PrecomputedMatches` (built by :func:`precompute_layers`) answers the
  criterion's per-layer matcher calls of one call from a single
  :meth:`~hybridmatch.matchers.Matcher.match_layers` call made before it;
* :func:`override_matcher` installs such a stand-in as ``criterion.matcher`` for one call
  and restores the original afterwards, also on error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..costs import Cost, CostSum, FocalClassCost, GIoUCost, L1BoxCost, SoftmaxClassCost
from ..errors import ConfigurationError, HybridMatchError
from ..targets import PER_IMAGE_KEYS
from .assigners import Hungarian
from .matcher import Matcher, Matches, assignment_to_repeated
from .presets import OneToManyMatcher

MatcherLike = Callable[..., Matches]


def capacity_of(matcher: object) -> int | None:
    """The most queries one target can take from ``matcher``, where it can be read."""
    if isinstance(matcher, Matcher):
        return matcher.assigner.max_per_target
    for name in ("capacity", "k"):
        value = getattr(matcher, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def derive_one2many_matcher(matcher: Matcher, k: int) -> Matcher:
    """``matcher``'s cost with a capacity-K Hungarian assigner (its backend and NaN policy kept)."""
    assigner = matcher.assigner
    if not isinstance(assigner, Hungarian):
        raise ConfigurationError(
            f"one2many_matcher='derive' gives criterion.matcher's cost a capacity-K Hungarian assigner, "
            f"but criterion.matcher assigns with {assigner!r}; pass the one-to-many matcher yourself"
        )
    return OneToManyMatcher(k, cost=matcher.cost, backend=assigner.backend, nan_policy=assigner.nan_policy)


def one2many_matcher_for(criterion: Any, k: int | None, scheme: str, given: Any) -> MatcherLike:
    """The one-to-many matcher to use, derived from or checked against ``criterion.matcher``.

    Args:
        criterion: the wrapped criterion; it must have a ``matcher``.
        k: the scheme's K (None when the scheme has none).
        scheme: the scheme's repr, for messages.
        given: a matcher, or ``"derive"``.

    Raises:
        ConfigurationError: the capacity is not K, or the costs differ from the criterion's.
        TypeError: the criterion has no matcher, or ``given`` is not callable.
    """
    if not hasattr(criterion, "matcher"):
        raise TypeError(
            "one2many_matcher replaces criterion.matcher during one-to-many calls, but the "
            f"{type(criterion).__name__} passed has no 'matcher' attribute"
        )
    matcher = criterion.matcher
    ours = isinstance(matcher, Matcher)
    if isinstance(given, str):
        if given != "derive":
            raise ConfigurationError(f"one2many_matcher must be a matcher, 'derive' or None, got {given!r}")
        if not ours:
            raise ConfigurationError(
                f"one2many_matcher='derive' builds the matcher from criterion.matcher, but that is a "
                f"{_qualified(matcher)}, not a hybridmatch matcher (hybridmatch.HungarianMatcher and the "
                f"other hybridmatch.matchers.Matcher subclasses); pass "
                f"one2many_matcher=OneToManyMatcher(k={k}, cost_class=..., cost_bbox=..., cost_giou=..., "
                f"class_cost=...) with its costs (DETR's matcher: class_cost='softmax'; "
                f"Deformable-DETR's and H-DETR's: 'focal')"
            )
        if not isinstance(k, int):
            raise ConfigurationError(f"one2many_matcher='derive' needs a scheme with a k, got {scheme}")
        return derive_one2many_matcher(matcher, k)
    if not callable(given):
        raise TypeError(f"one2many_matcher must be callable (outputs, targets) -> matches, got {type(given).__name__}")
    capacity = capacity_of(given)
    if capacity is None:
        raise ConfigurationError(
            f"one2many_matcher {_qualified(given)} does not say how many queries a target may take "
            f"(no 'capacity' or 'k' attribute), so it cannot be checked against {scheme}'s K={k}; a "
            f"one-to-one matcher here (DETR's HungarianMatcher) would give wrong one-to-many losses. Pass "
            f"OneToManyMatcher(k={k}, ...) or one2many_matcher='derive', leave one2many_matcher unset (the "
            f"criterion's own matcher then matches the K copies), or, for a matcher of your own that lets "
            f"each target take K queries, give it the attribute capacity = {k}"
        )
    if isinstance(k, int) and capacity != k:
        raise ConfigurationError(
            f"one2many_matcher lets a target take {capacity} queries but {scheme} repeats the "
            f"targets K={k} times; build it with OneToManyMatcher(k={k}) or one2many_matcher='derive'"
        )
    cost = getattr(given, "cost", None)
    if not isinstance(cost, Cost):
        return given  # a matcher of its own kind: its costs cannot be read
    if ours:
        if cost_signature(cost) != cost_signature(matcher.cost):
            raise ConfigurationError(
                f"one2many_matcher's cost {cost!r} differs from criterion.matcher's {matcher.cost!r}; the "
                f"one-to-many losses would not be those of matching the copies. Use "
                f"one2many_matcher='derive' (the same cost, capacity K={k})"
            )
        return given
    check_foreign_costs(cost, matcher, criterion, k)
    return given


def cost_signature(cost: Cost) -> tuple[Any, ...]:
    """A comparable description of a cost: its weighted terms, zero weights left out."""
    terms = cost.terms if isinstance(cost, CostSum) else ((1.0, cost),)
    return tuple(sorted((float(weight), type(term).__name__, _settings(term)) for weight, term in terms if weight != 0))


def _settings(cost: Cost) -> tuple[tuple[str, str], ...]:
    """A cost's public settings (private state such as a random stream left out)."""
    return tuple(sorted((k, repr(v)) for k, v in vars(cost).items() if not k.startswith("_")))


def _qualified(obj: object) -> str:
    """``module.Class`` of an object, so that two classes of one name are told apart."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_foreign_costs(cost: Cost, matcher: Any, criterion: Any, k: object) -> None:
    """Compare a hybridmatch cost with a DETR-style matcher's readable weights."""
    terms = cost.terms if isinstance(cost, CostSum) else ((1.0, cost),)
    weights = {"cost_class": 0.0, "cost_bbox": 0.0, "cost_giou": 0.0}
    class_kinds = set()
    for weight, term in terms:
        if isinstance(term, (FocalClassCost, SoftmaxClassCost)):
            weights["cost_class"] += float(weight)
            class_kinds.add("focal" if isinstance(term, FocalClassCost) else "softmax")
        elif isinstance(term, L1BoxCost):
            weights["cost_bbox"] += float(weight)
        elif isinstance(term, GIoUCost):
            weights["cost_giou"] += float(weight)
        else:
            return  # another kind of cost: nothing comparable
    mismatched = []
    for name, ours in weights.items():
        theirs = getattr(matcher, name, None)
        if isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
            if not math.isclose(float(theirs), ours, rel_tol=1e-6, abs_tol=1e-9):
                mismatched.append(f"{name}={theirs!r} (one2many_matcher: {ours!r})")
    expected_kind = None
    if hasattr(criterion, "focal_alpha"):
        expected_kind = "focal"
    elif hasattr(criterion, "eos_coef") or hasattr(criterion, "empty_weight"):
        expected_kind = "softmax"
    if expected_kind is not None and class_kinds and class_kinds != {expected_kind}:
        mismatched.append(
            f"class cost {expected_kind} (the criterion has "
            f"{'focal_alpha, as Deformable-DETR' if expected_kind == 'focal' else 'eos_coef, as DETR'}'s; "
            f"one2many_matcher: "
            f"{'/'.join(sorted(class_kinds))})"
        )
    if mismatched:
        kind = (
            f"class_cost={expected_kind!r}"
            if expected_kind
            else "class_cost='softmax' (DETR) or 'focal' (Deformable-DETR, H-DETR)"
        )
        read = {name: getattr(matcher, name) for name in weights if hasattr(matcher, name)}
        args = "".join(f"{name}={value!r}, " for name, value in read.items())
        raise ConfigurationError(
            f"one2many_matcher's costs differ from criterion.matcher ({type(matcher).__name__}): "
            f"{'; '.join(mismatched)}. The one-to-many losses would silently change; build it as "
            f"OneToManyMatcher(k={k}, {args}{kind})"
        )


def spread_over_copies(pred_idx: Tensor, tgt_idx: Tensor, num_targets: int) -> Tensor:
    """Indices into the GT-major repeated targets for one image's pairs (distinct copies)."""
    if pred_idx.numel() == 0:
        return tgt_idx.clone()
    row = torch.full((1, int(pred_idx.max()) + 1), -1, dtype=torch.int64, device=pred_idx.device)
    row[0, pred_idx] = tgt_idx.long()
    return assignment_to_repeated(row, [num_targets])[0, pred_idx]


class CopiesFromCapacity(torch.nn.Module):
    """Stands in for a criterion's matcher in one-to-many calls.

    It receives the repeated targets, matches the original objects with a capacity-K
    matcher, and hands back indices into the repeated targets. A module, so that it can
    replace a matcher that is a registered submodule of the criterion.
    """

    def __init__(self, matcher: MatcherLike, k: int, label_key: str) -> None:
        super().__init__()
        self.matcher = matcher
        self.k = k
        self.label_key = label_key

    def forward(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], *args: Any, **kwargs: Any
    ) -> Matches:
        originals = self.originals(targets)
        return self.spread(self.matcher(outputs, originals, *args, **kwargs), originals)

    def originals(self, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The original objects of K-times repeated targets (the first M of each image's K * M)."""
        originals = []
        for target in targets:
            m = len(target[self.label_key]) // self.k
            originals.append(
                {
                    key: value[:m] if key not in PER_IMAGE_KEYS and _per_object(value, m * self.k) else value
                    for key, value in target.items()
                }
            )
        return originals

    def spread(self, matches: Matches, originals: Sequence[Mapping[str, Any]]) -> Matches:
        """Matches of the original objects as indices into their K copies (distinct copies)."""
        return [
            (pred_idx, spread_over_copies(pred_idx, tgt_idx, len(target[self.label_key])))
            for (pred_idx, tgt_idx), target in zip(matches, originals)
        ]


class PrecomputedMatches(torch.nn.Module):
    """Stands in for a criterion's matcher during one criterion call, its layers matched up front.

    A DETR criterion calls its matcher once per decoder layer. Given the layers of a
    call, this matches them all at once (:meth:`~hybridmatch.matchers.Matcher.match_layers`:
    one cost computation and one solver call) and answers each of the criterion's calls
    from those results: a call whose outputs hold the very tensors of a layer (by
    identity, under the keys the cost reads) and whose targets are the very list given
    here, with nothing in either replaced or changed in place since (each tensor's
    identity and version counter are compared). Any other call (the encoder's binary
    targets, a sliced output, targets the criterion edited) goes to ``fallback``, the
    matcher that would have answered it.
    """

    def __init__(self, fallback: MatcherLike, view: MatcherView, layers: Sequence[Mapping[str, Any]],
                 targets: Sequence[Mapping[str, Any]], matches: Sequence[Matches]) -> None:
        super().__init__()
        self.fallback = fallback
        self.view = view
        self.targets = targets
        self.targets_state = _state_of_targets(targets)
        self.layers = list(layers)  # keeps the tensors alive, so that their ids stay theirs
        self.matches = {self.view.identity(layer): result for layer, result in zip(self.layers, matches)}

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], *args: Any,
                **kwargs: Any) -> Matches:
        if targets is self.targets and not args and not kwargs and _state_of_targets(targets) == self.targets_state:
            found = self.matches.get(self.view.identity(outputs))  # type: ignore[arg-type]
            if found is not None:
                return [(pred_idx.clone(), tgt_idx.clone()) for pred_idx, tgt_idx in found]
        return self.fallback(outputs, targets, *args, **kwargs)


class MatcherView:
    """A hybridmatch :class:`~hybridmatch.matchers.Matcher` as a criterion calls it.

    ``outputs`` and ``targets`` turn the criterion's outputs dict and target dicts into
    the matcher's (a matcher speaking other keys, such as transformers', renames them
    without copying a tensor); a matcher of that kind provides ``hybridmatch_view()``
    returning one of these.
    """

    def __init__(self, matcher: Matcher,
                 outputs: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                 targets: Callable[[Sequence[Mapping[str, Any]]], Sequence[Mapping[str, Any]]] | None = None) -> None:
        self.matcher = matcher
        self.outputs = outputs if outputs is not None else _unchanged
        self.targets = targets if targets is not None else _unchanged

    def identity(self, outputs: Mapping[str, Any]) -> tuple[tuple[int, int], ...] | None:
        """The tensors the cost reads, as (id, version) pairs; None if one is missing."""
        try:
            renamed = self.outputs(outputs) if isinstance(outputs, Mapping) else None
        except (KeyError, TypeError):
            return None
        values = [renamed.get(key) for key in self.matcher.cost.output_keys] if isinstance(renamed, Mapping) else [None]
        if any(not isinstance(value, Tensor) for value in values):
            return None
        return tuple((id(value), value._version) for value in values)


def _unchanged(value: Any) -> Any:
    return value


def _view_of(matcher: Any) -> MatcherView | None:
    if isinstance(matcher, Matcher):
        return MatcherView(matcher)
    make = getattr(matcher, "hybridmatch_view", None)
    view = make() if callable(make) else None
    return view if isinstance(view, MatcherView) else None


def _state_of_targets(targets: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """What a matcher reads of the targets, as identities: each dict's keys and tensors (with their versions)."""
    return tuple(
        tuple((key, id(value), value._version if isinstance(value, Tensor) else None) for key, value in target.items())
        for target in targets
    )


def precompute_layers(matcher: Any, fallback: MatcherLike, layers: Sequence[Mapping[str, Any]],
                      targets: Sequence[Mapping[str, Any]],
                      copies: CopiesFromCapacity | None = None) -> PrecomputedMatches | None:
    """A :class:`PrecomputedMatches` for ``layers``, or None where matching them at once does not apply.

    ``matcher`` matches the layers (``copies``: it matches the original objects of the
    repeated ``targets``, and the results are spread over the copies as ``copies`` does).
    It is a hybridmatch matcher, or a matcher that speaks other keys and provides
    ``hybridmatch_view()`` (a :class:`MatcherView`). None when it is neither, there is one
    layer, the layers cannot be stacked, or matching them fails (the criterion's own calls
    then raise).
    """
    view = _view_of(matcher)
    if view is None:
        return None
    if not isinstance(targets, Sequence) or not all(isinstance(target, Mapping) for target in targets):
        return None
    unique: dict[Any, Mapping[str, Any]] = {}
    for layer in layers:  # a layer passed twice (the last of a run of earlier layers) is matched once
        key = view.identity(layer)
        if key is None:
            return None  # the criterion's own calls name what is missing
        unique.setdefault(key, layer)
    layers = list(unique.values())
    if len(layers) < 2:
        return None
    inner = view.matcher
    try:
        wanted = copies.originals(targets) if copies is not None else targets
        renamed = [view.outputs(layer) for layer in layers]
        padded = inner.pad(renamed[0], view.targets(wanted))
        if not inner._stackable(renamed, padded.batch_size):
            return None
        matches = inner.match_layers(renamed, padded)
    except (HybridMatchError, KeyError, TypeError):
        return None
    if copies is not None:
        matches = [copies.spread(result, wanted) for result in matches]
    return PrecomputedMatches(fallback, view, layers, targets, matches)


@contextlib.contextmanager
def override_matcher(criterion: Any, matcher: MatcherLike) -> Iterator[None]:
    """Make ``criterion.matcher`` be ``matcher`` inside the ``with`` block, restored on exit.

    The wrapped criterion calls ``self.matcher`` itself, so this is the one place a
    one-to-many matcher can reach it without the criterion knowing.
    """
    original = criterion.matcher
    criterion.matcher = matcher
    try:
        yield
    finally:
        criterion.matcher = original


def _per_object(value: Any, length: int) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == length
