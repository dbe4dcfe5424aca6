"""Ground-truth targets: the DETR list-of-dicts <-> a padded batch, and H-DETR's GT replication.

The public format is the one the DETR family speaks: a list of ``B`` per-image dicts

* ``labels``: ``Tensor[M_i]`` integer (int64 by convention),
* ``boxes``: ``Tensor[M_i, 4]`` floating, cxcywh normalised to [0, 1],
* optional per-object keys whose first dimension is ``M_i`` (``masks`` ``[M_i, H, W]``,
  ``keypoints`` ``[M_i, J, 3]`` or ``[M_i, J * 3]``, ``area`` ``[M_i]``, ``iscrowd`` ``[M_i]``,
  anything else of that form),
* per-image keys (``image_id``, ``size``, ``orig_size``, ...), which are never padded or tiled.

An image without objects has ``labels`` ``[0]`` and ``boxes`` ``[0, 4]``.

**Which keys are per-object.** ``labels`` and ``boxes`` always are. Any other key is per-object
when it is present in every image and holds a tensor whose first dimension equals that image's
``M_i`` in every image, unless its name is one of :data:`PER_IMAGE_KEYS` (so a two-object image
whose ``size`` has shape ``[2]`` is not mistaken for per-object data). When every image of a
batch happens to have the same ``M`` a per-image tensor of length ``M`` under another name is
indistinguishable from per-object data: pass ``per_object_keys=`` to say which keys are
per-object and detection is skipped.

Values are not inspected (no NaN or label-range scan): every check here reads metadata only
(dtype, shape, device), so nothing waits on the GPU.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ._warnings import warn_once
from .errors import InvalidTargetError, ShapeError
from .validation import check_int

__all__ = [
    "PER_IMAGE_KEYS",
    "PADDING_LABEL",
    "PADDING_BOX",
    "PaddedTargets",
    "pad_targets",
    "repeat_targets",
    "repeat_padded_targets",
    "original_target_index",
    "repeated_index",
    "split_repeated_index",
]

#: Keys that always describe the whole image, never one object, whatever their shape.
PER_IMAGE_KEYS: frozenset[str] = frozenset(
    {"image_id", "size", "orig_size", "orig_target_sizes", "image_size"}
)

#: ``PaddedTargets.labels`` holds this value at padded (invalid) slots.
PADDING_LABEL: int = -1

#: ``PaddedTargets.boxes`` holds this box at padded slots: the whole image in cxcywh. It is
#: finite and has a positive area, so IoU / GIoU / L1 costs stay finite on padding (a zero box
#: would make a GIoU union of 0 and a 0/0); padded entries must still be masked with ``valid``.
PADDING_BOX: tuple[float, float, float, float] = (0.5, 0.5, 1.0, 1.0)

_CORE_KEYS = ("labels", "boxes")


@dataclass
class PaddedTargets:
    """A batch of targets padded to the largest image, ``M_max = max_i M_i``.

    Valid entries of each image are compacted to the left: image ``b``'s objects sit at
    ``[b, :num_targets_list[b]]`` in their original order.

    Every tensor is also readable by key, ``padded["boxes"]``, ``padded["keypoints"]``, ...:
    ``labels``, ``boxes``, ``valid`` and the ``extras``; this is how costs read targets.

    Attributes:
        labels (Tensor[B, M_max] int64): class ids; :data:`PADDING_LABEL` (-1) at padding.
        boxes (Tensor[B, M_max, 4] floating or None): cxcywh normalised; :data:`PADDING_BOX` at
            padding. ``None`` only for targets without boxes, padded with ``require_boxes=False``.
        valid (Tensor[B, M_max] bool): True at real objects.
        num_targets (Tensor[B] int64): objects per image, on the same device as ``labels``.
        num_targets_list (list[int]): the same counts on the host (read without a device sync).
        extras (dict[str, Tensor[B, M_max, ...]]): the other per-object keys, zeros at padding.

    Per-image keys (``image_id``, ``size``, ...) are not kept.

    Example:
        >>> from hybridmatch import pad_targets
        >>> padded = pad_targets([{"labels": torch.tensor([3, 1]), "boxes": torch.rand(2, 4)},
        ...                       {"labels": torch.tensor([2]), "boxes": torch.rand(1, 4)}])
        >>> padded.labels.shape, padded.valid.tolist(), padded.num_targets_list
        (torch.Size([2, 2]), [[True, True], [True, False]], [2, 1])
    """

    labels: Tensor
    boxes: Tensor | None
    valid: Tensor
    num_targets: Tensor
    num_targets_list: list[int]
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Metadata checks only: shapes, dtypes and the host-side counts.
        if self.labels.ndim != 2:
            raise ShapeError(
                f"PaddedTargets.labels must be (B, M_max), got shape {tuple(self.labels.shape)}"
            )
        b, m = self.labels.shape
        expected = {
            "boxes": (b, m, 4),
            "valid": (b, m),
            "num_targets": (b,),
        }
        for name, shape in expected.items():
            if name == "boxes" and self.boxes is None:
                continue
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ShapeError(
                    f"PaddedTargets.{name} must have shape {shape} to match labels "
                    f"(B, M_max) = {(b, m)}, got {got}"
                )
        if self.valid.dtype != torch.bool:
            raise ShapeError(f"PaddedTargets.valid must be bool, got {self.valid.dtype}")
        if self.labels.dtype != torch.int64 or self.num_targets.dtype != torch.int64:
            raise ShapeError(
                "PaddedTargets.labels and num_targets must be int64, got "
                f"{self.labels.dtype} and {self.num_targets.dtype}"
            )
        if len(self.num_targets_list) != b:
            raise ShapeError(
                f"PaddedTargets.num_targets_list has {len(self.num_targets_list)} entries "
                f"for a batch of B = {b}"
            )
        if any(n < 0 or n > m for n in self.num_targets_list):
            raise ShapeError(
                f"PaddedTargets.num_targets_list {self.num_targets_list} must lie in "
                f"[0, M_max = {m}]"
            )
        for key, value in self.extras.items():
            if tuple(value.shape[:2]) != (b, m):
                raise ShapeError(
                    f"PaddedTargets.extras[{key!r}] must start with (B, M_max) = {(b, m)}, "
                    f"got shape {tuple(value.shape)}"
                )

    def __getitem__(self, key: str) -> Tensor:
        """The padded tensor of ``key``: ``labels``, ``boxes``, ``valid`` or an extra key."""
        if key in ("labels", "valid") or (key == "boxes" and self.boxes is not None):
            return getattr(self, key)  # type: ignore[no-any-return]
        try:
            return self.extras[key]
        except KeyError:
            raise KeyError(
                f"PaddedTargets has no {key!r}; it holds {list(self.keys())}. Pad it with "
                f"pad_targets(..., per_object_keys=[{key!r}, ...])"
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        """The keys readable with ``padded[key]``."""
        core = ["labels", "boxes", "valid"] if self.boxes is not None else ["labels", "valid"]
        return core + list(self.extras)

    @property
    def batch_size(self) -> int:
        """``B``, the number of images."""
        return int(self.labels.shape[0])

    @property
    def max_targets(self) -> int:
        """``M_max``, the padded number of objects per image."""
        return int(self.labels.shape[1])

    @property
    def device(self) -> torch.device:
        """The device every tensor of the batch lives on."""
        return self.labels.device

    def to(self, device: torch.device | str) -> PaddedTargets:
        """Return a copy with every tensor on ``device`` (the host-side counts are shared)."""
        return PaddedTargets(
            labels=self.labels.to(device),
            boxes=None if self.boxes is None else self.boxes.to(device),
            valid=self.valid.to(device),
            num_targets=self.num_targets.to(device),
            num_targets_list=list(self.num_targets_list),
            extras={key: value.to(device) for key, value in self.extras.items()},
        )

    def unpad(self) -> list[dict[str, Tensor]]:
        """Split back into the list-of-dicts format.

        Returns:
            list of ``B`` dicts with ``labels`` ``Tensor[M_b]`` int64, ``boxes`` ``Tensor[M_b, 4]``
            and every key of ``extras`` as ``Tensor[M_b, ...]``. The tensors are views into this
            batch (no copy, no device sync). Per-image keys dropped by :func:`pad_targets` are
            not restored.
        """
        out: list[dict[str, Tensor]] = []
        for b, n in enumerate(self.num_targets_list):
            image = {"labels": self.labels[b, :n]}
            if self.boxes is not None:
                image["boxes"] = self.boxes[b, :n]
            for key, value in self.extras.items():
                image[key] = value[b, :n]
            out.append(image)
        return out


def pad_targets(
    targets: Sequence[Mapping[str, Any]],
    *,
    per_object_keys: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    require_boxes: bool = True,
) -> PaddedTargets:
    """Pad a DETR list of per-image target dicts into one :class:`PaddedTargets` batch.

    Args:
        targets: ``B`` dicts, each with ``labels`` ``Tensor[M_i]`` integer and ``boxes``
            ``Tensor[M_i, 4]`` floating (cxcywh normalised), plus optional per-object and
            per-image keys (see the module docstring for how they are told apart).
        per_object_keys: the extra per-object keys to pad (``labels`` and ``boxes`` are always
            padded); ``None`` detects them. Explicit keys must be present in every image with
            first dimension ``M_i``.
        device: where the result lives; ``None`` keeps the targets' device (CPU when ``B = 0``).
            Without it every per-object tensor must already be on one device.
        require_boxes: with ``False``, targets without ``boxes`` (masks or keypoints alone) are
            accepted and give ``boxes=None``; boxes present in some images only still raise.

    Returns:
        :class:`PaddedTargets` with ``labels`` ``Tensor[B, M_max]`` int64 (-1 at padding),
        ``boxes`` ``Tensor[B, M_max, 4]`` (dtype promoted over images; :data:`PADDING_BOX` at
        padding), ``valid`` ``Tensor[B, M_max]`` bool and ``extras[key]``
        ``Tensor[B, M_max, ...]`` (zeros at padding). ``B = 0`` or all images empty give
        ``M_max = 0``. With ``B = 0`` ``extras`` is empty (no trailing shape is known).

    Raises:
        InvalidTargetError: a missing ``labels`` / ``boxes``, a wrong dtype or shape, a
            per-object key whose length is not ``M_i``, an extra key whose trailing shape
            differs between images, or tensors on different devices (without ``device``).

    Example:
        >>> import torch
        >>> from hybridmatch.targets import pad_targets
        >>> batch = pad_targets([
        ...     {"labels": torch.tensor([3, 7]), "boxes": torch.rand(2, 4), "image_id": 1},
        ...     {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        ... ])
        >>> batch.labels
        tensor([[ 3,  7],
                [-1, -1]])
        >>> batch.num_targets_list
        [2, 0]
    """
    counts, has_boxes = _validate_core(targets, caller="pad_targets", require_boxes=require_boxes)
    keys = _resolve_per_object_keys(targets, counts, per_object_keys, caller="pad_targets")
    if device is None:
        _check_one_device(targets, keys, has_boxes)
        out_device = targets[0]["labels"].device if len(targets) > 0 else torch.device("cpu")
    else:
        out_device = torch.device(device)

    batch_size = len(targets)
    max_targets = max(counts, default=0)
    num_targets = torch.tensor(counts, dtype=torch.int64, device=out_device)
    valid = torch.arange(max_targets, device=out_device)[None, :] < num_targets[:, None]

    if batch_size == 0:
        return PaddedTargets(
            labels=torch.zeros((0, 0), dtype=torch.int64, device=out_device),
            boxes=torch.zeros((0, 0, 4), device=out_device) if has_boxes else None,
            valid=valid,
            num_targets=num_targets,
            num_targets_list=[],
        )

    labels = _pad(
        [t["labels"] for t in targets], torch.int64, out_device, padding_value=PADDING_LABEL
    )
    boxes: Tensor | None = None
    if has_boxes:
        box_dtype = _promoted_dtype([t["boxes"] for t in targets])
        boxes = _pad([t["boxes"] for t in targets], box_dtype, out_device, padding_value=0.0)
        # torch.where rather than boxes[~valid] = ...: boolean-mask assignment would sync the GPU.
        pad_box = torch.tensor(PADDING_BOX, dtype=box_dtype, device=out_device)
        boxes = torch.where(valid[..., None], boxes, pad_box)

    extras: dict[str, Tensor] = {}
    for key in keys:
        values = [t[key] for t in targets]
        trailing = tuple(values[0].shape[1:])
        for i, value in enumerate(values):
            if tuple(value.shape[1:]) != trailing:
                raise InvalidTargetError(
                    f"pad_targets: targets[{i}][{key!r}] has shape {tuple(value.shape)} but "
                    f"targets[0][{key!r}] has shape {tuple(values[0].shape)}; a padded key needs "
                    f"the same trailing shape (after the first, per-object dimension) in every "
                    f"image. Resize or pad {key!r} to a common shape first, or leave it out with "
                    f"per_object_keys=[...]"
                )
        extras[key] = _pad(values, _promoted_dtype(values), out_device, padding_value=0)

    return PaddedTargets(
        labels=labels,
        boxes=boxes,
        valid=valid,
        num_targets=num_targets,
        num_targets_list=list(counts),
        extras=extras,
    )


def repeat_targets(
    targets: Sequence[Mapping[str, Any]],
    k: int,
    *,
    per_object_keys: Sequence[str] | None = None,
    require_boxes: bool = True,
    label_key: str = "labels",
) -> list[dict[str, Any]]:
    """Repeat every image's ground truth ``k`` times, GT-major, as H-DETR's one-to-many branch does.

    Each per-object tensor ``t`` of shape ``[M_i, ...]`` becomes ``t.repeat(k, 1, ..., 1)`` of
    shape ``[k * M_i, ...]`` (``labels.repeat(k)``, ``boxes.repeat(k, 1)``): the order is
    ``[g_1 .. g_M, g_1 .. g_M, ...]``, so replicated index ``r`` is original object ``r % M_i``
    (see :func:`original_target_index`). Per-image keys are carried over unchanged (the same
    objects, in new dicts). Per-object keys are told apart as in :func:`pad_targets`.

    Args:
        targets: ``B`` dicts with ``labels`` ``Tensor[M_i]`` and ``boxes`` ``Tensor[M_i, 4]``.
        k: the number of copies ``K``, an ``int >= 1`` (H-DETR uses 6).
        per_object_keys: the extra per-object keys to tile; ``None`` detects them.
        require_boxes: with ``False``, targets without ``boxes`` are accepted (keypoints-
            or masks-only targets); with ``True`` every image needs them.
        label_key: the key of the class labels, ``"labels"`` (DETR) or ``"class_labels"``
            (Hugging Face); it sets ``M_i`` and is tiled like ``labels``.

    Returns:
        ``B`` new dicts with ``labels`` ``Tensor[K * M_i]``, ``boxes`` ``Tensor[K * M_i, 4]``,
        every per-object key as ``Tensor[K * M_i, ...]`` and the per-image keys as given.

    Raises:
        InvalidTargetError: ``k`` is not an int >= 1, or the targets are malformed.

    Example:
        >>> import torch
        >>> from hybridmatch.targets import repeat_targets
        >>> out = repeat_targets([{"labels": torch.tensor([4, 9]), "boxes": torch.rand(2, 4)}], 3)
        >>> out[0]["labels"]
        tensor([4, 9, 4, 9, 4, 9])
    """
    k = _check_copies(k, caller="repeat_targets")
    counts, _ = _validate_core(
        targets, caller="repeat_targets", require_boxes=require_boxes, label_key=label_key
    )
    keys = set(_resolve_per_object_keys(targets, counts, per_object_keys, caller="repeat_targets"))
    keys.update(("boxes", label_key))
    out: list[dict[str, Any]] = []
    for image in targets:
        repeated: dict[str, Any] = {}
        for key, value in image.items():
            if key in keys:
                repeated[key] = value.repeat(k, *([1] * (value.ndim - 1)))
            else:
                repeated[key] = value
        out.append(repeated)
    return out


def repeat_padded_targets(padded: PaddedTargets, k: int) -> PaddedTargets:
    """Repeat a padded batch ``k`` times GT-major, per image, without a loop over objects.

    The result equals ``pad_targets(repeat_targets(padded.unpad(), k))``: image ``b``'s first
    ``k * M_b`` slots hold its ``M_b`` objects repeated ``k`` times (slot ``j`` is object
    ``j % M_b``), compacted to the left; the rest is padding.

    Args:
        padded: a batch with ``M_max`` slots per image.
        k: the number of copies ``K``, an ``int >= 1``.

    Returns:
        :class:`PaddedTargets` with ``M_max' = K * M_max`` slots: ``labels``
        ``Tensor[B, K * M_max]``, ``boxes`` ``Tensor[B, K * M_max, 4]``, ``extras[key]``
        ``Tensor[B, K * M_max, ...]``, ``num_targets = K * padded.num_targets``.

    Example:
        >>> from hybridmatch import pad_targets
        >>> from hybridmatch.targets import repeat_padded_targets
        >>> padded = pad_targets([{"labels": torch.tensor([3, 1]), "boxes": torch.rand(2, 4)}])
        >>> repeat_padded_targets(padded, 3).labels                # GT-major: [g1 g2 g1 g2 g1 g2]
        tensor([[3, 1, 3, 1, 3, 1]])
    """
    k = _check_copies(k, caller="repeat_padded_targets")
    device = padded.device
    batch_size, max_targets = padded.batch_size, padded.max_targets
    counts = padded.num_targets[:, None]  # (B, 1)
    slot = torch.arange(k * max_targets, device=device)[None, :]  # (1, K * M_max)
    valid = slot < k * counts  # (B, K * M_max)
    # Slot j of image b reads object j % M_b; images without objects read slot 0 (masked out).
    source = split_repeated_index(slot, counts.clamp(min=1))[1]
    rows = torch.arange(batch_size, device=device)[:, None]

    labels = torch.where(valid, padded.labels[rows, source], PADDING_LABEL)
    boxes: Tensor | None = None
    if padded.boxes is not None:
        pad_box = torch.tensor(PADDING_BOX, dtype=padded.boxes.dtype, device=device)
        boxes = torch.where(valid[..., None], padded.boxes[rows, source], pad_box)
    extras: dict[str, Tensor] = {}
    for key, value in padded.extras.items():
        gathered = value[rows, source]
        mask = valid.reshape(valid.shape + (1,) * (gathered.ndim - 2))
        extras[key] = torch.where(mask, gathered, torch.zeros((), dtype=value.dtype, device=device))

    return PaddedTargets(
        labels=labels,
        boxes=boxes,
        valid=valid,
        num_targets=padded.num_targets * k,
        num_targets_list=[k * n for n in padded.num_targets_list],
        extras=extras,
    )


def original_target_index(
    replicated_index: Tensor, num_targets: int | Sequence[int] | Tensor
) -> Tensor:
    """Map indices into GT-major repeated targets back to the original objects: ``r % M``.

    Args:
        replicated_index (Tensor[...] integer): indices into targets tiled by
            :func:`repeat_targets`; ``-1`` (or any negative value) means unmatched and stays
            ``-1``.
        num_targets: ``M``, the number of *original* objects: an int for one image, or a
            per-image ``Tensor[B]`` / list of ``B`` ints, aligned with the first dimension of
            ``replicated_index`` (e.g. ``(B, N)`` query -> target indices).

    Returns:
        Tensor[...] int64 on ``replicated_index``'s device, the same shape: original object
        index in ``[0, M)``, or -1.

    Raises:
        InvalidTargetError: an index ``>= 0`` for an image with ``M = 0``, or a negative ``M``.
            For a CUDA ``Tensor`` ``num_targets`` this check is skipped (it would cost a
            device sync) and such entries come back as -1.
        ShapeError: ``replicated_index`` is not an integer tensor or ``num_targets`` does
            not line up with it.

    Example:
        >>> import torch
        >>> from hybridmatch.targets import original_target_index
        >>> original_target_index(torch.tensor([[0, 4, -1], [2, 1, 3]]), torch.tensor([3, 2]))
        tensor([[ 0,  1, -1],
                [ 0,  1,  1]])
    """
    if not isinstance(replicated_index, Tensor):
        raise ShapeError(
            f"original_target_index: replicated_index must be a Tensor, got "
            f"{type(replicated_index).__name__}"
        )
    if replicated_index.dtype.is_floating_point or replicated_index.dtype.is_complex or (
        replicated_index.dtype == torch.bool
    ):
        raise ShapeError(
            f"original_target_index: replicated_index must be an integer tensor, got "
            f"{replicated_index.dtype}; pass the int64 indices a matcher returns"
        )
    index = replicated_index.to(torch.int64)
    device = index.device

    if isinstance(num_targets, numbers.Integral) and not isinstance(num_targets, bool):
        m = int(num_targets)
        if m < 0:
            raise InvalidTargetError(
                f"original_target_index: num_targets must be >= 0, got {m}"
            )
        if m == 0:
            # Only the degenerate case reads the data.
            if index.numel() > 0 and bool((index >= 0).any()):
                raise InvalidTargetError(
                    "original_target_index: num_targets is 0 (an image without objects) but "
                    "replicated_index holds indices >= 0; nothing can be matched to an empty "
                    "image, so every index must be -1"
                )
            return torch.full_like(index, -1)
        return torch.where(index < 0, -1, split_repeated_index(index, m)[1])

    if isinstance(num_targets, Tensor):
        counts = num_targets
    elif isinstance(num_targets, Sequence) and not isinstance(num_targets, str):
        counts = torch.tensor(list(num_targets), dtype=torch.int64)
    else:
        raise ShapeError(
            f"original_target_index: num_targets must be an int, a list of ints or a Tensor[B], "
            f"got {type(num_targets).__name__}"
        )
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise ShapeError(
            f"original_target_index: num_targets must hold integers, got {counts.dtype}"
        )
    if counts.ndim > 1 or (
        counts.ndim == 1 and (index.ndim == 0 or index.shape[0] != counts.shape[0])
    ):
        raise ShapeError(
            f"original_target_index: num_targets of shape {tuple(counts.shape)} must be a scalar "
            f"or (B,) matching the first dimension of replicated_index, whose shape is "
            f"{tuple(index.shape)}"
        )
    on_host = counts.device.type == "cpu"
    per_image = counts.ndim == 1
    counts = counts.to(device=device, dtype=torch.int64)
    counts = counts.reshape(counts.shape + (1,) * (index.ndim - counts.ndim))
    if on_host and index.device.type == "cpu":
        if bool((counts < 0).any()):
            raise InvalidTargetError(
                f"original_target_index: num_targets must be >= 0, got {counts.flatten().tolist()}"
            )
        bad = (index >= 0) & (counts == 0)
        if bool(bad.any()):
            position = [int(i) for i in bad.nonzero()[0].tolist()]
            image = f"image {position[0]}" if per_image else "the image"
            raise InvalidTargetError(
                f"original_target_index: replicated_index{position} = "
                f"{int(index[tuple(position)])} but {image} has num_targets = 0; an image "
                f"without objects can only have unmatched (-1) indices"
            )
    return torch.where((index < 0) | (counts == 0), -1, split_repeated_index(index, counts.clamp(min=1))[1])


# --------------------------------------------------------------------------------------------
# Private helpers shared by the functions above.


def repeated_index(copy: Any, target: Any, num_targets: Any) -> Any:
    """The GT-major rule: copy ``r`` of target ``j`` is index ``r * M + j`` of the repeated targets.

    :func:`repeat_targets` tiles an image's ``M`` objects ``[g_1 .. g_M, g_1 .. g_M, ...]``,
    as H-DETR does; this function and its inverse :func:`split_repeated_index` are the one
    place that layout is written down. Every argument may be an int, a NumPy array or a
    Tensor (broadcast as the operators ``*`` and ``+`` do); nothing is validated.

    Args:
        copy: ``r``, the copy number, in ``[0, K)``.
        target: ``j``, the original object, in ``[0, M)``.
        num_targets: ``M``, the original objects of the image.

    Returns:
        ``r * M + j``, of the arguments' type.

    Example:
        >>> from hybridmatch.targets import repeated_index
        >>> repeated_index(2, 1, 3)   # third copy of object 1 among 3 objects
        7
    """
    return copy * num_targets + target


def split_repeated_index(index: Any, num_targets: Any) -> tuple[Any, Any]:
    """The inverse of :func:`repeated_index`: ``(r, j) = (index // M, index % M)``.

    ``M`` must be positive where ``index`` is used (an image without objects has no
    copies). Ints, NumPy arrays and Tensors are accepted as in :func:`repeated_index`;
    :func:`original_target_index` is the validated, ``-1``-preserving form for matches.

    Args:
        index: an index into the GT-major repeated targets, ``>= 0``.
        num_targets: ``M``, the original objects of the image, ``>= 1``.

    Returns:
        ``(copy, target)``, of the arguments' type.

    Example:
        >>> from hybridmatch.targets import split_repeated_index
        >>> split_repeated_index(7, 3)
        (2, 1)
    """
    return index // num_targets, index % num_targets


def _check_copies(k: object, *, caller: str) -> int:
    return check_int(
        k, "k (the number of copies of each target)", minimum=1, where=caller, error=InvalidTargetError,
        hint="H-DETR uses k=6, k=1 gives one-to-one targets",
    )


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _validate_core(
    targets: Sequence[Mapping[str, Any]], *, caller: str, require_boxes: bool = True, label_key: str = "labels"
) -> tuple[list[int], bool]:
    """Check ``labels`` (under ``label_key``) and ``boxes`` of every image; return ``M_i`` per image and whether boxes exist."""
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise InvalidTargetError(
            f"{caller}: targets must be a list of per-image dicts, got "
            f"{type(targets).__name__}; wrap a single image as [target]"
        )
    counts: list[int] = []
    with_boxes = [isinstance(image, Mapping) and "boxes" in image for image in targets]
    has_boxes = require_boxes or (len(targets) > 0 and all(with_boxes))
    if not require_boxes and any(with_boxes) and not all(with_boxes):
        i = with_boxes.index(False)
        raise InvalidTargetError(
            f"{caller}: targets[{i}] has no 'boxes' but targets[{with_boxes.index(True)}] has; "
            f"give every image boxes (shape (0, 4) when it has no objects) or none"
        )
    for i, image in enumerate(targets):
        if not isinstance(image, Mapping):
            raise InvalidTargetError(
                f"{caller}: targets[{i}] must be a dict with {label_key!r} and 'boxes', got "
                f"{type(image).__name__}"
            )
        for key in (label_key, "boxes") if has_boxes else (label_key,):
            if key not in image:
                raise InvalidTargetError(
                    f"{caller}: targets[{i}] has no {key!r} (keys: {sorted(map(str, image))}); "
                    f"every image needs {label_key!r} (M_i,) int64 and 'boxes' (M_i, 4) cxcywh, "
                    f"with {label_key}=torch.zeros(0, dtype=torch.int64) and boxes=torch.zeros(0, 4) "
                    f"for an image without objects"
                )
            if not isinstance(image[key], Tensor):
                raise InvalidTargetError(
                    f"{caller}: targets[{i}][{key!r}] must be a Tensor, got "
                    f"{type(image[key]).__name__}; convert it with torch.as_tensor"
                )
        labels = image[label_key]
        if not _is_integer_dtype(labels.dtype):
            raise InvalidTargetError(
                f"{caller}: targets[{i}][{label_key!r}] has dtype {labels.dtype}; labels must be "
                f"integer class ids, e.g. labels.to(torch.int64) (note torch.tensor([]) is "
                f"float32: build empty labels with dtype=torch.int64)"
            )
        if labels.ndim != 1:
            raise InvalidTargetError(
                f"{caller}: targets[{i}][{label_key!r}] has shape {tuple(labels.shape)}; labels must "
                f"be 1-D (M_i,), e.g. labels.flatten() or labels.squeeze(-1)"
            )
        counts.append(int(labels.shape[0]))
        if not has_boxes:
            continue
        boxes = image["boxes"]
        if not boxes.dtype.is_floating_point:
            raise InvalidTargetError(
                f"{caller}: targets[{i}]['boxes'] has dtype {boxes.dtype}; boxes must be "
                f"floating cxcywh normalised to [0, 1], e.g. boxes.float() after normalising"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidTargetError(
                f"{caller}: targets[{i}]['boxes'] has shape {tuple(boxes.shape)}; boxes must be "
                f"(M_i, 4) cxcywh, with shape (0, 4) for an image without objects"
            )
        if boxes.shape[0] != labels.shape[0]:
            raise InvalidTargetError(
                f"{caller}: targets[{i}] has {labels.shape[0]} labels but {boxes.shape[0]} "
                f"boxes; {label_key!r} and 'boxes' need one entry per object"
            )
    return counts, has_boxes


def _resolve_per_object_keys(
    targets: Sequence[Mapping[str, Any]],
    counts: list[int],
    per_object_keys: Sequence[str] | None,
    *,
    caller: str,
) -> tuple[str, ...]:
    """The per-object keys other than ``labels`` / ``boxes``, in first-seen order."""
    if per_object_keys is not None:
        if isinstance(per_object_keys, str):
            raise InvalidTargetError(
                f"{caller}: per_object_keys must be a list of key names, got the string "
                f"{per_object_keys!r}; write per_object_keys=[{per_object_keys!r}]"
            )
        keys = tuple(dict.fromkeys(k for k in per_object_keys if k not in _CORE_KEYS))
        for i, (image, m) in enumerate(zip(targets, counts)):
            for key in keys:
                if key not in image:
                    raise InvalidTargetError(
                        f"{caller}: per_object_keys names {key!r} but targets[{i}] has no "
                        f"{key!r}; add it to every image (first dimension M_i) or drop it "
                        f"from per_object_keys"
                    )
                value = image[key]
                if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != m:
                    got = (
                        f"shape {tuple(value.shape)}"
                        if isinstance(value, Tensor)
                        else type(value).__name__
                    )
                    raise InvalidTargetError(
                        f"{caller}: targets[{i}][{key!r}] is listed in per_object_keys but has "
                        f"{got}; a per-object key needs a tensor whose first dimension is "
                        f"M_i = len(labels) = {m}. Fix the data or drop {key!r} from "
                        f"per_object_keys"
                    )
        return keys

    candidates: dict[str, None] = {}
    for image in targets:
        for key in image:
            if key not in _CORE_KEYS and key not in PER_IMAGE_KEYS:
                candidates.setdefault(key, None)
    keys_list: list[str] = []
    for key in candidates:
        present = [(image[key], m) for image, m in zip(targets, counts) if key in image]
        matches = all(
            isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == m
            for value, m in present
        )
        if not matches:
            continue
        if len(present) == len(targets):
            keys_list.append(key)
        else:
            warn_once(
                f"targets.partial_key.{key}",
                f"{caller}: key {key!r} has one row per object but is missing from some images, "
                f"so it is treated as per-image (not padded or tiled); add it to every image "
                f"and pass per_object_keys=[{key!r}, ...] if it is per-object data",
            )
    return tuple(keys_list)


def _check_one_device(targets: Sequence[Mapping[str, Any]], keys: Sequence[str], has_boxes: bool) -> None:
    first: tuple[str, torch.device] | None = None
    core = _CORE_KEYS if has_boxes else ("labels",)
    for i, image in enumerate(targets):
        for key in (*core, *keys):
            value_device = image[key].device
            if first is None:
                first = (f"targets[{i}][{key!r}]", value_device)
            elif value_device != first[1]:
                raise InvalidTargetError(
                    f"pad_targets: targets[{i}][{key!r}] is on {value_device} but {first[0]} is "
                    f"on {first[1]}; move every target tensor to one device, or pass "
                    f"device=... to pad_targets to gather them there"
                )


def _promoted_dtype(values: Sequence[Tensor]) -> torch.dtype:
    dtype = values[0].dtype
    for value in values[1:]:
        dtype = torch.promote_types(dtype, value.dtype)
    return dtype


def _pad(
    values: Sequence[Tensor], dtype: torch.dtype, device: torch.device, *, padding_value: float
) -> Tensor:
    """Stack ``[M_i, ...]`` tensors into ``[B, M_max, ...]``, filling with ``padding_value``."""
    return pad_sequence(
        [value.to(device=device, dtype=dtype) for value in values],
        batch_first=True,
        padding_value=padding_value,
    )
