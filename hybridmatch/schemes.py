"""H-DETR's three hybrid-matching schemes: who is supervised how, at which epoch and layer.

H-DETR ("DETRs with Hybrid Matching", Jia et al., CVPR 2023) keeps one-to-one (Hungarian)
matching for the queries used at inference and adds one-to-many supervision during
training, where the ground truth of an image is repeated ``K`` times. It does so in three
ways, each a small configuration object here:

* :class:`HybridBranch`: two groups of queries, ``[one2one | one2many]`` along the query
  dimension, kept apart by a self-attention mask; the one-to-many group is matched against
  the ground truth repeated ``K`` times and its losses are added with weight ``lambda``.
  Inference keeps the one-to-one group only. Paper: 300 + 1500 queries, K=6, lambda=1.
* :class:`HybridEpoch`: one group; one-to-many (K=10) for the first ``rho`` (2/3) of the
  epochs, one-to-one for the rest.
* :class:`HybridLayer`: one group; the first ``L1`` (4 of 6) decoder layers one-to-many
  (K=10), the last ones one-to-one.

A scheme stores settings and the current epoch and answers
:meth:`Scheme.supervision`: the list of :class:`Supervision` groups of a decoder layer
(0-based; layer ``num_layers - 1`` is the final output). The criterion wrapper reads
that list; the schemes themselves touch no tensors except :meth:`HybridBranch.split` and
:meth:`HybridBranch.attention_mask`. Schemes are checkpointable
(:meth:`Scheme.state_dict` / :meth:`Scheme.load_state_dict`) so a resumed run stays in
its phase.

Example:
    >>> import hybridmatch.schemes as schemes
    >>> scheme = schemes.HybridEpoch(k=10, one2many_fraction=2 / 3, total_epochs=12)
    >>> scheme.one2many_epochs
    8
    >>> [s.k for s in scheme.supervision(layer=5, num_layers=6, epoch=7)]
    [10]
    >>> [s.k for s in scheme.supervision(layer=5, num_layers=6, epoch=8)]
    [1]
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ._warnings import warn_once
from .validation import check_bool, check_int, check_probability, check_real
from .errors import ConfigurationError, ShapeError

__all__ = [
    "Supervision",
    "Scheme",
    "HybridBranch",
    "HybridEpoch",
    "HybridLayer",
    "ONE2MANY_SUFFIX",
]

#: Suffix of the loss keys of a one-to-many group that is added to the one-to-one losses
#: (H-DETR's ``loss_ce_one2many``, ``loss_bbox_one2many``, ...).
ONE2MANY_SUFFIX: str = "_one2many"

# Bumped when the layout of ``state_dict()`` changes; older layouts stay loadable.
_STATE_VERSION = 1


@dataclass(frozen=True)
class Supervision:
    """How one group of queries is supervised at one decoder layer.

    Attributes:
        queries (slice): which queries of the full query dimension ``N`` form the group,
            e.g. ``slice(0, 300)``; ``slice(None)`` means all of them (the scheme does not
            know ``N``).
        k (int): copies of each ground-truth object the group is matched against; 1 is
            one-to-one, ``K > 1`` one-to-many (each object may take up to ``K`` queries).
        weight (float): loss weight (H-DETR's ``lambda``) of the group's losses, finite, >= 0.
        one2many (bool): whether the group is supervised one-to-many. True whenever
            ``k > 1``; a one-to-many phase of a scheme built with ``k=1`` keeps it True.
        suffix (str): appended to the group's loss keys: ``""`` when the losses are (or
            replace) the one-to-one ones, ``"_one2many"`` when they are added next to them.

    Example:
        >>> from hybridmatch.schemes import Supervision
        >>> s = Supervision(slice(300, 1800), 6, 1.0, True, "_one2many")
        >>> s.k, s.one2many, s.suffix
        (6, True, '_one2many')
        >>> Supervision(slice(0, 300), 6, 1.0, False, "")
        Traceback (most recent call last):
        ...
        hybridmatch.errors.ConfigurationError: Supervision: one2many=False needs k=1, got k=6; set one2many=True for a group matched against repeated targets
    """

    queries: slice
    k: int
    weight: float
    one2many: bool
    suffix: str

    def __post_init__(self) -> None:
        if not isinstance(self.queries, slice):
            raise ConfigurationError(
                f"Supervision: queries must be a slice of the query dimension, got "
                f"{self.queries!r} ({type(self.queries).__name__})"
            )
        k = check_int(self.k, "k", minimum=1, where="Supervision")
        weight = check_real(self.weight, "weight", minimum=0, where="Supervision")
        one2many = check_bool(self.one2many, "one2many", where="Supervision")
        if k > 1 and not one2many:
            raise ConfigurationError(
                f"Supervision: one2many=False needs k=1, got k={k}; set one2many=True for a "
                f"group matched against repeated targets"
            )
        if not isinstance(self.suffix, str):
            raise ConfigurationError(
                f"Supervision: suffix must be a str, got {self.suffix!r} "
                f"({type(self.suffix).__name__})"
            )
        # Normalise numpy ints / ints-as-weights to plain Python types (frozen: bypass setattr).
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "one2many", one2many)


class Scheme(abc.ABC):
    """Base class of the hybrid-matching schemes: settings plus the current epoch.

    Subclasses implement :meth:`supervision`, ``_settings`` and, where they know the
    query count, :meth:`num_queries`. ``epoch`` starts at 0; call :meth:`step` once per
    finished epoch (or :meth:`set_epoch`).

    Example:
        >>> from hybridmatch import HybridEpoch
        >>> from hybridmatch.schemes import Scheme
        >>> scheme = HybridEpoch(k=6, one2many_fraction=0.5, total_epochs=4)
        >>> isinstance(scheme, Scheme), scheme.epoch
        (True, 0)
        >>> scheme.step(); scheme.step()
        >>> HybridEpoch(k=6, one2many_fraction=0.5, total_epochs=4).load_state_dict(scheme.state_dict())
        >>> scheme.epoch, scheme.supervision(layer=5, num_layers=6)[0].k   # past the one-to-many half
        (2, 1)
    """

    def __init__(self, *, epoch: int = 0) -> None:
        self._epoch = _check_epoch(type(self).__name__, epoch)

    # -- epoch ---------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch, 0-based."""
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def step(self) -> None:
        """Advance to the next epoch; call once per finished epoch."""
        self._epoch += 1

    def set_epoch(self, epoch: int) -> None:
        """Set the current epoch (a non-negative int), e.g. when resuming a run."""
        self._epoch = _check_epoch(f"{type(self).__name__}.set_epoch", epoch)

    # -- supervision ---------------------------------------------------------------------

    @abc.abstractmethod
    def supervision(
        self, layer: int, num_layers: int, epoch: int | None = None
    ) -> list[Supervision]:
        """The groups of queries supervised at decoder ``layer`` at ``epoch``.

        Args:
            layer (int): decoder layer, 0-based; ``num_layers - 1`` is the final output
                (``pred_logits`` / ``pred_boxes``), earlier ones are ``aux_outputs[layer]``.
            num_layers (int): decoder layers in the model, >= 1.
            epoch (int | None): the epoch to answer for; defaults to :attr:`epoch`.

        Returns:
            list[Supervision]: disjoint groups, in query order.
        """

    def num_queries(self) -> int | None:
        """Total queries ``N`` the scheme expects, or None when it was not told."""
        return None

    @property
    def inference_queries(self) -> slice:
        """The queries a trained model keeps at inference (all of them by default)."""
        return _all_queries(self.num_queries())

    def check_targets(self, max_targets: int, epoch: int | None = None) -> None:
        """Warn once when ``K * max_targets`` exceeds the queries supervised one-to-many.

        Then some copies of an image's ground truth cannot be matched. Nothing is checked
        when the scheme does not know its query count.

        Args:
            max_targets (int): the largest number of objects in one image (of a batch, or
                of the data set), >= 0.
            epoch (int, optional): the epoch being supervised; default :attr:`epoch`.
        """
        check_int(max_targets, "max_targets", minimum=0, where=f"{type(self).__name__}.check_targets")
        capacity = self._one2many_capacity()
        if capacity is None:
            return
        k = self._largest_k(self.epoch if epoch is None else epoch)
        needed = k * max_targets
        if needed <= capacity:
            return
        name = type(self).__name__
        fit = capacity // max_targets
        smaller_k = (
            f"a smaller K (k <= {fit})"
            if fit >= 1
            else f"no K helps: {max_targets} objects exceed the {capacity} queries even at K=1"
        )
        warn_once(
            f"schemes.check_targets:{name}:k={k}:capacity={capacity}",
            f"{name}: an image with max_targets={max_targets} objects repeated K={k} times "
            f"needs K * max_targets = {needed} queries but only {capacity} are supervised "
            f"one-to-many, so {needed - capacity} copies of its ground truth go unmatched; "
            f"use more one-to-many queries (>= {needed}) or {smaller_k}",
        )

    def _one2many_capacity(self) -> int | None:
        # Queries the one-to-many groups can match; None when unknown.
        return self.num_queries()

    def _largest_k(self, epoch: int) -> int:
        # The K that check_targets measures against at `epoch`.
        return 1

    # -- checkpointing -------------------------------------------------------------------

    @abc.abstractmethod
    def _settings(self) -> dict[str, Any]:
        """The constructor settings, as plain Python values, in constructor order."""

    def state_dict(self) -> dict[str, Any]:
        """The scheme's state as plain Python types (JSON- and ``torch.save``-safe).

        Returns:
            dict: ``{"scheme": class name, "version": int, "epoch": int, "settings": dict}``.
        """
        return {
            "scheme": type(self).__name__,
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "settings": self._settings(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the epoch from :meth:`state_dict`'s output.

        The settings are not restored but checked: a checkpoint of another scheme or of
        another configuration (a different K, say) raises ``ValueError`` naming the setting,
        since resuming it would silently change the training recipe.
        """
        name = type(self).__name__
        where = f"{name}.load_state_dict"
        if not isinstance(state, Mapping):
            raise ConfigurationError(f"{where}: state must be a dict, got {type(state).__name__}")
        missing = [key for key in ("scheme", "epoch", "settings") if key not in state]
        if missing:
            raise ConfigurationError(
                f"{where}: state lacks {missing}; pass the dict returned by state_dict()"
            )
        version = state.get("version", _STATE_VERSION)
        if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
            raise ConfigurationError(
                f"{where}: state['version'] must be an int >= 1 (the layout version state_dict() "
                f"writes, {_STATE_VERSION} today), got {version!r} ({type(version).__name__}); the "
                f"state was not written by state_dict() or was edited: save it again with state_dict()"
            )
        if version > _STATE_VERSION:
            raise ConfigurationError(
                f"{where}: state has version {version!r}, this hybridmatch reads versions "
                f"<= {_STATE_VERSION}; upgrade hybridmatch to load it"
            )
        if state["scheme"] != name:
            raise ConfigurationError(
                f"{where}: the checkpoint holds a {state['scheme']!r} scheme, not a {name}; "
                f"build the scheme the run was trained with"
            )
        saved = state["settings"]
        if not isinstance(saved, Mapping):
            raise ConfigurationError(
                f"{where}: state['settings'] must be a dict, got {type(saved).__name__}"
            )
        ours = self._settings()
        for key, value in ours.items():
            if key not in saved:
                raise ConfigurationError(
                    f"{where}: the checkpoint lacks the setting {key!r} (this scheme has "
                    f"{key}={value!r}); pass the dict returned by state_dict()"
                )
            if saved[key] != value:
                raise ConfigurationError(
                    f"{where}: the checkpoint was saved with {key}={saved[key]!r} but this "
                    f"{name} has {key}={value!r}; build the scheme with {key}={saved[key]!r} "
                    f"to resume that run"
                )
        unknown = sorted(set(saved) - set(ours))
        if unknown:
            raise ConfigurationError(
                f"{where}: the checkpoint has settings {unknown} that a {name} does not know; "
                f"it comes from a different configuration"
            )
        self._epoch = _check_epoch(f"{where}: state['epoch']", state["epoch"])

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self._settings().items())
        return f"{type(self).__name__}({args}, epoch={self._epoch})"


class HybridBranch(Scheme):
    """H-DETR's hybrid branch: ``[one2one | one2many]`` query groups, both every epoch.

    The query dimension holds ``num_one2one`` queries followed by ``num_one2many`` (``T``
    in total). At every decoder layer and epoch the first group is matched one-to-one
    (suffix ``""``, weight 1) and the second against the ground truth repeated ``k``
    times (suffix ``"_one2many"``, weight ``weight``): ``L = L_one2one + lambda *
    L_one2many``. The groups must not see each other in the decoder's self-attention
    (:meth:`attention_mask`); inference keeps only the one-to-one group
    (:attr:`inference_queries`). As in H-DETR, a two-stage encoder output is supervised
    by the one-to-one losses only.

    Args:
        num_one2one (int): one-to-one queries, >= 1 (paper: 300).
        num_one2many (int): one-to-many queries, >= 1 (paper: 1500).
        k (int): copies of each ground-truth object for the one-to-many group, >= 1
            (paper: 6).
        weight (float): ``lambda``, the one-to-many losses' weight, finite, >= 0 (paper: 1).
        epoch (int): the epoch to start at (keyword only), default 0.

    Example:
        >>> from hybridmatch.schemes import HybridBranch
        >>> branch = HybridBranch()
        >>> [(s.queries, s.k, s.suffix) for s in branch.supervision(layer=5, num_layers=6)]
        [(slice(0, 300, None), 1, ''), (slice(300, 1800, None), 6, '_one2many')]
        >>> branch.num_queries(), branch.inference_queries
        (1800, slice(0, 300, None))
        >>> import torch
        >>> one2one, one2many = branch.split(torch.zeros(2, 1800, 4))
        >>> one2one.shape, one2many.shape
        (torch.Size([2, 300, 4]), torch.Size([2, 1500, 4]))
    """

    def __init__(
        self,
        num_one2one: int = 300,
        num_one2many: int = 1500,
        k: int = 6,
        weight: float = 1.0,
        *,
        epoch: int = 0,
    ) -> None:
        super().__init__(epoch=epoch)
        self.num_one2one: int = check_int(num_one2one, "num_one2one", minimum=1, where="HybridBranch")
        self.num_one2many: int = check_int(
            num_one2many, "num_one2many", minimum=1, where="HybridBranch",
            hint="for plain one-to-one training use no scheme",
        )
        self.k: int = check_int(k, "k", minimum=1, hint="H-DETR uses k=6", where="HybridBranch")
        self.weight: float = check_real(weight, "weight", minimum=0, where="HybridBranch")

    @property
    def one2one_queries(self) -> slice:
        """The one-to-one group, ``slice(0, num_one2one)``."""
        return slice(0, self.num_one2one)

    @property
    def one2many_queries(self) -> slice:
        """The one-to-many group, ``slice(num_one2one, num_one2one + num_one2many)``."""
        return slice(self.num_one2one, self.num_one2one + self.num_one2many)

    @property
    def inference_queries(self) -> slice:
        """The queries kept at inference (the one-to-one group)."""
        return self.one2one_queries

    def num_queries(self) -> int:
        """``T = num_one2one + num_one2many``."""
        return self.num_one2one + self.num_one2many

    def supervision(
        self, layer: int, num_layers: int, epoch: int | None = None
    ) -> list[Supervision]:
        """Both groups at every layer and epoch; see :meth:`Scheme.supervision`."""
        _check_layer(type(self).__name__, layer, num_layers)
        _resolve_epoch(self, epoch)
        return [
            Supervision(self.one2one_queries, 1, 1.0, False, ""),
            Supervision(self.one2many_queries, self.k, self.weight, True, ONE2MANY_SUFFIX),
        ]

    def attention_mask(self, device: Any = None) -> Tensor:
        """The decoder self-attention mask that keeps the two groups apart.

        See :func:`hybridmatch.attention.hybrid_attention_mask`.

        Returns:
            Tensor[T, T] bool: True = blocked (the ``nn.MultiheadAttention`` convention).
        """
        # Imported here so that the schemes do not depend on the attention module at import.
        from .attention import hybrid_attention_mask

        return hybrid_attention_mask(self.num_one2one, self.num_one2many, device=device)

    def split(self, tensor: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
        """Split a concatenated query dimension into its one-to-one and one-to-many parts.

        Args:
            tensor (Tensor[..., T, ...]): e.g. ``pred_logits`` ``[B, T, C]``; size
                ``T = num_one2one + num_one2many`` at ``dim``.
            dim (int): the query dimension, default 1.

        Returns:
            tuple[Tensor, Tensor]: views ``[..., num_one2one, ...]`` and
            ``[..., num_one2many, ...]`` (no copy).

        Raises:
            ShapeError: ``tensor`` has no dimension ``dim`` or its size there is not ``T``.
        """
        check_int(dim, "dim", where="HybridBranch.split", error=ShapeError)
        ndim = tensor.dim()
        if not -ndim <= int(dim) < ndim:
            raise ShapeError(
                f"HybridBranch.split: dim={dim} is out of range for a tensor of shape "
                f"{tuple(tensor.shape)} ({ndim} dimensions); pass the query dimension"
            )
        total = self.num_queries()
        size = tensor.shape[dim]
        if size != total:
            raise ShapeError(
                f"HybridBranch.split: tensor of shape {tuple(tensor.shape)} has {size} queries "
                f"at dim={dim}, but the scheme expects num_one2one + num_one2many = "
                f"{self.num_one2one} + {self.num_one2many} = {total}; build the model's queries "
                f"with the scheme's sizes (or pass the right dim)"
            )
        one2one, one2many = tensor.split([self.num_one2one, self.num_one2many], dim=int(dim))
        return one2one, one2many

    def _one2many_capacity(self) -> int:
        return self.num_one2many

    def _largest_k(self, epoch: int) -> int:
        return self.k

    def _settings(self) -> dict[str, Any]:
        return {
            "num_one2one": self.num_one2one,
            "num_one2many": self.num_one2many,
            "k": self.k,
            "weight": self.weight,
        }


class HybridEpoch(Scheme):
    """H-DETR's hybrid epoch: all queries one-to-many for the first epochs, then one-to-one.

    One group of all queries. For epochs ``< one2many_epochs`` it is matched against the
    ground truth repeated ``k`` times; from then on one-to-one, so the model ends training
    with the one-to-one matching its NMS-free inference needs. Epochs past
    ``total_epochs`` stay one-to-one.

    The one-to-many phase uses suffix ``""`` and weight 1: the single group's losses
    *replace* the one-to-one losses rather than being added next to them (there is no
    second group to add them to), so loss keys, logging and loss weights stay those of the
    base model throughout training.

    The loss changes scale at the switch. In the one-to-many epochs a DETR criterion's
    ``num_boxes`` counts the K copies of each object (``K * M``, as in H-DETR): terms
    summed over the matched pairs (L1, GIoU) keep their scale, but terms summed over every
    query (the "no object" part of the classification loss) are divided by about K more
    than in the one-to-one epochs. :class:`~hybridmatch.criterion.HybridCriterion` logs
    this once when it sees the switch.

    ``one2many_epochs = round(one2many_fraction * total_epochs)`` rounded to the nearest
    epoch with halves rounded *up* (total 10, fraction 0.25 gives 3, not Python's
    round-half-to-even 2); float noise in the product is ignored (0.58 of 25 is taken as
    14.5, giving 15).

    Args:
        k (int): copies of each ground-truth object in the one-to-many phase, >= 1
            (paper: 10).
        one2many_fraction (float): ``rho``, the fraction of the epochs trained one-to-many,
            in [0, 1] (paper: 2/3).
        total_epochs (int): the length of the schedule, >= 1.
        num_queries (int | None): the query count ``N`` (paper: 1800), or None if unknown;
            used for the group's slice and by :meth:`check_targets`.
        epoch (int): the epoch to start at (keyword only), default 0.

    Example:
        >>> from hybridmatch.schemes import HybridEpoch
        >>> scheme = HybridEpoch(k=10, one2many_fraction=0.25, total_epochs=10, num_queries=1800)
        >>> scheme.one2many_epochs
        3
        >>> scheme.supervision(layer=0, num_layers=6, epoch=2)
        [Supervision(queries=slice(0, 1800, None), k=10, weight=1.0, one2many=True, suffix='')]
        >>> scheme.supervision(layer=0, num_layers=6, epoch=3)
        [Supervision(queries=slice(0, 1800, None), k=1, weight=1.0, one2many=False, suffix='')]
    """

    def __init__(
        self,
        k: int = 10,
        one2many_fraction: float = 2 / 3,
        total_epochs: int = 12,
        num_queries: int | None = None,
        *,
        epoch: int = 0,
    ) -> None:
        super().__init__(epoch=epoch)
        self.k: int = check_int(k, "k", minimum=1, hint="H-DETR uses k=10", where="HybridEpoch")
        self.one2many_fraction: float = check_probability(
            one2many_fraction, "one2many_fraction", where="HybridEpoch",
            hint="the fraction of the epochs trained one-to-many (H-DETR uses 2/3)",
        )
        self.total_epochs: int = check_int(total_epochs, "total_epochs", minimum=1, where="HybridEpoch")
        self._num_queries: int | None = _check_optional_queries("HybridEpoch", num_queries)
        # Round half up; rounding the product to 9 decimals first drops float noise such as
        # 0.58 * 25 = 14.499999999999998, which is meant as 14.5.
        self._one2many_epochs = math.floor(
            round(self.one2many_fraction * self.total_epochs, 9) + 0.5
        )
        if 0.0 < self.one2many_fraction < 1.0 and self._one2many_epochs in (0, self.total_epochs):
            phase = "never" if self._one2many_epochs == 0 else "in every epoch"
            warn_once(
                f"schemes.HybridEpoch.rounding:{self.one2many_fraction}:{self.total_epochs}",
                f"HybridEpoch: one2many_fraction={self.one2many_fraction} of total_epochs="
                f"{self.total_epochs} rounds to {self._one2many_epochs} one-to-many epochs, "
                f"so the scheme trains one-to-many {phase}; pick a fraction that leaves at "
                f"least one epoch in each phase",
            )

    @property
    def one2many_epochs(self) -> int:
        """Epochs ``0 .. one2many_epochs - 1`` are one-to-many (see the class docstring)."""
        return self._one2many_epochs

    def num_queries(self) -> int | None:
        """The query count given to the constructor, or None."""
        return self._num_queries

    def is_one2many(self, epoch: int | None = None) -> bool:
        """Whether ``epoch`` (default :attr:`~hybridmatch.schemes.Scheme.epoch`) is in the one-to-many phase."""
        return _resolve_epoch(self, epoch) < self._one2many_epochs

    def supervision(
        self, layer: int, num_layers: int, epoch: int | None = None
    ) -> list[Supervision]:
        """One group of all queries, one-to-many in the first phase; see :meth:`Scheme.supervision`."""
        _check_layer(type(self).__name__, layer, num_layers)
        queries = _all_queries(self._num_queries)
        if self.is_one2many(epoch):
            return [Supervision(queries, self.k, 1.0, True, "")]
        return [Supervision(queries, 1, 1.0, False, "")]

    def _largest_k(self, epoch: int) -> int:
        # After the one-to-many phase only K=1 is ahead.
        return self.k if self.is_one2many(epoch) else 1

    def _settings(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "one2many_fraction": self.one2many_fraction,
            "total_epochs": self.total_epochs,
            "num_queries": self._num_queries,
        }


class HybridLayer(Scheme):
    """H-DETR's hybrid layer: the first decoder layers one-to-many, the last ones one-to-one.

    One group of all queries, at every epoch. Decoder layers ``0 ..
    num_one2many_layers - 1`` (H-DETR's ``L1``) are matched against the ground truth
    repeated ``k`` times, the remaining ones (``L2``) one-to-one. The final layer must stay
    one-to-one since inference reads it: :meth:`supervision` raises ``ValueError`` when
    ``num_one2many_layers >= num_layers``. As in :class:`HybridEpoch`, the one-to-many
    layers' losses use suffix ``""`` and weight 1: they replace those layers' one-to-one
    losses, under the names the criterion gives them (``loss_ce_{i}``), and are normalised
    by the count of the repeated objects (``K * M``), as :class:`HybridEpoch`'s
    one-to-many epochs are.

    Args:
        k (int): copies of each ground-truth object at the one-to-many layers, >= 1
            (paper: 10).
        num_one2many_layers (int): ``L1``, >= 0 (paper: 4 of 6 layers).
        num_queries (int | None): the query count ``N`` (paper: 1800), or None if unknown.
        epoch (int): the epoch to start at (keyword only), default 0.

    Example:
        >>> from hybridmatch.schemes import HybridLayer
        >>> scheme = HybridLayer(k=10, num_one2many_layers=4)
        >>> [scheme.supervision(layer, num_layers=6)[0].k for layer in range(6)]
        [10, 10, 10, 10, 1, 1]
    """

    def __init__(
        self,
        k: int = 10,
        num_one2many_layers: int = 4,
        num_queries: int | None = None,
        *,
        epoch: int = 0,
    ) -> None:
        super().__init__(epoch=epoch)
        self.k: int = check_int(k, "k", minimum=1, hint="H-DETR uses k=10", where="HybridLayer")
        self.num_one2many_layers: int = check_int(
            num_one2many_layers, "num_one2many_layers", minimum=0, where="HybridLayer"
        )
        self._num_queries: int | None = _check_optional_queries("HybridLayer", num_queries)

    def num_queries(self) -> int | None:
        """The query count given to the constructor, or None."""
        return self._num_queries

    def supervision(
        self, layer: int, num_layers: int, epoch: int | None = None
    ) -> list[Supervision]:
        """One group, one-to-many below ``num_one2many_layers``; see :meth:`Scheme.supervision`.

        Raises:
            ValueError: ``num_one2many_layers >= num_layers`` (the final layer would be
                one-to-many), or ``layer`` is not in ``[0, num_layers)``.
        """
        _check_layer(type(self).__name__, layer, num_layers)
        _resolve_epoch(self, epoch)
        if self.num_one2many_layers >= num_layers:
            raise ConfigurationError(
                f"HybridLayer: num_one2many_layers={self.num_one2many_layers} must be < "
                f"num_layers={num_layers}: the final decoder layer, which inference reads, "
                f"must stay one-to-one; use num_one2many_layers <= {num_layers - 1} "
                f"(H-DETR: 4 of 6)"
            )
        queries = _all_queries(self._num_queries)
        if layer < self.num_one2many_layers:
            return [Supervision(queries, self.k, 1.0, True, "")]
        return [Supervision(queries, 1, 1.0, False, "")]

    def _largest_k(self, epoch: int) -> int:
        return self.k if self.num_one2many_layers > 0 else 1

    def _settings(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "num_one2many_layers": self.num_one2many_layers,
            "num_queries": self._num_queries,
        }


# Private helpers shared by the classes above.


def _all_queries(num_queries: int | None) -> slice:
    return slice(None) if num_queries is None else slice(0, num_queries)


def _check_optional_queries(where: str, value: object) -> int | None:
    if value is None:
        return None
    return check_int(value, "num_queries", minimum=1, where=where, hint="or None when unknown")


def _check_epoch(where: str, epoch: object) -> int:
    return check_int(epoch, "epoch", minimum=0, where=where)


def _check_layer(where: str, layer: object, num_layers: object) -> None:
    layers = check_int(num_layers, "num_layers", minimum=1, where=f"{where}.supervision")
    index = check_int(layer, "layer", minimum=0, where=f"{where}.supervision")
    if index >= layers:
        raise ConfigurationError(
            f"{where}.supervision: layer must be in [0, num_layers) = [0, {layers}), got "
            f"{index}; layers are 0-based and layer num_layers - 1 is the final output"
        )


def _resolve_epoch(scheme: Scheme, epoch: object) -> int:
    if epoch is None:
        return scheme.epoch
    return _check_epoch(f"{type(scheme).__name__}.supervision", epoch)
