"""The matcher: ``Matcher(cost, assigner)``, ``(outputs, targets) -> indices``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..costs import Cost
from ..errors import (
    HybridMatchError,
    InfeasibleError,
    InvalidCostError,
    InvalidPredictionError,
    InvalidTargetError,
    ShapeError,
)
from ..solvers import assignment_to_pairs
from ..targets import PaddedTargets, pad_targets, repeated_index
from ..validation import check_tensor
from .assigners import Assigner, Groups, Hungarian, TopK

__all__ = ["Matcher", "Matches", "assignment_to_repeated"]

#: DETR's index format, per image ``(pred_idx, tgt_idx)`` int64, sorted by ``pred_idx``.
Matches = list[tuple[Tensor, Tensor]]
Targets = Sequence[Mapping[str, Any]]


class Matcher(torch.nn.Module):
    """A cost and an assigner: ``(outputs, targets) -> [(pred_idx, tgt_idx), ...]``.

    The cost turns the outputs and the padded targets into ``Tensor[B, N, M]``; the
    assigner turns that into the target of each query. The matcher pads exactly the
    target keys the cost declares (``cost.target_keys``: labels, boxes, keypoints, masks,
    area, anything per object), on the predictions' device, checks that the outputs the
    cost reads describe the same B images and N queries, and when the assigner refuses a
    NaN or infinite cost it names the prediction or target that caused it.

    A new task adds costs, not matchers::

        Matcher(2 * FocalClassCost() + 5 * KeypointL1Cost() + 2 * OKSCost(), Hungarian(capacity=6))

    Args:
        cost (Cost): the pairwise cost (or, for :class:`~hybridmatch.matchers.TopK`, quality).
        assigner (Assigner): :class:`~hybridmatch.matchers.Hungarian`,
            :class:`~hybridmatch.matchers.Groups`, :class:`~hybridmatch.matchers.TopK`, or your own.

    Example:
        >>> from hybridmatch.costs import L1BoxCost
        >>> from hybridmatch.matchers import Hungarian
        >>> matcher = Matcher(L1BoxCost(), Hungarian())
        >>> outputs = {"pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]])}
        >>> targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
        >>> matcher(outputs, targets)
        [(tensor([1]), tensor([0]))]
    """

    def __init__(self, cost: Cost, assigner: Assigner) -> None:
        super().__init__()
        if not isinstance(cost, Cost):
            raise TypeError(f"cost must be a hybridmatch.costs.Cost, got {type(cost).__name__}")
        if not isinstance(assigner, Assigner):
            raise TypeError(
                f"assigner must be a hybridmatch.matchers.Assigner (Hungarian, Groups, TopK), got "
                f"{type(assigner).__name__}"
            )
        self.cost = cost
        self.assigner = assigner

    def extra_repr(self) -> str:
        return f"cost={self.cost!r}, assigner={self.assigner!r}"

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Matches:
        """Match each image's queries to its targets.

        Args:
            outputs: the tensors the cost reads, each ``(B, N, ...)`` (``pred_logits``,
                ``pred_boxes``, ``pred_keypoints``, ``pred_masks``, ...).
            targets: B dicts with ``labels (Tensor[M_b] int64)`` and the keys the cost reads
                (``boxes (Tensor[M_b, 4])``, ``keypoints (Tensor[M_b, J, 3])``,
                ``masks (Tensor[M_b, H, W])``, ...), or a :class:`~hybridmatch.targets.PaddedTargets`.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors (as DETR returns them),
            sorted by ``pred_idx``; ``tgt_idx`` is local to the image. :meth:`match`
            gives the batched form on the predictions' device.
        """
        return assignment_to_pairs(self.match(outputs, targets).cpu())

    @torch.no_grad()
    def match(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Tensor:
        """The batched form: ``Tensor[B, N]`` int64 on the predictions' device, the target of each query or -1."""
        padded = self.pad(outputs, targets)
        if padded.batch_size == 0:  # no images: the targets carry no keys for the cost to read
            num_queries = _check_outputs(outputs, self.cost.output_keys, 0)
            device = _device_of(outputs, self.cost.output_keys)
            return torch.empty((0, num_queries or 0), dtype=torch.int64, device=device)
        cost = self.cost_matrix(outputs, padded)
        try:
            return self.assigner(cost, padded.num_targets_list)
        except (InvalidCostError, InfeasibleError) as error:
            _explain_nonfinite(self.cost, outputs, padded, cost, error)
            raise

    @torch.no_grad()
    def match_layers(
        self, layers: Sequence[Mapping[str, Tensor]], targets: Targets | PaddedTargets
    ) -> list[Matches]:
        """Match several decoder layers' outputs against the same targets, in one call.

        The result is ``[self(layer, targets) for layer in layers]``, index for index. When
        the layers can be stacked (the outputs the cost reads have one shape, dtype and
        device in every layer, the cost's :attr:`~hybridmatch.costs.Cost.images_independent`
        is True, and the assigner is one of hybridmatch's), the targets are padded once and
        the ``L`` layers are matched as one batch of ``L * B`` images: one cost
        computation and one solver call, whose threads then have ``L * B`` problems to
        share. Otherwise each layer is matched on its own. An error names the layer's own
        image and query, as a call on that layer alone does.

        Args:
            layers: output dicts (each as :meth:`forward` takes them), such as the final
                output and the ``aux_outputs`` of a DETR decoder.
            targets: as :meth:`forward`.

        Returns:
            One list of B pairs ``(pred_idx, tgt_idx)`` per layer, as :meth:`forward` returns.

        Example:
            >>> from hybridmatch import HungarianMatcher
            >>> matcher = HungarianMatcher()
            >>> layers = [{"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.rand(1, 3, 4)} for _ in range(6)]
            >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
            >>> matcher.match_layers(layers, targets) == [matcher(layer, targets) for layer in layers]
            True
        """
        if isinstance(layers, Mapping) or not isinstance(layers, Sequence):
            raise InvalidPredictionError(
                f"layers must be a list of output dicts, one per decoder layer, got {type(layers).__name__}; "
                "for one layer, call the matcher itself"
            )
        layers = list(layers)
        if not layers:
            return []
        padded = self.pad(layers[0], targets)
        if not self._stackable(layers, padded.batch_size):
            return [self(layer, padded) for layer in layers]
        try:
            # One check serves every layer: same shapes, same targets.
            _check_outputs(layers[0], self.cost.output_keys, padded.batch_size)
            self.cost.check(layers[0], padded)
            cost = self.cost.compute_layers(layers, padded)
            if cost is None:
                stacked = {key: torch.cat([layer[key] for layer in layers]) for key in self.cost.output_keys}
                cost = self.cost_matrix(stacked, _tile_targets(padded, len(layers)))
            assignment = self.assigner(cost, padded.num_targets_list * len(layers))
        except HybridMatchError:
            for layer in layers:  # the failing layer raises with its own image and query
                self.match(layer, padded)
            raise
        pairs = assignment_to_pairs(assignment.cpu())
        batch = padded.batch_size
        return [pairs[i * batch : (i + 1) * batch] for i in range(len(layers))]

    def _stackable(self, layers: list[Mapping[str, Tensor]], batch_size: int) -> bool:
        """Whether matching the layers as one batch gives each layer its own result."""
        if len(layers) < 2 or batch_size == 0 or not self.cost.images_independent:
            return False
        if type(self.assigner) not in _STACKABLE_ASSIGNERS:
            return False  # an assigner of one's own may look across images
        for key in self.cost.output_keys:
            tensors = [layer.get(key) if isinstance(layer, Mapping) else None for layer in layers]
            first = tensors[0]
            if not isinstance(first, Tensor) or first.ndim < 2 or first.shape[0] != batch_size:
                return False  # the per-layer calls name what is wrong
            for tensor in tensors[1:]:
                if (
                    not isinstance(tensor, Tensor)
                    or tensor.shape != first.shape
                    or tensor.dtype != first.dtype
                    or tensor.device != first.device
                ):
                    return False
        return True

    @torch.no_grad()
    def match_repeated(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Matches:
        """Match, with target indices into the ground truth repeated K times GT-major.

        ``K`` is the most queries a target can take (``assigner.max_per_target``: the
        capacity, ``num_groups * capacity``, or top-k's ``k``). The r-th query (in query
        order) matched to target ``j`` of an image with ``M`` targets gets index ``r * M +
        j``: copy ``r`` of target ``j`` in ``repeat_targets(targets, K)``, each copy used at
        most once. See :func:`assignment_to_repeated`.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors sorted by ``pred_idx``,
            ``tgt_idx`` in ``[0, K * M_b)``.
        """
        padded = self.pad(outputs, targets)
        assignment = self.match(outputs, padded)
        return assignment_to_pairs(assignment_to_repeated(assignment.cpu(), padded.num_targets_list))

    def pad(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> PaddedTargets:
        """Pad the target keys the cost reads onto the predictions' device.

        A :class:`~hybridmatch.targets.PaddedTargets` is taken as it is (moved to that device).
        """
        device = _device_of(outputs, self.cost.output_keys)
        if isinstance(targets, PaddedTargets):
            return targets if device is None or targets.device == device else targets.to(device)
        if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
            raise InvalidTargetError(
                f"targets must be a list of per-image dicts (labels, boxes, ...), got "
                f"{type(targets).__name__}; wrap a single image's dict as [target]"
            )
        keys = self.cost.target_keys
        extras = [key for key in keys if key not in ("labels", "boxes", "valid")]
        for i, image in enumerate(targets):
            if isinstance(image, Mapping):
                for key in extras:
                    if key not in image:
                        raise InvalidTargetError(
                            f"{self.cost!r} reads targets' {key!r}, but targets[{i}] has none "
                            f"(keys: {sorted(map(str, image))}); give every image's dict a {key!r} "
                            f"tensor with one row per object"
                        )
        return pad_targets(targets, per_object_keys=extras, device=device, require_boxes="boxes" in keys)

    def cost_matrix(self, outputs: Mapping[str, Tensor], targets: Targets | PaddedTargets) -> Tensor:
        """Check the outputs the cost reads and return its ``Tensor[B, N, M_max]``."""
        padded = targets if isinstance(targets, PaddedTargets) else self.pad(outputs, targets)
        num_queries = _check_outputs(outputs, self.cost.output_keys, padded.batch_size)
        cost = self.cost(outputs, padded)
        want = (padded.batch_size, num_queries, padded.max_targets)
        if not isinstance(cost, Tensor) or cost.ndim != 3 or (
            num_queries is not None and tuple(cost.shape) != want
        ):
            got = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
            raise ShapeError(
                f"{self.cost!r} returned {got}; a cost must return (B, N, M_max) = {want}"
            )
        return cost


def _tile_targets(padded: PaddedTargets, count: int) -> PaddedTargets:
    """``padded`` repeated ``count`` times along the batch: image ``i * B + b`` is image ``b``."""

    def tile(tensor: Tensor) -> Tensor:
        return tensor.repeat(count, *([1] * (tensor.ndim - 1)))

    return PaddedTargets(
        labels=tile(padded.labels),
        boxes=None if padded.boxes is None else tile(padded.boxes),
        valid=tile(padded.valid),
        num_targets=tile(padded.num_targets),
        num_targets_list=padded.num_targets_list * count,
        extras={key: tile(value) for key, value in padded.extras.items()},
    )


def assignment_to_repeated(assignment: Tensor, num_targets: Sequence[int] | Tensor) -> Tensor:
    """Turn "target of each query" into indices of GT-major repeated targets.

    Query ``n`` matched to target ``j`` becomes ``r * M_b + j``
    (:func:`~hybridmatch.targets.repeated_index`), where ``r`` counts the
    queries before ``n`` matched to the same target: the first query on a target takes
    copy 0, the next copy 1, and so on. The inverse is
    :func:`~hybridmatch.targets.original_target_index`.

    Args:
        assignment (Tensor[B, N] int64): target of each query in ``[0, M_b)``, or -1, as
            from :meth:`Matcher.match`.
        num_targets (Tensor[B] or Sequence[int]): ``M_b``, the original targets per image.

    Returns:
        Tensor[B, N] int64 on the assignment's device: the repeated-target index, or -1.

    Raises:
        ShapeError: the assignment is not a (B, N) integer tensor, or ``num_targets`` is not (B,).
        InvalidTargetError: an entry is below -1 or not below its image's ``M_b`` (reads the
            values: one device sync for a GPU tensor).

    Example:
        >>> assignment_to_repeated(torch.tensor([[1, 0, 1, -1, 1]]), [2])
        tensor([[ 1,  0,  3, -1,  5]])
    """
    if not isinstance(assignment, Tensor) or assignment.ndim != 2 or not _is_integer(assignment):
        got = _describe(assignment)
        raise ShapeError(f"assignment must be a (B, N) integer tensor, got {got}")
    batch, num_queries = assignment.shape
    counts = (
        num_targets.to(assignment.device)
        if isinstance(num_targets, Tensor)
        else torch.as_tensor(list(num_targets), dtype=torch.int64, device=assignment.device)
    )
    if counts.shape != (batch,) or not _is_integer(counts):
        raise ShapeError(
            f"num_targets must hold one int per image, (B,) = ({batch},), got {_describe(counts)}"
        )
    assignment = assignment.long()
    counts = counts.long()
    bad = (assignment < -1) | (assignment >= counts[:, None])
    if bool(bad.any()):
        image, query = (int(v) for v in torch.nonzero(bad)[0])
        raise InvalidTargetError(
            f"assignment[{image}, {query}] = {int(assignment[image, query])} but image {image} has "
            f"{int(counts[image])} targets: entries must be -1 (unmatched) or a target index in "
            f"[0, {int(counts[image])})"
        )
    # A stable sort groups each target's queries while keeping them in query order; a
    # query's copy number is its distance from the first query of its group.
    grouped, order = torch.sort(assignment, dim=1, stable=True)
    first = torch.searchsorted(grouped, grouped)
    positions = torch.arange(num_queries, device=assignment.device).expand(batch, num_queries)
    copy = torch.empty_like(assignment).scatter_(1, order, positions - first)
    return torch.where(assignment >= 0, repeated_index(copy, assignment, counts[:, None]), -1)


#: Assigners that solve each image on its own, so that stacking layers changes no result.
_STACKABLE_ASSIGNERS = (Hungarian, Groups, TopK)


def _device_of(outputs: Mapping[str, Tensor], keys: Sequence[str]) -> torch.device | None:
    """The device of the first output the cost reads; outputs on the meta device raise."""
    device = None
    if isinstance(outputs, Mapping):
        for key in keys:
            value = outputs.get(key)
            if isinstance(value, Tensor):
                check_tensor(value, f"outputs[{key!r}]", error=InvalidPredictionError)  # not meta
                device = value.device if device is None else device
    return device


def _check_outputs(outputs: Mapping[str, Tensor], keys: Sequence[str], batch_size: int) -> int | None:
    """Check that the outputs the cost reads agree on B and N; return N (None if none is present)."""
    if not isinstance(outputs, Mapping):
        raise InvalidPredictionError(
            f"outputs must be a dict of tensors ({', '.join(keys) or 'pred_logits, pred_boxes'}), "
            f"got {type(outputs).__name__}"
        )
    first: tuple[str, int] | None = None
    for key in keys:
        tensor = outputs.get(key)
        if not isinstance(tensor, Tensor):
            continue  # the cost names a missing key itself
        if tensor.ndim < 2:
            raise ShapeError(f"outputs[{key!r}] must be (B, N, ...), got {tuple(tensor.shape)}")
        if tensor.shape[0] != batch_size:
            raise ShapeError(
                f"outputs[{key!r}] holds {tensor.shape[0]} images but {batch_size} target dicts "
                "were given; pass one target dict per image"
            )
        if first is None:
            first = (key, int(tensor.shape[1]))
        elif tensor.shape[1] != first[1]:
            raise ShapeError(
                f"outputs[{first[0]!r}] has {first[1]} queries but outputs[{key!r}] has "
                f"{tensor.shape[1]}; every output the cost reads must cover the same queries"
            )
    return None if first is None else first[1]


def _describe_values(values: Tensor) -> str | None:
    """"NaN", "inf" or "-inf" for the first non-finite value of ``values``, or None."""
    if not values.is_floating_point():
        return None
    if bool(torch.isnan(values).any()):
        return "NaN"
    if bool(torch.isposinf(values).any()):
        return "inf"
    if bool(torch.isneginf(values).any()):
        return "-inf"
    return None


def _explain_nonfinite(
    cost_fn: Cost, outputs: Mapping[str, Tensor], padded: PaddedTargets, cost: Tensor, error: Exception
) -> None:
    """Re-raise a refused cost as an error naming the prediction or target that caused it, if one did."""
    real = torch.arange(cost.shape[2], device=cost.device) < padded.num_targets.to(cost.device)[:, None]
    real = real[:, None, :]
    refused = (torch.isnan(cost) | torch.isneginf(cost)) & real
    if not bool(refused.any()):
        refused = torch.isposinf(cost) & real  # infeasible: the forbidden pairs
        if not bool(refused.any()):
            return
    for image, query, target in torch.nonzero(refused)[:64].tolist():
        for key in cost_fn.output_keys:
            tensor = outputs.get(key)
            if isinstance(tensor, Tensor) and tensor.ndim >= 2 and tensor.shape[0] > image and tensor.shape[1] > query:
                what = _describe_values(tensor[image, query])
                if what is not None:
                    raise InvalidPredictionError(
                        f"outputs[{key!r}][{image}, {query}] contains {what} (image {image}, query "
                        f"{query}), so its matching cost is not finite; check for AMP overflow or a "
                        "diverging loss, or pass nan_policy='worst' to match around it"
                    ) from error
        for key in cost_fn.target_keys:
            tensor = padded[key] if key in padded else None
            if isinstance(tensor, Tensor) and tensor.ndim >= 2:
                what = _describe_values(tensor[image, target])
                if what is not None:
                    raise InvalidTargetError(
                        f"targets[{image}][{key!r}][{target}] contains {what} (image {image}, target "
                        f"{target}), so its matching cost is not finite; check the dataset and its "
                        "augmentations (e.g. a box scaled by a zero image size)"
                    ) from error


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def _is_integer(tensor: Tensor) -> bool:
    return not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)
