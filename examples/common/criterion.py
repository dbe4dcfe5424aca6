"""What every task's criterion shares: DETR's loop over layers, class and box losses, schemes, weights.

:class:`SetCriterion` is Deformable-DETR's one-to-one set criterion (Zhu et al., ICLR 2021)
in the DETR convention: the losses of the final decoder layer, of every earlier layer
(``aux_outputs``, keys suffixed ``_{i}``) and of the two-stage encoder proposals
(``enc_outputs``, suffix ``_enc``, class-agnostic), all normalised by the batch's object
count over ranks (:func:`hybridmatch.global_num_boxes`). A task changes only what one
decoder layer is charged: it overrides :meth:`SetCriterion.layer_losses` (pose adds keypoint
losses, segmentation mask losses), and keeps the loop, the encoder's losses and the
focal class / L1 + GIoU box losses.

The rest turns a criterion into a hybrid one, the same way for every task:

* :func:`build_scheme` / :func:`scheme_for`: the H-DETR scheme object of a scheme name
  (``one2one`` gives None), with the checks of the query counts each scheme needs;
* :func:`layer_weight_dict`: a per-layer weight dict with its ``_{i}`` and ``_enc`` copies;
* :func:`hybrid_criterion`: ``HybridCriterion(criterion, scheme)`` and the weights with their
  ``_one2many`` copies (:func:`hybrid_weights`), or the bare criterion;
* :func:`total_loss`: the weighted sum, refusing a loss without a weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import hybridmatch
from hybridmatch.boxes import box_cxcywh_to_xyxy, elementwise_giou

__all__ = [
    "DEFAULT_K",
    "SCHEMES",
    "Matches",
    "SetCriterion",
    "build_scheme",
    "flat_indices",
    "hybrid_criterion",
    "hybrid_weights",
    "layer_weight_dict",
    "scheme_for",
    "sigmoid_focal_loss",
    "total_loss",
]

#: The training schemes of the examples: one-to-one only, and H-DETR's three hybrid ones.
SCHEMES = ("one2one", "branch", "epoch", "layer")

#: H-DETR's defaults per scheme: K copies of the ground truth.
DEFAULT_K = {"branch": 6, "epoch": 10, "layer": 10}

#: DETR's matches: per image ``(pred_idx (Tensor[P] int64), tgt_idx (Tensor[P] int64))``.
Matches = list[tuple[Tensor, Tensor]]

Scheme = hybridmatch.HybridBranch | hybridmatch.HybridEpoch | hybridmatch.HybridLayer


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection").

    ``FL = -a_t (1 - p_t)^gamma log(p_t)`` with ``p = sigmoid(logits)``, ``p_t = p`` where the
    target is 1 and ``1 - p`` where it is 0, ``a_t = alpha`` resp. ``1 - alpha``.

    Args:
        logits (Tensor[..., C]): per-class logits, any float dtype (computed in float32).
        targets (Tensor[..., C]): 0/1 targets of the same shape.
        alpha (float): weight of the positives, in [0, 1]; a negative value disables it.
        gamma (float): focusing exponent, >= 0.

    Returns:
        Tensor[..., C] float32: the unreduced loss.

    Example:
        >>> loss = sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]), alpha=-1, gamma=0)
        >>> round(float(loss), 4)   # plain BCE: log 2
        0.6931
    """
    logits = logits.float()
    targets = targets.float()
    probs = logits.sigmoid()
    # BCE-with-logits is the numerically safe -log(p_t).
    ce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    loss = ce * (1.0 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def flat_indices(indices: Matches, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched pair, int64 on ``device``, image by image.

    Example:
        >>> matches = [(torch.tensor([3, 1]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]
        >>> flat_indices(matches, "cpu")
        (tensor([0, 0, 1]), tensor([3, 1, 2]))
    """
    batch = [torch.full((len(src),), b, dtype=torch.int64) for b, (src, _) in enumerate(indices)]
    queries = [src.to(torch.int64).cpu() for src, _ in indices]
    if not batch:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(batch).to(device), torch.cat(queries).to(device)


class SetCriterion(nn.Module):
    """Deformable-DETR's one-to-one set criterion; tasks override :meth:`layer_losses`.

    For one output dict (``pred_logits (Tensor[B, N, C])``, ``pred_boxes (Tensor[B, N, 4])``
    cxcywh in [0, 1]) the matcher pairs queries with targets; then, with ``num_boxes`` the
    object count of the batch summed over ranks (:func:`hybridmatch.global_num_boxes`,
    averaged per rank, at least 1):

    * ``loss_ce``: the focal loss of every query and class against one-hot targets (matched
      queries: their target's class; the others: all zeros), summed over queries and
      classes, divided by ``num_boxes``. This equals Deformable-DETR's
      "mean over queries, sum, / num_boxes, x num_queries".
    * ``loss_bbox``: L1 distance of the matched boxes (cxcywh), summed, / ``num_boxes``.
    * ``loss_giou``: ``1 - GIoU`` of the matched boxes (xyxy), summed, / ``num_boxes``.

    :meth:`forward` charges the final layer, each ``aux_outputs[i]`` (suffix ``_{i}``) with
    :meth:`layer_losses` and ``enc_outputs`` (suffix ``_enc``) with :meth:`encoder_losses`.
    The two-stage encoder head is class-agnostic: as in Deformable-DETR's two-stage variant,
    every target's label is replaced by 0 ("object"), both for matching and for the focal
    loss, whatever the width of the head's logits (``C`` or 1).

    Args:
        num_classes (int): ``C``, the number of classes (no "no object" logit).
        matcher: ``matcher(outputs, targets) -> [(pred_idx, tgt_idx), ...]``, e.g.
            :class:`hybridmatch.HungarianMatcher`. :class:`hybridmatch.HybridCriterion`
            may stand in another during one-to-many calls.
        weight_dict (dict[str, float]): the loss weights (kept here for the training loop).
        focal_alpha (float), focal_gamma (float): focal loss settings (0.25, 2).
        encoder_matcher: matcher of the encoder proposals; None: ``matcher`` (a task whose
            matcher reads more than classes and boxes gives a class-and-box one).

    Returns (``forward``):
        dict[str, Tensor]: scalar float32 losses, unweighted, differentiable also for a
        batch without objects.

    Example:
        >>> criterion = SetCriterion(2, hybridmatch.HungarianMatcher(2.0, 5.0, 2.0))
        >>> outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.full((1, 3, 4), 0.5)}
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]
        >>> sorted(criterion(outputs, targets))
        ['loss_bbox', 'loss_ce', 'loss_giou']
    """

    #: The keys of the final layer's outputs handed to :meth:`layer_losses` (those present).
    output_keys: tuple[str, ...] = ("pred_logits", "pred_boxes")

    def __init__(self, num_classes: int, matcher: Any, weight_dict: Mapping[str, float] | None = None,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, *, encoder_matcher: Any = None) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.encoder_matcher = encoder_matcher
        self.weight_dict = dict(weight_dict) if weight_dict is not None else {}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"

    # ------------------------------------------------------------------ losses of one output dict

    def loss_labels(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                    indices: Matches, num_boxes: float) -> Tensor:
        """``loss_ce``: focal loss summed over queries and classes, / ``num_boxes``."""
        logits = outputs["pred_logits"]
        onehot = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        batch_idx, query_idx = flat_indices(indices, logits.device)
        if batch_idx.numel():
            labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
            onehot[batch_idx, query_idx, labels] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        return loss.sum() / num_boxes

    def loss_boxes(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                   indices: Matches, num_boxes: float) -> dict[str, Tensor]:
        """``loss_bbox`` (L1, cxcywh) and ``loss_giou`` (1 - GIoU) of the matched pairs, / ``num_boxes``."""
        pred = outputs["pred_boxes"]
        batch_idx, query_idx = flat_indices(indices, pred.device)
        matched = pred[batch_idx, query_idx].float()  # (P, 4); P = 0 keeps the graph
        if batch_idx.numel():
            wanted = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred.device).float()
        else:
            wanted = matched.detach().new_zeros((0, 4))
        loss_bbox = (matched - wanted).abs().sum() / num_boxes
        giou = elementwise_giou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(wanted))
        loss_giou = (1.0 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def layer_losses(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                     num_boxes: float) -> dict[str, Tensor]:
        """The losses of one decoder layer: match, then ``loss_ce``, ``loss_bbox``, ``loss_giou``.

        A task's criterion overrides this (and only this) to charge more per layer.
        """
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return losses

    def encoder_losses(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                       num_boxes: float) -> dict[str, Tensor]:
        """The two-stage proposals' losses: class-agnostic ``loss_ce`` and the box losses."""
        agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        matcher = self.encoder_matcher if self.encoder_matcher is not None else self.matcher
        indices = matcher(outputs, agnostic)
        losses = {"loss_ce": self.loss_labels(outputs, agnostic, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs, agnostic, indices, num_boxes))
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Losses of the final layer, of each ``aux_outputs[i]`` (``_{i}``) and of ``enc_outputs`` (``_enc``).

        Args:
            outputs: the final layer's outputs (:attr:`output_keys`), optionally ``aux_outputs``
                (a list of such dicts) and ``enc_outputs`` (logits and boxes).
            targets: B dicts with ``labels (Tensor[M_b] int64)``, ``boxes (Tensor[M_b, 4])``
                cxcywh in [0, 1] and whatever the task's layer losses read.

        Returns:
            dict[str, Tensor]: unweighted scalar losses.
        """
        # A collective under torch.distributed: every rank calls it the same number of times.
        num_boxes = hybridmatch.global_num_boxes(targets)
        final = {key: outputs[key] for key in self.output_keys if key in outputs}
        losses = self.layer_losses(final, targets, num_boxes)
        for i, layer in enumerate(outputs.get("aux_outputs") or []):
            for key, value in self.layer_losses(layer, targets, num_boxes).items():
                losses[f"{key}_{i}"] = value
        enc = outputs.get("enc_outputs")
        if enc is not None:
            for key, value in self.encoder_losses(enc, targets, num_boxes).items():
                losses[f"{key}_enc"] = value
        return losses


def build_scheme(scheme: str, *, num_queries_one2one: int, num_queries_one2many: int, num_decoder_layers: int,
                 k: int | None = None, lambda_one2many: float = 1.0, epochs: int = 12,
                 one2many_fraction: float = 2 / 3, num_one2many_layers: int | None = None) -> Scheme | None:
    """The hybrid scheme object of ``scheme`` (None for ``one2one``), checked against the query counts.

    Args:
        scheme: ``one2one`` (no one-to-many supervision), ``branch`` (H-DETR's hybrid branch:
            ``num_queries_one2one`` + ``num_queries_one2many`` queries), ``epoch`` (one group of
            ``num_queries_one2one`` queries, K copies for the first ``one2many_fraction`` of
            ``epochs``) or ``layer`` (one group, K copies on the first ``num_one2many_layers``
            decoder layers; default ``num_decoder_layers - 2`` as H-DETR's 4 of 6, at least 1).
        num_queries_one2one, num_queries_one2many: the model's query counts (Q1, Q2).
        num_decoder_layers: decoder layers of the model.
        k: copies of the ground truth; default :data:`DEFAULT_K` (branch 6, epoch / layer 10).
        lambda_one2many: the branch's one-to-many loss weight.
        epochs, one2many_fraction, num_one2many_layers: as above.

    Raises:
        ValueError: an unknown scheme, or query counts the scheme cannot train with (the
            message says which to set).

    Example:
        >>> build_scheme("branch", num_queries_one2one=30, num_queries_one2many=90, num_decoder_layers=2, k=6)
        HybridBranch(num_one2one=30, num_one2many=90, k=6, weight=1.0, epoch=0)
        >>> build_scheme("one2one", num_queries_one2one=30, num_queries_one2many=0, num_decoder_layers=2) is None
        True
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "one2one":
        if num_queries_one2many:
            raise ValueError(f"scheme 'one2one' trains without one-to-many queries, but num_queries_one2many="
                             f"{num_queries_one2many}; set it to 0 (see examples.detection.task.config_for_scheme)")
        return None
    k = DEFAULT_K[scheme] if k is None else k
    if scheme == "branch":
        if not num_queries_one2many:
            raise ValueError("scheme 'branch' needs num_queries_one2many > 0 (paper: 1500)")
        return hybridmatch.HybridBranch(num_queries_one2one, num_queries_one2many, k=k, weight=lambda_one2many)
    if num_queries_one2many:
        raise ValueError(f"scheme {scheme!r} uses one group of queries: set num_queries_one2one to all of them "
                         f"(paper: 1800) and num_queries_one2many=0, got {num_queries_one2many}")
    if scheme == "epoch":
        return hybridmatch.HybridEpoch(k, one2many_fraction, epochs, num_queries=num_queries_one2one)
    layers = max(num_decoder_layers - 2, 1) if num_one2many_layers is None else num_one2many_layers
    return hybridmatch.HybridLayer(k, layers, num_queries=num_queries_one2one)


def scheme_for(scheme: str, cfg: Any, **settings: Any) -> Scheme | None:
    """:func:`build_scheme` for a model configuration: its ``num_queries_one2one``,
    ``num_queries_one2many`` and ``dec_layers``; ``settings`` are the scheme's (``k``,
    ``lambda_one2many``, ``epochs``, ``one2many_fraction``, ``num_one2many_layers``).

    Example:
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(num_queries_one2one=12, num_queries_one2many=0, dec_layers=6)
        >>> scheme_for("layer", cfg, k=4)
        HybridLayer(k=4, num_one2many_layers=4, num_queries=12, epoch=0)
    """
    return build_scheme(scheme, num_queries_one2one=cfg.num_queries_one2one,
                        num_queries_one2many=cfg.num_queries_one2many, num_decoder_layers=cfg.dec_layers, **settings)


def layer_weight_dict(weights: Mapping[str, float], num_decoder_layers: int, *,
                      encoder: Mapping[str, float] | None = None) -> dict[str, float]:
    """A DETR weight dict: ``weights`` for the final layer, ``_{i}`` copies for layers ``0 .. L-2``
    and ``encoder``'s keys with ``_enc`` (two-stage; None: no encoder losses).

    Example:
        >>> layer_weight_dict({"loss_ce": 2.0}, 2, encoder={"loss_ce": 2.0})
        {'loss_ce': 2.0, 'loss_ce_0': 2.0, 'loss_ce_enc': 2.0}
    """
    out = dict(weights)
    for i in range(num_decoder_layers - 1):
        out.update({f"{key}_{i}": value for key, value in weights.items()})
    if encoder is not None:
        out.update({f"{key}_enc": value for key, value in encoder.items()})
    return out


def hybrid_criterion(criterion: nn.Module, scheme: Scheme | None, weight_dict: Mapping[str, float],
                     **options: Any) -> tuple[nn.Module, Scheme | None, dict[str, float]]:
    """``(criterion, scheme, weight_dict)`` of a run: the criterion wrapped by the scheme.

    With a scheme: ``HybridCriterion(criterion, scheme, **options)`` and the weights with
    the ``_one2many`` copies of :func:`hybridmatch.hybrid_weight_dict`, less the encoder's
    (H-DETR's one-to-many branch has no encoder loss, so those keys never come). Without
    (``one2one``): the criterion and a copy of the weights.

    Args:
        criterion: the task's one-to-one criterion.
        scheme: from :func:`build_scheme`.
        weight_dict: the criterion's weights (:func:`layer_weight_dict`).
        options: keyword arguments of :class:`hybridmatch.HybridCriterion`
            (``per_object_keys``, ``one2many_matcher``).
    """
    if scheme is None:
        return criterion, None, dict(weight_dict)
    return hybridmatch.HybridCriterion(criterion, scheme, **options), scheme, hybrid_weights(weight_dict, scheme)


def hybrid_weights(weight_dict: Mapping[str, float], scheme: Scheme | None) -> dict[str, float]:
    """The weights a run under ``scheme`` needs: :func:`hybridmatch.hybrid_weight_dict` less the
    encoder's ``_one2many`` keys (H-DETR's one-to-many branch has no encoder loss); a copy
    for None (``one2one``).

    Example:
        >>> branch = hybridmatch.HybridBranch(3, 9, k=2)
        >>> hybrid_weights({"loss_ce": 2.0, "loss_ce_enc": 2.0}, branch)
        {'loss_ce': 2.0, 'loss_ce_enc': 2.0, 'loss_ce_one2many': 2.0}
    """
    if scheme is None:
        return dict(weight_dict)
    weights = hybridmatch.hybrid_weight_dict(weight_dict, scheme)
    return {key: value for key, value in weights.items() if not key.endswith("_enc_one2many")}


def total_loss(losses: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """``sum(weight_dict[key] * losses[key])`` over the losses, in their order.

    Raises:
        KeyError: a loss has no weight (a typo or a missing layer would otherwise drop it silently).

    Example:
        >>> total_loss({"loss_ce": torch.tensor(1.0), "loss_bbox": torch.tensor(2.0)},
        ...            {"loss_ce": 2.0, "loss_bbox": 5.0})
        tensor(12.)
    """
    missing = sorted(set(losses) - set(weight_dict))
    if missing:
        raise KeyError(f"losses {missing} have no weight in weight_dict; known: {sorted(weight_dict)}")
    return sum(weight_dict[key] * value for key, value in losses.items())  # type: ignore[return-value]
