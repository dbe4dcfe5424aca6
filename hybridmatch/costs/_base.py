"""The cost interface: :class:`Cost`, :class:`CostSum`, and the helpers costs use to read inputs."""

from __future__ import annotations

import abc
import numbers
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import ConfigurationError, InvalidPredictionError, InvalidTargetError
from ..targets import PaddedTargets
from ..validation import check_real

__all__ = ["TargetBatch", "Cost", "CostSum"]

#: Work that the costs of one call share (a point sample, a sigmoid): see :meth:`Cost.compute`.
Shared = MutableMapping[Any, Any]


@runtime_checkable
class TargetBatch(Protocol):
    """A padded batch of targets, such as :class:`hybridmatch.targets.PaddedTargets`.

    Costs read a target key ``key`` as ``targets[key]`` from a mapping or a
    :class:`~hybridmatch.targets.PaddedTargets`, and as the attribute ``targets.key`` from any
    other object, so a small dataclass with ``labels`` and ``boxes`` works too. Every tensor
    starts with ``(B, M)``; ``valid`` (``Tensor[B, M]`` bool), where present, marks the real
    targets (all are real without it).

    Attributes:
        labels (Tensor[B, M] int64): classes; padded columns hold any value.
        boxes (Tensor[B, M, 4]): boxes, ``cxcywh`` normalised.

    Example:
        >>> from dataclasses import dataclass
        >>> from hybridmatch import L1BoxCost
        >>> @dataclass
        ... class MyTargets:             # any object with the keys as attributes
        ...     labels: torch.Tensor
        ...     boxes: torch.Tensor
        >>> targets = MyTargets(torch.tensor([[0]]), torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]))
        >>> L1BoxCost()({"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}, targets)
        tensor([[[0.]]])
    """

    @property
    def labels(self) -> Tensor: ...

    @property
    def boxes(self) -> Tensor: ...


class Cost(abc.ABC):
    """A pairwise matching cost: ``cost(outputs, targets) -> Tensor[B, N, M]`` float32.

    ``outputs`` maps names to prediction tensors ``(B, N, ...)``; ``targets`` is a padded
    batch (:class:`TargetBatch`) whose tensors start with ``(B, M)``. Lower is better.

    A cost *declares* what it reads: :attr:`output_keys` and :attr:`target_keys`. A
    :class:`~hybridmatch.matchers.Matcher` pads exactly the declared target keys, so any
    per-object tensor (``keypoints``, ``masks``, ``area``, ...) reaches the cost that
    names it. Calling a cost runs :meth:`check` (metadata, and for class costs the label
    range) and then :meth:`compute`.

    Multiply by a number for a weighted cost and add costs to sum them; both give a
    :class:`CostSum`, whose terms share one ``shared`` dict per call.

    A cost of one's own needs its keys and :meth:`compute`::

        class CenterDistanceCost(Cost):
            output_keys = ("pred_boxes",)
            target_keys = ("boxes",)

            def compute(self, outputs, targets, shared):
                pred = outputs["pred_boxes"][..., :2].float()           # (B, N, 2)
                target = targets["boxes"][..., :2].float()              # (B, M, 2)
                return torch.cdist(pred, target)                        # (B, N, M)

    Example:
        >>> from hybridmatch import Cost
        >>> class WidthCost(Cost):
        ...     output_keys, target_keys = ("pred_boxes",), ("boxes",)
        ...     def compute(self, outputs, targets, shared):
        ...         return (outputs["pred_boxes"][..., 2, None] - targets["boxes"][..., None, :, 2]).abs()
        >>> WidthCost()({"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])},
        ...             {"boxes": torch.tensor([[[0.5, 0.5, 0.5, 0.2], [0.1, 0.1, 0.2, 0.2]]])})
        tensor([[[0.3000, 0.0000]]])
    """

    #: The ``outputs`` entries this cost reads.
    output_keys: tuple[str, ...] = ()
    #: The target keys this cost reads (padded by the matcher).
    target_keys: tuple[str, ...] = ()
    #: True when image ``b``'s rows of the result depend only on image ``b``'s outputs and
    #: targets and no random number is drawn: then stacking several decoder layers into
    #: one batch gives each layer the cost it gets alone, and
    #: :meth:`~hybridmatch.matchers.Matcher.match_layers` computes them in one call. False
    #: (the safe default for a cost of one's own) makes it call the cost layer by layer.
    images_independent: bool = False

    def __call__(
        self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared | None = None
    ) -> Tensor:
        """Check the inputs, then return :meth:`compute`'s ``Tensor[B, N, M]``."""
        self.check(outputs, targets)
        return self.compute(outputs, targets, {} if shared is None else shared)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        """Raise if an input this cost reads is missing or malformed.

        The default checks that every declared key is present. Overrides add shape, dtype
        and value checks (the class costs check the label range) and call ``super()``.
        """
        for key in self.output_keys:
            read_output(outputs, key, self)
        for key in self.target_keys:
            read_target(targets, key, self)

    @abc.abstractmethod
    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        """Return the cost matrix, ``Tensor[B, N, M]`` float32.

        Args:
            outputs: the model outputs.
            targets: the padded targets.
            shared: a dict that lives for one call of a :class:`CostSum` (or of this cost):
                work that several terms need (mask costs' point sample) is stored here under
                a key that says what it is, and reused by the next term.
        """

    def compute_layers(self, layers: Sequence[Mapping[str, Tensor]], targets: Any) -> Tensor | None:
        """The cost of several layers' outputs against the same targets, or None.

        A cost with a faster way to compute L output dicts of one shape than one by one
        returns ``Tensor[L * B, N, M]`` (image ``l * B + b`` is layer ``l``'s image ``b``),
        equal to ``torch.cat([self.compute(layer, targets, {}) for layer in layers])``;
        inputs are checked by the caller (:meth:`check` on one layer). The default
        returns None: :meth:`~hybridmatch.matchers.Matcher.match_layers` then concatenates
        the layers and calls the cost once. :class:`CostSum` computes class + L1 + GIoU
        sums on the CPU in one native pass over every layer.
        """
        return None

    def __mul__(self, weight: float) -> CostSum:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            return NotImplemented
        return CostSum([(weight, self)])

    def __rmul__(self, weight: float) -> CostSum:
        return self.__mul__(weight)

    def __add__(self, other: Cost) -> CostSum:
        if not isinstance(other, Cost):
            return NotImplemented
        return CostSum([(1.0, self), (1.0, other)])

    def __radd__(self, other: int) -> CostSum:
        # Lets sum() start from 0: sum(weight * cost for ...).
        if isinstance(other, numbers.Real) and not isinstance(other, bool) and other == 0:
            return CostSum([(1.0, self)])
        return NotImplemented


class CostSum(Cost):
    """A weighted sum of costs: ``sum(weight * cost(outputs, targets))``.

    Nested sums are flattened, so ``2 * (a + b) + c`` has the terms
    ``[(2, a), (2, b), (1, c)]``. Its keys are the union of its terms' keys, and one
    ``shared`` dict serves all terms of a call.

    Args:
        terms (Sequence[tuple[float, Cost]]): at least one ``(weight, cost)`` pair;
            each weight a finite real number (negative and zero allowed).

    Raises:
        ConfigurationError: a weight is not a finite real number, or ``terms`` is empty.
        TypeError: a term is not a :class:`Cost`.

    Example:
        >>> from hybridmatch import CostSum, GIoUCost, L1BoxCost
        >>> cost = 5 * L1BoxCost() + 2 * GIoUCost()
        >>> isinstance(cost, CostSum), [weight for weight, _ in cost.terms]
        (True, [5.0, 2.0])
        >>> outputs = {"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}
        >>> cost(outputs, {"boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])})   # 5 * 0 + 2 * (-1)
        tensor([[[-2.]]])
    """

    def __init__(self, terms: Sequence[tuple[float, Cost]]) -> None:
        flat: list[tuple[float, Cost]] = []
        for weight, cost in terms:
            weight = check_real(weight, "cost weight", where="CostSum", hint="negative and zero weights are allowed")
            if isinstance(cost, CostSum):
                flat.extend((weight * inner_weight, inner) for inner_weight, inner in cost.terms)
            elif isinstance(cost, Cost):
                flat.append((weight, cost))
            else:
                raise TypeError(
                    f"CostSum terms must be (weight, Cost) pairs, got a {type(cost).__name__} "
                    f"as cost"
                )
        if not flat:
            raise ConfigurationError("CostSum needs at least one (weight, cost) term, got none")
        self.terms: tuple[tuple[float, Cost], ...] = tuple(flat)
        self.output_keys = _union(cost.output_keys for _, cost in flat)
        self.target_keys = _union(cost.target_keys for _, cost in flat)
        self.images_independent = all(cost.images_independent for _, cost in flat)

    def check(self, outputs: Mapping[str, Tensor], targets: Any) -> None:
        for _, cost in self.terms:
            cost.check(outputs, targets)

    def compute(self, outputs: Mapping[str, Tensor], targets: Any, shared: Shared) -> Tensor:
        # Class + L1 + GIoU sums (detr_cost) on CPU tensors: one native pass (costs/_fused.py).
        from ._fused import fused_cost

        fused = fused_cost(self.terms, outputs, targets)
        if fused is not None:
            return fused
        (first_weight, first_cost), *rest = self.terms
        total = first_weight * first_cost.compute(outputs, targets, shared)
        for weight, cost in rest:
            total = total + weight * cost.compute(outputs, targets, shared)
        return total

    def compute_layers(self, layers: Sequence[Mapping[str, Tensor]], targets: Any) -> Tensor | None:
        from ._fused import fused_cost

        return fused_cost(self.terms, layers, targets)

    def __repr__(self) -> str:
        return f"CostSum({' + '.join(f'{weight!r}*{cost!r}' for weight, cost in self.terms)})"


# --------------------------------------------------------------------------------------------
# Helpers for the cost modules.


def read_output(outputs: Mapping[str, Tensor], key: str, cost: Cost) -> Tensor:
    """``outputs[key]`` as a tensor, or an error naming the cost, the key and the keys present."""
    if not isinstance(outputs, Mapping):
        raise InvalidPredictionError(
            f"{type(cost).__name__} reads outputs[{key!r}]: outputs must be a dict of tensors, got "
            f"{type(outputs).__name__}"
        )
    try:
        value = outputs[key]
    except KeyError:
        raise InvalidPredictionError(
            f"{type(cost).__name__} reads outputs[{key!r}], which is missing; keys present: "
            f"{list(outputs)}. Pass key=... to read another entry"
        ) from None
    if not isinstance(value, Tensor):
        raise InvalidPredictionError(
            f"{type(cost).__name__} reads outputs[{key!r}], which must be a Tensor, got "
            f"{type(value).__name__}"
        )
    return value


def read_target(targets: Any, key: str, cost: Cost) -> Tensor:
    """The padded target tensor ``key``, or an error naming the cost and the fix."""
    try:
        if isinstance(targets, (Mapping, PaddedTargets)):
            value = targets[key]
        else:
            value = getattr(targets, key)
    except (KeyError, AttributeError):
        raise InvalidTargetError(
            f"{type(cost).__name__} reads targets.{key} (the {key!r} entry of every target dict), "
            f"but the {type(targets).__name__} passed has none; give each image's dict a {key!r} "
            f"tensor with one row per object, or point the cost at another key"
        ) from None
    if value is None:
        raise InvalidTargetError(
            f"{type(cost).__name__} reads targets.{key}, but the targets have no {key!r}; give "
            f"each image's dict a {key!r} tensor with one row per object"
        )
    return value  # type: ignore[no-any-return]


def valid_mask(targets: Any, like: Tensor) -> Tensor:
    """``targets.valid`` (B, M) bool, or all True when the targets carry no mask."""
    if isinstance(targets, Mapping):
        valid = targets.get("valid")
    else:
        valid = getattr(targets, "valid", None)
    if valid is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return valid.to(like.device)  # type: ignore[no-any-return]


def shape_of(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def key_repr(key: str, default: str, name: str = "key") -> str:
    return "" if key == default else f"{name}={key!r}"


def _union(groups: Any) -> tuple[str, ...]:
    keys: dict[str, None] = {}
    for group in groups:
        keys.update(dict.fromkeys(group))
    return tuple(keys)
