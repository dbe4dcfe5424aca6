"""Argument checks, written once for every layer of hybridmatch.

Every public function and class checks its input once, at its own boundary, with the
helpers of this module; internal calls pass checked values on and do not check again.
A message names the argument, what it got, what it needs and the fix; where the value
came from a dict the user passed, the name says so (``targets[1]['area'][3]``,
``outputs['pred_keypoints'][0, 5]``): the ``Arg`` that names an input is the one
place that context is added.

Users need one thing from here, the type of the ``nan_policy=`` argument of the solvers,
assigners and matchers: :data:`NanPolicy` (its values: :data:`NAN_POLICIES`).

The helpers (imported by the library's modules; their behaviour is part of the library's
error contract, their signatures are not public API):

* settings: ``check_int``, ``check_real`` (finite reals, ranges, probabilities via
  ``check_probability``), ``check_bool``, ``check_choice``,
  ``check_nan_policy``, ``check_reals`` (a sequence of reals, e.g. OKS sigmas);
* tensors' metadata: ``check_tensor`` (type, ndim, last dimension, dtype kind, a device
  that holds data), ``check_same_batch`` and ``check_same_device`` (two tensors);
* tensors' values, one device sync for all of a call's scans: ``check_values`` with
  ``ValueCheck`` and ``Arg``; non-finite values made visible without a sync:
  ``nan_where_nonfinite`` (the costs' NaN rows and columns);
* context: ``with_context`` (the solver entry point's "[cost ..., backend ...]") and
  ``context`` (a constructor that passes its settings to another names itself).

Checks that belong to one owner stay with it, because they encode that owner's domain
(a layout, a format, a state) rather than an argument's type or range; they call the
helpers above for the generic parts. All of them:

* ``solvers._validate``: ``check_dtype``, ``as_scipy_matrix`` (scipy's dtype rules and
  ``TypeError`` family), ``check_num_targets``, ``check_large_integers``, ``sanitise``
  (NaN and infinities), ``raise_infeasible``;
* ``targets``: ``_validate_core`` (the list-of-dicts format), ``_resolve_per_object_keys``,
  ``_check_one_device``, ``_check_copies`` (``k``, through ``check_int``);
* ``boxes``: ``_check_pairwise``;
* ``attention``: ``check_attention_mask`` (public), ``_check_size`` (a query count,
  through ``check_int``), ``_check_groups``, ``_check_denoising_sees``, ``_check_bool``,
  ``_check_mask_tensor``, ``_check_valid``;
* ``costs``: ``read_output`` / ``read_target`` (the declared keys), ``check_label_range``,
  ``_check_class_inputs``, ``_check_focal_settings``, ``_check_box_inputs``,
  ``_check_keypoints``, ``_check_area``, ``_check_target_values``, ``_sigmas``,
  ``_check_masks``, ``_check_not_empty``, ``_check_points``, ``_check_sampled``,
  ``_check_sampled_targets``;
* ``matchers.matcher``: ``_check_outputs`` (the outputs' common B and N), ``_device_of``;
* ``schemes``: ``_check_optional_queries``, ``_check_epoch``, ``_check_layer`` and the
  state checks of ``load_state_dict``;
* ``criterion``: ``_check_query_counts``, ``_check_targets_list``, ``_check_result``,
  ``_check_foreign_costs``; ``integrations.transformers``: ``_check_scheme``,
  ``_check_weight_dict``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .errors import (
    ConfigurationError,
    HybridMatchError,
    InvalidPredictionError,
    InvalidTargetError,
    ShapeError,
)

__all__ = ["NanPolicy", "NAN_POLICIES"]

#: The policy for a NaN cost. ``"raise"`` raises an :class:`~hybridmatch.errors.InvalidCostError`
#: naming it, ``"worst"`` treats NaN as worse than any finite cost (warned once).
NanPolicy = Literal["raise", "worst"]
#: The values :data:`NanPolicy` allows.
NAN_POLICIES: tuple[str, ...] = ("raise", "worst")

ErrorType = type[HybridMatchError]


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _suffix(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _range_text(kind: str, minimum: object, maximum: object) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


# --------------------------------------------------------------------------------------------
# Settings: Python numbers, bools and names.


def check_int(
    value: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    where: str = "",
    hint: str = "",
    error: ErrorType = ConfigurationError,
) -> int:
    """``value`` as a Python int in ``[minimum, maximum]``; numpy integers are ints, bools are not.

    The message reads "``where``: ``name`` must be an int >= ``minimum``, got ..." followed
    by ``hint``; ``error`` is the class raised (a setting is a ConfigurationError, a size of
    a tensor layout a ShapeError, ...).
    """
    need = _range_text("an int", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{_prefix(where)}{name} must be {need}, got {value!r} ({type(value).__name__}){_suffix(hint)}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise error(f"{_prefix(where)}{name} must be {need}, got {number}{_suffix(hint)}")
    return number


def check_real(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    where: str = "",
    hint: str = "",
    error: ErrorType = ConfigurationError,
) -> float:
    """``value`` as a finite float in ``[minimum, maximum]``; numpy scalars are reals, bools are not."""
    need = _range_text("a finite real number", minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{_prefix(where)}{name} must be {need}, got {value!r} ({type(value).__name__}){_suffix(hint)}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum) or (
        maximum is not None and number > maximum
    ):
        raise error(f"{_prefix(where)}{name} must be {need}, got {value!r}{_suffix(hint)}")
    return number


def check_probability(
    value: object, name: str, *, where: str = "", hint: str = "", error: ErrorType = ConfigurationError
) -> float:
    """``value`` as a float in [0, 1] (a fraction, a threshold, a probability)."""
    return check_real(value, name, minimum=0, maximum=1, where=where, hint=hint, error=error)


def check_bool(value: object, name: str, *, where: str = "", error: ErrorType = ConfigurationError) -> bool:
    """``value`` as a bool; only ``True``/``False`` (Python or numpy) are accepted.

    A string such as ``"False"`` is truthy, so accepting any object would silently
    turn an option on; it raises instead.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{_prefix(where)}{name} must be a bool (True or False), got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(
    value: object,
    name: str,
    choices: Sequence[object],
    *,
    where: str = "",
    hint: str = "",
    error: ErrorType = ConfigurationError,
) -> object:
    """``value`` when it is one of ``choices``; else an error listing them."""
    if isinstance(value, bool) or not any(value == choice and type(value) is type(choice) for choice in choices):
        raise error(f"{_prefix(where)}unknown {name} {value!r}: {name} must be one of {list(choices)}{_suffix(hint)}")
    return value


def check_nan_policy(value: object, *, where: str = "") -> NanPolicy:
    """``value`` as a :data:`NanPolicy`."""
    return check_choice(value, "nan_policy", NAN_POLICIES, where=where)  # type: ignore[return-value]


def check_reals(
    values: object,
    name: str,
    *,
    length: int | None = None,
    minimum: float | None = None,
    positive: bool = False,
    where: str = "",
    hint: str = "",
    error: ErrorType = ConfigurationError,
) -> tuple[float, ...]:
    """A sequence (or 1-D tensor / array) of finite reals as a tuple of floats.

    ``positive`` requires every value > 0; ``length`` the number of values. A string is not
    a sequence of numbers here.
    """
    need = "finite real numbers" + (" > 0" if positive else "" if minimum is None else f" >= {minimum}")
    if isinstance(values, (Tensor, np.ndarray)):
        if values.ndim > 1 or values.dtype == torch.bool or values.dtype == np.bool_:
            raise error(f"{_prefix(where)}{name} must be a 1-D sequence of {need}, got {_describe(values)}{_suffix(hint)}")
        items: list[object] = [float(v) for v in values.reshape(-1).tolist()]
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise error(
            f"{_prefix(where)}{name} must be a sequence of {need}, got {values!r} ({type(values).__name__}){_suffix(hint)}"
        )
    else:
        items = list(values)
    result = []
    for position, value in enumerate(items):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or (
            (positive and float(value) <= 0) or (minimum is not None and float(value) < minimum)
        ):
            raise error(f"{_prefix(where)}{name} must hold {need}, got {name}[{position}] = {value!r}{_suffix(hint)}")
        result.append(float(value))
    if length is not None and len(result) != length:
        raise error(f"{_prefix(where)}{name} has {len(result)} values but {length} are needed{_suffix(hint)}")
    return tuple(result)


# --------------------------------------------------------------------------------------------
# Tensors' metadata.

#: dtype kinds :func:`check_tensor` tells apart.
DtypeKind = Literal["floating", "integer", "real", "any"]


def _kind_ok(dtype: torch.dtype, kind: DtypeKind) -> bool:
    if kind == "floating":
        return dtype.is_floating_point
    if kind == "integer":
        return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    if kind == "real":
        return not dtype.is_complex
    return True


def _describe(value: object) -> str:
    if isinstance(value, (Tensor, np.ndarray)):
        device = f" on {value.device}" if isinstance(value, Tensor) else ""
        return f"shape {tuple(value.shape)} {value.dtype}{device}"
    return type(value).__name__


def check_tensor(
    value: object,
    name: str,
    *,
    ndim: Union[int, tuple[int, ...], None] = None,
    layout: str = "",
    last: Optional[int] = None,
    dtype: DtypeKind = "any",
    where: str = "",
    hint: str = "",
    error: ErrorType = ShapeError,
    needs_values: bool = True,
) -> Tensor:
    """``value`` when it is a tensor of ``ndim`` dimensions, last dimension ``last``, a dtype
    of kind ``dtype`` and, with ``needs_values``, on a device that holds data (not
    ``meta``); ``layout`` (e.g. ``"(B, N, 4)"``) is what the message asks for."""
    need = layout or (f"{ndim}-D" if ndim is not None else "a tensor")
    if not isinstance(value, Tensor):
        raise error(f"{_prefix(where)}{name} must be a torch.Tensor {need}, got {type(value).__name__}{_suffix(hint)}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if (dims is not None and value.ndim not in dims) or (last is not None and (value.ndim == 0 or value.shape[-1] != last)):
        raise error(f"{_prefix(where)}{name} must have shape {need}, got {tuple(value.shape)}{_suffix(hint)}")
    if not _kind_ok(value.dtype, dtype):
        kinds = {"floating": "a floating", "integer": "an integer", "real": "a real (not complex)"}[dtype]
        raise error(f"{_prefix(where)}{name} must have {kinds} dtype, got {value.dtype}{_suffix(hint)}")
    if needs_values and value.device.type == "meta":
        raise error(
            f"{_prefix(where)}{name} is on the meta device, which holds shapes but no values; "
            "matching reads the values: run the model on a real device (cpu, cuda)"
        )
    return value


def check_same_batch(where: str, name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise unless ``a`` and ``b`` describe the same B images on one device."""
    if a.shape[0] != b.shape[0]:
        raise ShapeError(
            f"{_prefix(where)}{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} have different "
            "batch sizes; both must describe the same B images"
        )
    check_same_device(where, name_a, a, name_b, b)


def check_same_device(where: str, name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise unless ``a`` and ``b`` are on one device."""
    if a.device != b.device:
        raise ShapeError(f"{_prefix(where)}{name_a} is on {a.device} but {name_b} on {b.device}; move both to one device")


# --------------------------------------------------------------------------------------------
# Tensors' values.


@dataclass(frozen=True)
class Arg:
    """How messages name an input tensor, and which error its bad values raise.

    A cost function's argument is named as the user passed it (``area[0, 3]``); a cost
    reading the padded ``targets[key]`` names the dict entry the user wrote
    (``targets[0]['area'][3]``), and ``outputs[key]`` likewise.
    """

    name: str
    role: Literal["target", "prediction", "argument"] = "argument"
    key: Optional[str] = None

    @classmethod
    def target(cls, name: str, key: Optional[str] = None) -> Arg:
        return cls(name, "target", key)

    @classmethod
    def prediction(cls, name: str, key: Optional[str] = None) -> Arg:
        return cls(name, "prediction", key)

    @property
    def error(self) -> ErrorType:
        return {"target": InvalidTargetError, "prediction": InvalidPredictionError}.get(self.role, ShapeError)

    def at(self, index: Sequence[int]) -> str:
        """The name of ``tensor[index]``, e.g. ``targets[0]['area'][3]``."""
        index = [int(i) for i in index]
        if self.key is not None and self.role == "target" and len(index) >= 2:
            rest = ", ".join(map(str, index[1:]))
            return f"targets[{index[0]}][{self.key!r}][{rest}]"
        if self.key is not None:
            return f"outputs[{self.key!r}][{', '.join(map(str, index))}]"
        return f"{self.name}[{', '.join(map(str, index))}]"

    def __str__(self) -> str:
        if self.key is not None:
            return f"each targets[b][{self.key!r}]" if self.role == "target" else f"outputs[{self.key!r}]"
        return self.name


@dataclass(frozen=True)
class ValueCheck:
    """One value scan: ``tensor``'s entries must be finite and within ``[minimum, maximum]``.

    ``valid`` (bool, broadcast over ``tensor``'s leading dimensions) limits the scan to the
    real entries (padded targets are ignored); ``need`` says the contract in words and
    ``fix`` what to do.
    """

    tensor: Tensor
    arg: Arg
    need: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    finite: bool = True
    valid: Optional[Tensor] = None
    fix: str = ""
    #: A precomputed mask of bad entries (same shape as ``tensor``) replaces the rules above.
    mask: Optional[Tensor] = None
    #: Report only the first ``index_dims`` indices (e.g. image and target of a sampled mask).
    index_dims: Optional[int] = None

    def bad(self) -> Tensor:
        values = self.tensor
        if self.mask is not None:
            return self._only_valid(self.mask)
        bad = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
        if self.finite and (values.is_floating_point() or values.is_complex()):
            bad |= ~torch.isfinite(values)
        elif values.is_floating_point():
            bad |= torch.isnan(values)
        if self.minimum is not None:
            bad |= values < self.minimum
        if self.maximum is not None:
            bad |= values > self.maximum
        return self._only_valid(bad)

    def _only_valid(self, bad: Tensor) -> Tensor:
        if self.valid is None:
            return bad
        valid = self.valid.to(device=bad.device, dtype=torch.bool)
        return bad & valid.reshape(*valid.shape, *([1] * (bad.ndim - valid.ndim)))


def check_values(*checks: ValueCheck, where: str = "") -> None:
    """Run every scan with one device sync; raise for the first that fails, naming the entry."""
    checks = tuple(check for check in checks if check.tensor.numel() > 0)
    if not checks:
        return
    masks = [check.bad() for check in checks]
    failed = torch.stack([mask.any().to(masks[0].device) for mask in masks]).tolist()
    for check, mask, fail in zip(checks, masks, failed):
        if fail:
            index = torch.nonzero(mask)[0].tolist()
            value = check.tensor[tuple(index)].item()
            fix = f"; {check.fix}" if check.fix else ""
            if check.index_dims is not None:
                what = f"{check.arg.at(index[: check.index_dims])} holds {value!r}"
            else:
                what = f"{check.arg.at(index)} is {value!r}"
            raise check.arg.error(f"{_prefix(where)}{what}: {check.arg} must be {check.need}{fix}")


def _finite_per_object(values: Tensor) -> Tensor:
    """``(B, K, ...)`` -> ``(B, K)``: whether every value of object k is finite."""
    finite = torch.isfinite(values)
    return finite.flatten(2).all(dim=-1) if finite.ndim > 2 else finite


def nan_where_nonfinite(cost: Tensor, predictions: Optional[Tensor] = None, targets: Optional[Tensor] = None) -> Tensor:
    """``cost (B, N, M)`` with NaN in the rows of predictions and the columns of targets that
    hold a NaN or infinite value.

    The costs' contract for non-finite input, without a device sync: such a pair never
    gets a plausible-looking number; the solver refuses the NaN and the matcher names the
    prediction or target. ``predictions`` is ``(B, N, ...)``, ``targets`` ``(B, M, ...)``.
    """
    bad: Optional[Tensor] = None
    if predictions is not None and predictions.is_floating_point():
        rows = ~_finite_per_object(predictions)
        bad = rows[:, :, None]
    if targets is not None and targets.is_floating_point():
        columns = ~_finite_per_object(targets)
        bad = columns[:, None, :] if bad is None else bad | columns[:, None, :]
    if bad is None:
        return cost
    return torch.where(bad.to(cost.device), torch.full((), math.nan, dtype=cost.dtype, device=cost.device), cost)


def with_context(error: HybridMatchError, context: str) -> HybridMatchError:
    """The same error type with ``[context]`` appended (raise it ``from None``)."""
    return type(error)(f"{error} [{context}]")


@contextmanager
def context(where: str, *, inner: Sequence[str] = ()) -> Iterator[None]:
    """Prefix ``where: `` to the message of a hybridmatch error raised inside the block.

    A class that hands its settings to another (a preset matcher to its assigner) lets
    that one check them and names itself here, rather than checking them a second time;
    the inner class's own prefix (one of ``inner``) is replaced by ``where``.
    """
    try:
        yield
    except HybridMatchError as error:
        message = str(error)
        for name in inner:
            if message.startswith(f"{name}: "):
                message = message[len(name) + 2 :]
                break
        raise type(error)(f"{where}: {message}") from None
