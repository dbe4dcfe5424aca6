"""Self-attention masks for the query groups of a DETR decoder.

H-DETR's hybrid branch runs two query groups through one decoder: the one-to-one
group (``Q_o2o``, matched with Hungarian, used at inference) and the one-to-many
group (``Q_o2m``, matched against the ground truth repeated ``K`` times, dropped at
inference). They must not exchange information in self-attention, otherwise the
one-to-one predictions depend on queries that do not exist at inference. Group DETR
uses ``G`` such isolated groups, and DINO prepends denoising (dn) groups.

**Convention.** Every builder returns a ``Tensor[T, T]`` of dtype ``bool``, ``T`` the
total number of queries, where ``mask[i, j] = True`` means query ``i`` may *not*
attend to query ``j`` (row = the attending query, column = the attended key). This
is the ``attn_mask`` convention of :class:`torch.nn.MultiheadAttention`.
:func:`torch.nn.functional.scaled_dot_product_attention` reads a bool mask the other
way round (True = may attend): convert with :func:`to_sdpa_mask`. The additive
float form (-inf = blocked, 0 = allowed) comes from :func:`to_additive_mask`, and
per-image / per-head copies from :func:`expand_mask`.

**Layout rules** (:func:`group_attention_mask`):

* every query sees every query of its own group (so no row is ever fully blocked,
  and softmax never sees a row of -inf, which would give NaN);
* a *matching* group (one-to-one, one-to-many, a Group-DETR group, DINO's matching
  queries) sees only itself: never a denoising query, never another matching group;
* a *denoising* group sees itself and the matching groups named in
  ``denoising_sees``; denoising groups never see each other (each carries noised
  ground truth that would leak the answer to the others).

With both one-to-one and one-to-many queries present, :func:`denoising_hybrid_mask`
lets denoising groups see the one-to-one group only, by default: the one-to-many
group does not exist at inference, and denoising is meant to train the path the
one-to-one queries take. Pass ``denoising_sees=("one2one", "one2many")`` for DINO's
"dn sees every matching query" behaviour.

**Padded denoising queries.** DINO pads each dn group to the largest number of
objects in the batch; in an image with fewer objects the padding slots hold no
ground truth. Treating the whole padded group as one group is *not* harmless: the
real dn queries of that group would read the padding slots. :func:`mask_padded_queries`
(and ``dn_valid=`` of :func:`denoising_hybrid_mask`) blocks padding slots as keys
for every query and lets a padding query see only itself, so its output is defined
(no NaN) and independent of everything else. Padding differs per image, so a
per-image ``valid`` gives one mask per image, ``Tensor[B, T, T]``.

Masks are built from host-side sizes; only :func:`check_attention_mask` reads mask
values (one device synchronisation when the mask is on a GPU).

References: Jia et al., "DETRs with Hybrid Matching", CVPR 2023; Chen et al.,
"Group DETR", ICCV 2023; Zhang et al., "DINO", ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import ShapeError
from .validation import Arg, ValueCheck, check_int, check_values

__all__ = [
    "ONE2ONE",
    "ONE2MANY",
    "QueryGroup",
    "group_slices",
    "group_attention_mask",
    "hybrid_attention_mask",
    "group_detr_mask",
    "denoising_hybrid_mask",
    "mask_padded_queries",
    "to_additive_mask",
    "to_sdpa_mask",
    "expand_mask",
    "check_attention_mask",
]

#: Group name of the one-to-one queries in the layouts built here.
ONE2ONE: str = "one2one"
#: Group name of the one-to-many queries in the layouts built here.
ONE2MANY: str = "one2many"

GroupKind = Literal["denoising", "matching"]
_KINDS = ("denoising", "matching")


@dataclass(frozen=True)
class QueryGroup:
    """A contiguous block of decoder queries that attend to each other.

    Args:
        name: unique name in its layout (``"one2one"``, ``"one2many"``, ``"dn0"``, ...);
            :func:`group_attention_mask`'s ``denoising_sees`` refers to groups by it.
        size: number of queries, an int >= 0 (an empty group adds nothing).
        kind: ``"matching"`` (supervised through a matcher; sees only itself) or
            ``"denoising"`` (noised ground truth; sees itself and the matching groups
            named in ``denoising_sees``).

    Example:
        >>> from hybridmatch.attention import QueryGroup
        >>> QueryGroup("one2one", 300)
        QueryGroup(name='one2one', size=300, kind='matching')
    """

    name: str
    size: int
    kind: GroupKind = "matching"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ShapeError(f"QueryGroup: name must be a non-empty str, got {self.name!r}")
        object.__setattr__(self, "size", _check_size(self.size, f"QueryGroup({self.name!r}).size"))
        if self.kind not in _KINDS:
            raise ShapeError(
                f"QueryGroup({self.name!r}): kind must be 'matching' or 'denoising', got {self.kind!r}"
            )


def group_slices(groups: Sequence[QueryGroup]) -> dict[str, slice]:
    """Where each group lies along the query dimension, in layout order.

    Args:
        groups: the layout, as given to :func:`group_attention_mask`.

    Returns:
        dict[str, slice]: ``name -> slice(start, stop)``; use it to split decoder outputs
        ``(B, T, ...)`` into groups with ``outputs[:, slices["one2one"]]``.

    Example:
        >>> from hybridmatch.attention import QueryGroup, group_slices
        >>> group_slices([QueryGroup("one2one", 3), QueryGroup("one2many", 5)])
        {'one2one': slice(0, 3, None), 'one2many': slice(3, 8, None)}
    """
    groups = _check_groups(groups)
    slices: dict[str, slice] = {}
    start = 0
    for group in groups:
        slices[group.name] = slice(start, start + group.size)
        start += group.size
    return slices


def group_attention_mask(
    groups: Sequence[QueryGroup],
    *,
    denoising_sees: Sequence[str] | str | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Self-attention mask for any layout of query groups (see the module rules).

    Args:
        groups: the query groups in the order the decoder holds them, any order of
            kinds; names unique.
        denoising_sees: names of the matching groups that every denoising group may
            attend to; ``None`` (default) = every matching group (DINO's rule), ``()`` =
            none (a denoising group sees only itself). A single str is one name. A name
            that is not a matching group of ``groups`` is an error.
        device: where to build the mask (default: the CPU).

    Returns:
        Tensor[T, T] bool: True = blocked, ``T = sum(g.size for g in groups)``. Every
        row has at least one False entry.

    Raises:
        ShapeError: a size is not an int >= 0, two groups share a name, a name in
            ``denoising_sees`` is not a matching group.

    Example:
        >>> from hybridmatch.attention import QueryGroup, group_attention_mask
        >>> layout = [QueryGroup("dn0", 1, "denoising"), QueryGroup("one2one", 2)]
        >>> group_attention_mask(layout).int()  # DINO: dn sees matching, not the reverse
        tensor([[0, 0, 0],
                [1, 0, 0],
                [1, 0, 0]], dtype=torch.int32)
    """
    groups = _check_groups(groups)
    seen_names = _check_denoising_sees(denoising_sees, groups)
    slices = group_slices(groups)
    total = _check_size(sum(group.size for group in groups), "T = the sum of the group sizes")
    mask = torch.ones((total, total), dtype=torch.bool, device=device)
    for group in groups:
        own = slices[group.name]
        mask[own, own] = False
        if group.kind == "denoising":
            for name in seen_names:
                mask[own, slices[name]] = False
    return mask


def hybrid_attention_mask(
    num_one2one: int, num_one2many: int, *, device: torch.device | str | None = None
) -> Tensor:
    """H-DETR's hybrid-branch mask: one-to-one and one-to-many queries kept apart.

    The layout is ``[one-to-one | one-to-many]``; each group sees only itself.

    Args:
        num_one2one: number of one-to-one queries ``Q_o2o`` (H-DETR: 300), int >= 0.
        num_one2many: number of one-to-many queries ``Q_o2m`` (H-DETR: 1500), int >= 0.
        device: where to build the mask (default: the CPU).

    Returns:
        Tensor[T, T] bool, ``T = num_one2one + num_one2many``, True = blocked.

    Example:
        >>> from hybridmatch.attention import hybrid_attention_mask
        >>> hybrid_attention_mask(2, 1).int()
        tensor([[0, 0, 1],
                [0, 0, 1],
                [1, 1, 0]], dtype=torch.int32)
    """
    return group_attention_mask(
        [
            QueryGroup(ONE2ONE, _check_size(num_one2one, "num_one2one")),
            QueryGroup(ONE2MANY, _check_size(num_one2many, "num_one2many")),
        ],
        device=device,
    )


def group_detr_mask(
    num_groups: int, group_size: int, *, device: torch.device | str | None = None
) -> Tensor:
    """Group DETR's mask: ``num_groups`` equal groups, each sees only itself.

    Args:
        num_groups: number of groups ``G``, int >= 0 (group 0 is the one kept at inference).
        group_size: queries per group, int >= 0.
        device: where to build the mask (default: the CPU).

    Returns:
        Tensor[T, T] bool, ``T = num_groups * group_size``, True = blocked (block diagonal
        of False).

    Example:
        >>> from hybridmatch.attention import group_detr_mask
        >>> group_detr_mask(2, 2).int()
        tensor([[0, 0, 1, 1],
                [0, 0, 1, 1],
                [1, 1, 0, 0],
                [1, 1, 0, 0]], dtype=torch.int32)
    """
    num_groups = _check_size(num_groups, "num_groups")
    group_size = _check_size(group_size, "group_size")
    return group_attention_mask(
        [QueryGroup(f"group{g}", group_size) for g in range(num_groups)], device=device
    )


def denoising_hybrid_mask(
    num_dn_groups: int,
    dn_group_size: int,
    num_one2one: int,
    num_one2many: int = 0,
    *,
    denoising_sees: Sequence[str] | str = (ONE2ONE,),
    dn_valid: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Mask for DINO-style denoising combined with H-DETR's hybrid branch.

    The layout is ``[dn group 0 | ... | dn group G-1 | one-to-one | one-to-many]``, the
    groups named ``"dn0"``, ..., ``"one2one"``, ``"one2many"``. Matching queries see only
    their own group; denoising groups see themselves and the groups in ``denoising_sees``,
    never each other. With ``num_one2many=0`` and the default this is DINO's mask.

    Args:
        num_dn_groups: number of denoising groups ``G``, int >= 0 (0: no denoising).
        dn_group_size: queries per denoising group *including padding* (DINO:
            ``2 * max objects per image``), int >= 0.
        num_one2one: number of one-to-one queries, int >= 0.
        num_one2many: number of one-to-many queries, int >= 0 (0 at inference or
            without the hybrid branch).
        denoising_sees: which of ``"one2one"`` and ``"one2many"`` a denoising group may
            attend to. Default ``("one2one",)``: the one-to-many group does not exist at
            inference, so denoising follows the one-to-one path.
        dn_valid: which denoising slots hold a real (noised) object, True = real:
            ``Tensor[G * dn_group_size]`` bool for a layout shared by the batch, or
            ``Tensor[B, G * dn_group_size]`` bool per image. Padding slots are then
            masked by :func:`mask_padded_queries`. ``None``: every slot is real.
        device: where to build the mask (default: ``dn_valid``'s device, else the CPU);
            ``dn_valid`` is moved there.

    Returns:
        Tensor[T, T] bool, or Tensor[B, T, T] bool when ``dn_valid`` is per image;
        ``T = G * dn_group_size + num_one2one + num_one2many``; True = blocked.

    Example:
        >>> from hybridmatch.attention import denoising_hybrid_mask
        >>> denoising_hybrid_mask(2, 1, num_one2one=1, num_one2many=1).int()
        tensor([[0, 1, 0, 1],
                [1, 0, 0, 1],
                [1, 1, 0, 1],
                [1, 1, 1, 0]], dtype=torch.int32)
    """
    num_dn_groups = _check_size(num_dn_groups, "num_dn_groups")
    dn_group_size = _check_size(dn_group_size, "dn_group_size")
    num_one2one = _check_size(num_one2one, "num_one2one")
    num_one2many = _check_size(num_one2many, "num_one2many")
    names = (denoising_sees,) if isinstance(denoising_sees, str) else tuple(denoising_sees)
    for name in names:
        if name not in (ONE2ONE, ONE2MANY):
            raise ShapeError(
                f"denoising_hybrid_mask: denoising_sees may name 'one2one' and 'one2many', "
                f"got {name!r}"
            )
    num_dn = num_dn_groups * dn_group_size
    if dn_valid is not None:
        _check_valid(dn_valid, num_dn, "dn_valid", f"num_dn_groups * dn_group_size = {num_dn}")
        if device is None:
            device = dn_valid.device
        else:
            dn_valid = dn_valid.to(device)
    groups = [QueryGroup(f"dn{g}", dn_group_size, "denoising") for g in range(num_dn_groups)]
    groups += [QueryGroup(ONE2ONE, num_one2one), QueryGroup(ONE2MANY, num_one2many)]
    mask = group_attention_mask(groups, denoising_sees=names, device=device)
    if dn_valid is None:
        return mask
    # Matching queries are never padding.
    matching_valid = dn_valid.new_ones((*dn_valid.shape[:-1], num_one2one + num_one2many))
    return mask_padded_queries(mask, torch.cat((dn_valid, matching_valid), dim=-1))


def mask_padded_queries(mask: Tensor, valid: Tensor) -> Tensor:
    """Hide padding queries: nobody attends to them, and they attend only to themselves.

    A padding query keeps its diagonal entry open, so its softmax row is not all -inf
    (no NaN) and its output depends on nothing else. Real queries keep their row of
    ``mask`` minus the padding columns; if ``mask`` lets every query see itself (every
    builder here does), no row ends up fully blocked.

    Args:
        mask (Tensor[T, T] or Tensor[B, T, T]): bool, True = blocked.
        valid (Tensor[T] or Tensor[B, T]): bool, True = a real query, False = padding.

    Returns:
        Tensor[T, T] bool when both are shared by the batch, else Tensor[B, T, T] bool;
        True = blocked.

    Example:
        >>> from hybridmatch.attention import group_detr_mask, mask_padded_queries
        >>> mask_padded_queries(group_detr_mask(1, 3), torch.tensor([True, True, False])).int()
        tensor([[0, 0, 1],
                [0, 0, 1],
                [1, 1, 0]], dtype=torch.int32)
    """
    _check_mask_tensor(mask, "mask", caller="mask_padded_queries", allow_float=False)
    total = mask.shape[-1]
    _check_valid(valid, total, "valid", f"the mask's T = {total}")
    if mask.dim() == 3 and valid.dim() == 2 and mask.shape[0] != valid.shape[0]:
        raise ShapeError(
            f"mask_padded_queries: mask has {mask.shape[0]} images but valid has "
            f"{valid.shape[0]}; give one row of valid per image"
        )
    if valid.device != mask.device:
        raise ShapeError(
            f"mask_padded_queries: mask is on {mask.device} but valid on {valid.device}"
        )
    padding = ~valid
    blocked = mask | padding.unsqueeze(-2)  # padding columns blocked in every row
    others = ~torch.eye(total, dtype=torch.bool, device=mask.device)
    return torch.where(padding.unsqueeze(-1), others, blocked)


def to_additive_mask(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The additive float form of a bool mask: blocked -> -inf, allowed -> 0.

    :class:`torch.nn.MultiheadAttention` and ``scaled_dot_product_attention`` add a float
    mask to the attention logits, so both accept this form unchanged.

    Args:
        mask (Tensor[..., T, T]): bool, True = blocked.
        dtype: a floating dtype; use the attention's dtype under AMP (float16 holds -inf).

    Returns:
        Tensor[..., T, T] of ``dtype`` on the mask's device.

    Example:
        >>> from hybridmatch.attention import hybrid_attention_mask, to_additive_mask
        >>> to_additive_mask(hybrid_attention_mask(1, 1))
        tensor([[0., -inf],
                [-inf, 0.]])
    """
    _check_bool(mask, "to_additive_mask")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ShapeError(f"to_additive_mask: dtype must be a floating torch.dtype, got {dtype!r}")
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(mask, float("-inf"))


def to_sdpa_mask(mask: Tensor) -> Tensor:
    """Flip a blocked-mask into ``scaled_dot_product_attention``'s convention.

    Args:
        mask (Tensor[..., T, T]): bool, True = blocked (this module's convention).

    Returns:
        Tensor[..., T, T] bool, True = *may attend*, as
        :func:`torch.nn.functional.scaled_dot_product_attention` reads ``attn_mask``.
        Do not pass the result to :class:`torch.nn.MultiheadAttention`.

    Example:
        >>> from hybridmatch.attention import hybrid_attention_mask, to_sdpa_mask
        >>> to_sdpa_mask(hybrid_attention_mask(1, 1))
        tensor([[ True, False],
                [False,  True]])
    """
    _check_bool(mask, "to_sdpa_mask")
    return ~mask


def expand_mask(
    mask: Tensor,
    batch_size: int | None = None,
    num_heads: int | None = None,
    *,
    layout: Literal["mha", "sdpa"] = "mha",
) -> Tensor:
    """Per-image and per-head copies of a mask, in the layout an attention call takes.

    The values and their convention are kept (bool stays bool, float stays float; this
    function never flips True/False: call :func:`to_sdpa_mask` for SDPA, before or after).

    * ``layout="mha"``: ``Tensor[B * num_heads, T, T]``, the 3-D ``attn_mask`` of
      :class:`torch.nn.MultiheadAttention`; entry ``b * num_heads + h`` is image ``b``,
      head ``h`` (image-major, as the module reshapes its input). ``num_heads`` is
      required, and ``batch_size`` too unless ``mask`` is per image. The result is a
      materialised copy (MultiheadAttention needs the full first dimension).
    * ``layout="sdpa"``: ``Tensor[B, H, T, T]`` for
      :func:`torch.nn.functional.scaled_dot_product_attention`; an argument left ``None``
      gives a broadcastable dimension of size 1. The result is a view (no copy).

    Args:
        mask (Tensor[T, T] or Tensor[B, T, T]): bool or float, shared or per image.
        batch_size: number of images ``B``, int >= 1 (checked against a per-image mask).
        num_heads: number of attention heads ``H``, int >= 1.
        layout: ``"mha"`` or ``"sdpa"``.

    Returns:
        Tensor[B * H, T, T] (``"mha"``) or Tensor[B or 1, H or 1, T, T] (``"sdpa"``).

    Example:
        >>> from hybridmatch.attention import expand_mask, hybrid_attention_mask
        >>> mask = hybrid_attention_mask(300, 1500)
        >>> expand_mask(mask, batch_size=2, num_heads=8).shape
        torch.Size([16, 1800, 1800])
        >>> expand_mask(mask, num_heads=8, layout="sdpa").shape
        torch.Size([1, 8, 1800, 1800])
    """
    _check_mask_tensor(mask, "mask", caller="expand_mask", allow_float=True)
    if layout not in ("mha", "sdpa"):
        raise ShapeError(f"expand_mask: layout must be 'mha' or 'sdpa', got {layout!r}")
    if batch_size is not None:
        batch_size = _check_size(batch_size, "batch_size", minimum=1, maximum=None)
    if num_heads is not None:
        num_heads = _check_size(num_heads, "num_heads", minimum=1, maximum=None)
    if mask.dim() == 3:
        if batch_size is not None and batch_size != mask.shape[0]:
            raise ShapeError(
                f"expand_mask: mask is per image with B = {mask.shape[0]} but batch_size = "
                f"{batch_size}"
            )
        batch_size = mask.shape[0]
    total = mask.shape[-1]
    if layout == "sdpa":
        batch = mask if mask.dim() == 3 else mask.unsqueeze(0)
        batch = batch.unsqueeze(1)  # (B or 1, 1, T, T)
        return batch.expand(
            batch_size if batch_size is not None else batch.shape[0],
            num_heads if num_heads is not None else 1,
            total,
            total,
        )
    if num_heads is None:
        raise ShapeError(
            "expand_mask: layout='mha' needs num_heads (MultiheadAttention's 3-D attn_mask "
            "has B * num_heads entries); a 2-D mask can be passed to it as it is"
        )
    if batch_size is None:
        raise ShapeError(
            "expand_mask: layout='mha' with a shared (T, T) mask needs batch_size; a 2-D "
            "mask can also be passed to MultiheadAttention as it is"
        )
    batch = mask if mask.dim() == 3 else mask.unsqueeze(0)
    return (
        batch.unsqueeze(1)
        .expand(batch_size, num_heads, total, total)
        .reshape(batch_size * num_heads, total, total)
    )


def check_attention_mask(mask: Tensor, num_queries: int, *, name: str = "attn_mask") -> None:
    """Check that a mask fits the decoder's live number of queries and has no blocked row.

    Call it where the decoder receives the mask, with the query count it actually got:
    a mask built for training (one-to-one + one-to-many, or with denoising groups) is
    the wrong size in evaluation. A row with every entry blocked makes softmax return
    NaN for that query, so it is an error too.

    Args:
        mask (Tensor[T, T] or Tensor[N, T, T]): bool (True = blocked) or float additive
            (-inf = blocked); a 3-D mask is per image or per image and head.
        num_queries: the live number of queries ``T``, int >= 0.
        name: the mask's name in messages.

    Raises:
        ShapeError: the mask is not 2-D or 3-D, not square, not bool or floating, sized
            for another number of queries, holds NaN, or has a fully blocked row. The
            value checks read the mask (one synchronisation on a GPU).

    Example:
        >>> from hybridmatch.attention import check_attention_mask, hybrid_attention_mask
        >>> check_attention_mask(hybrid_attention_mask(300, 1500), 1800)
        >>> check_attention_mask(hybrid_attention_mask(300, 1500), 300)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hybridmatch.errors.ShapeError: attn_mask is built for 1800 queries but the decoder got 300...
    """
    num_queries = _check_size(num_queries, "num_queries")
    _check_mask_tensor(mask, name, caller="check_attention_mask", allow_float=True)
    size = mask.shape[-1]
    if size != num_queries:
        message = f"{name} is built for {size} queries but the decoder got {num_queries}"
        if size > num_queries:
            message += (
                f": a training layout (e.g. {num_queries} one-to-one + {size - num_queries} "
                f"one-to-many queries, or extra denoising queries) used with fewer queries; "
                f"in eval, pass no mask / build it for the one-to-one queries only "
                f"(hybrid_attention_mask({num_queries}, 0))"
            )
        else:
            message += (
                ": the mask leaves queries out; rebuild it for the live layout on every step "
                "(the number of denoising queries changes with the objects per batch)"
            )
        raise ShapeError(message)
    if num_queries == 0:
        return
    if mask.dtype == torch.bool:
        blocked = mask
    else:
        check_values(
            ValueCheck(
                mask, Arg(name), "finite, or -inf where blocked (an additive mask): +inf or NaN makes "
                "attention return NaN", mask=torch.isnan(mask) | torch.isposinf(mask), fix="build it with to_additive_mask",
            )
        )
        blocked = mask == float("-inf")
    full_rows = blocked.all(dim=-1)
    if bool(full_rows.any()):
        where = full_rows.nonzero()[0].tolist()
        index = ", ".join(str(i) for i in where)
        raise ShapeError(
            f"{name}[{index}] blocks every key: softmax over that row gives NaN; let each "
            f"query see at least itself (a padding query: see mask_padded_queries)"
        )


# --------------------------------------------------------------------------------------------
# Private helpers.


#: The most queries a (T, T) mask can have: T * T elements must fit a tensor (int64 sizes).
MAX_QUERIES = 3_037_000_499


def _check_size(value: object, name: str, *, minimum: int = 0, maximum: int | None = MAX_QUERIES) -> int:
    """A number of queries (or, with ``maximum=None``, another size) as an int."""
    hint = "a (T, T) mask of more queries has more elements than a tensor can hold" if maximum else ""
    return check_int(value, name, minimum=minimum, maximum=maximum, error=ShapeError, hint=hint)


def _check_groups(groups: Sequence[QueryGroup]) -> list[QueryGroup]:
    groups = list(groups)
    names: set[str] = set()
    for position, group in enumerate(groups):
        if not isinstance(group, QueryGroup):
            raise ShapeError(
                f"groups[{position}] must be a QueryGroup, got {type(group).__name__}"
            )
        if group.name in names:
            raise ShapeError(f"groups: the name {group.name!r} is used twice; names must be unique")
        names.add(group.name)
    return groups


def _check_denoising_sees(
    denoising_sees: Sequence[str] | str | None, groups: list[QueryGroup]
) -> list[str]:
    matching = [group.name for group in groups if group.kind == "matching"]
    if denoising_sees is None:
        return matching
    names = [denoising_sees] if isinstance(denoising_sees, str) else list(denoising_sees)
    for name in names:
        if name not in matching:
            raise ShapeError(
                f"denoising_sees names {name!r}, which is not a matching group of the layout "
                f"(matching groups: {matching})"
            )
    return names


def _check_bool(mask: object, caller: str) -> None:
    if not isinstance(mask, Tensor):
        raise ShapeError(f"{caller}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ShapeError(
            f"{caller}: mask must be bool (True = blocked), got {mask.dtype}; build it with "
            f"a hybridmatch.attention builder"
        )


def _check_mask_tensor(mask: object, name: str, *, caller: str, allow_float: bool) -> None:
    if not isinstance(mask, Tensor):
        raise ShapeError(f"{caller}: {name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not (allow_float and mask.dtype.is_floating_point):
        kinds = "bool or floating" if allow_float else "bool"
        raise ShapeError(f"{caller}: {name} must be {kinds}, got {mask.dtype}")
    if mask.dim() not in (2, 3) or mask.shape[-1] != mask.shape[-2]:
        raise ShapeError(
            f"{caller}: {name} must have shape (T, T) or (N, T, T), got {tuple(mask.shape)}"
        )


def _check_valid(valid: object, size: int, name: str, expected: str) -> None:
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        got = valid.dtype if isinstance(valid, Tensor) else type(valid).__name__
        raise ShapeError(f"{name} must be a bool tensor (True = real query), got {got}")
    if valid.dim() not in (1, 2) or valid.shape[-1] != size:
        raise ShapeError(
            f"{name} must have shape ({size},) or (B, {size}) to match {expected}, got "
            f"{tuple(valid.shape)}"
        )
