"""Losses of (H-)Deformable-DETR: a DETR-convention set criterion and the hybrid wrappers.

:class:`SetCriterion` is the plain one-to-one criterion of Deformable-DETR
(Zhu et al., ICLR 2021): a sigmoid focal classification loss and L1 + GIoU box
losses on the matched pairs, for the final decoder layer, every earlier layer
(``aux_outputs``, keys suffixed ``_{i}``) and the two-stage encoder proposals
(``enc_outputs``, keys suffixed ``_enc``). It returns *unweighted* losses; the
caller multiplies by :func:`make_weight_dict`'s weights.

:func:`build_criterion` wraps it with :class:`hybridmatch.HybridCriterion` and one of
H-DETR's schemes (Jia et al., CVPR 2023): ``branch``, ``epoch`` or ``layer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import hybridmatch
from hybridmatch.boxes import box_cxcywh_to_xyxy, elementwise_giou

__all__ = [
    "SCHEMES",
    "SetCriterion",
    "build_criterion",
    "make_weight_dict",
    "sigmoid_focal_loss",
    "total_loss",
]

#: The training schemes the example knows.
SCHEMES = ("one2one", "branch", "epoch", "layer")

#: H-DETR's defaults per scheme: K copies of the ground truth.
DEFAULT_K = {"branch": 6, "epoch": 10, "layer": 10}

Matches = list[tuple[Tensor, Tensor]]


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


class SetCriterion(nn.Module):
    """Deformable-DETR's one-to-one set criterion (focal class loss, L1 and GIoU box losses).

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

    The same three losses are computed for each ``aux_outputs[i]`` (suffix ``_{i}``) and for
    ``enc_outputs`` (suffix ``_enc``). The two-stage encoder head is class-agnostic: as in
    Deformable-DETR's two-stage variant, every target's label is replaced by 0 ("object"),
    both for matching and for the focal loss, whatever the width of the head's logits
    (``C`` or 1); the model ranks its proposals by logit 0.

    Args:
        num_classes (int): ``C``, the number of classes (no "no object" logit).
        matcher: ``matcher(outputs, targets) -> [(pred_idx, tgt_idx), ...]``, e.g.
            :class:`hybridmatch.HungarianMatcher`. :class:`hybridmatch.HybridCriterion`
            may swap it during one-to-many calls.
        weight_dict (dict[str, float]): the loss weights (kept here for the training loop).
        focal_alpha (float), focal_gamma (float): focal loss settings (0.25, 2).

    Returns (``forward``):
        dict[str, Tensor]: scalar float32 losses, unweighted, differentiable also for a
        batch without objects.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Any,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.matcher = matcher
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
        batch_idx, query_idx = _flat_indices(indices, logits.device)
        if batch_idx.numel():
            labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
            onehot[batch_idx, query_idx, labels] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        return loss.sum() / num_boxes

    def loss_boxes(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                   indices: Matches, num_boxes: float) -> dict[str, Tensor]:
        """``loss_bbox`` (L1, cxcywh) and ``loss_giou`` (1 - GIoU) of the matched pairs, / ``num_boxes``."""
        pred = outputs["pred_boxes"]
        batch_idx, query_idx = _flat_indices(indices, pred.device)
        matched = pred[batch_idx, query_idx].float()  # (P, 4); P = 0 keeps the graph
        if batch_idx.numel():
            wanted = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred.device).float()
        else:
            wanted = matched.detach().new_zeros((0, 4))
        loss_bbox = (matched - wanted).abs().sum() / num_boxes
        giou = elementwise_giou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(wanted))
        loss_giou = (1.0 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def single(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
               num_boxes: float) -> dict[str, Tensor]:
        """The three losses of one output dict (one decoder layer, or the encoder)."""
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Losses of the final layer, of each ``aux_outputs[i]`` (``_{i}``) and of ``enc_outputs`` (``_enc``).

        Args:
            outputs: ``pred_logits (Tensor[B, N, C])``, ``pred_boxes (Tensor[B, N, 4])`` and
                optionally ``aux_outputs`` (list of such dicts) and ``enc_outputs`` (one dict).
            targets: B dicts with ``labels (Tensor[M_b] int64)`` and ``boxes (Tensor[M_b, 4])``
                cxcywh in [0, 1].

        Returns:
            dict[str, Tensor]: unweighted scalar losses.
        """
        # A collective under torch.distributed: every rank calls it the same number of times.
        num_boxes = hybridmatch.global_num_boxes(targets)
        final = {key: outputs[key] for key in ("pred_logits", "pred_boxes")}
        losses = self.single(final, targets, num_boxes)
        for i, layer in enumerate(outputs.get("aux_outputs") or []):
            for key, value in self.single(layer, targets, num_boxes).items():
                losses[f"{key}_{i}"] = value
        enc = outputs.get("enc_outputs")
        if enc is not None:
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            for key, value in self.single(enc, agnostic, num_boxes).items():
                losses[f"{key}_enc"] = value
        return losses


def _flat_indices(indices: Matches, device: torch.device) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched pair, int64 on ``device``."""
    batch = [torch.full((len(src),), b, dtype=torch.int64) for b, (src, _) in enumerate(indices)]
    queries = [src.to(torch.int64).cpu() for src, _ in indices]
    if not batch:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(batch).to(device), torch.cat(queries).to(device)


def make_weight_dict(num_decoder_layers: int, *, two_stage: bool = True, one2many: bool = False,
                     ce: float = 2.0, bbox: float = 5.0, giou: float = 2.0) -> dict[str, float]:
    """Loss weights (Deformable-DETR / H-DETR: ce 2, bbox 5, giou 2) for every key a criterion returns.

    Args:
        num_decoder_layers (int): decoder layers; layers ``0 .. L-2`` get the ``_{i}`` keys.
        two_stage (bool): add the ``_enc`` keys.
        one2many (bool): add a ``_one2many`` copy of every key (hybrid branch); the
            :class:`~hybridmatch.HybridCriterion` has already multiplied those losses by lambda.

    Returns:
        dict[str, float]
    """
    base = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}
    weights = dict(base)
    for i in range(num_decoder_layers - 1):
        weights.update({f"{key}_{i}": value for key, value in base.items()})
    if two_stage:
        weights.update({f"{key}_enc": value for key, value in base.items()})
    if one2many:
        weights.update({f"{key}_one2many": value for key, value in list(weights.items()) if not key.endswith("_enc")})
    return weights


def total_loss(losses: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """``sum(weight_dict[key] * losses[key])`` over the keys both have.

    Raises:
        KeyError: a loss has no weight (a typo or a missing layer would otherwise drop it silently).
    """
    missing = sorted(set(losses) - set(weight_dict))
    if missing:
        raise KeyError(f"losses {missing} have no weight in weight_dict; known: {sorted(weight_dict)}")
    return sum(weight_dict[key] * value for key, value in losses.items())  # type: ignore[return-value]


def build_criterion(
    scheme: str,
    cfg: Any,
    *,
    k: int | None = None,
    lambda_one2many: float = 1.0,
    epochs: int = 12,
    one2many_fraction: float = 2 / 3,
    num_one2many_layers: int | None = None,
    one2many_matcher: bool = False,
) -> tuple[nn.Module, hybridmatch.HybridBranch | hybridmatch.HybridEpoch | hybridmatch.HybridLayer | None,
           dict[str, float]]:
    """The criterion, the scheme object (None for ``one2one``) and the loss weights of a run.

    Args:
        scheme (str): ``one2one`` (Deformable-DETR), ``branch`` (H-DETR's hybrid branch:
            ``cfg.num_queries_one2one`` + ``cfg.num_queries_one2many`` queries, K=6, lambda),
            ``epoch`` (one group of ``cfg.num_queries_one2one`` queries, K=10 for the first
            ``one2many_fraction`` of ``epochs``) or ``layer`` (one group, K=10 on the first
            ``num_one2many_layers`` decoder layers; default ``dec_layers - 2`` as H-DETR's 4 of 6,
            at least 1 so a shallow model still has a one-to-many layer).
        cfg: a :class:`~examples.detection.config.ModelConfig` (reads ``num_classes``,
            ``dec_layers``, ``two_stage``, ``num_queries_one2one``, ``num_queries_one2many``).
        k (int | None): copies of the ground truth; default 6 (branch) or 10 (epoch, layer).
        lambda_one2many (float): the hybrid branch's one-to-many loss weight.
        epochs (int): the schedule length (hybrid epoch).
        one2many_fraction (float): ``rho`` of the hybrid epoch scheme.
        num_one2many_layers (int | None): ``L1`` of the hybrid layer scheme.
        one2many_matcher (bool): match the one-to-many groups with
            :class:`hybridmatch.OneToManyMatcher` (capacity K, no K copies matched) instead of the
            Hungarian matcher on repeated targets; the losses are the same.

    Returns:
        ``(criterion, scheme_object, weight_dict)``; ``criterion(outputs, targets)`` returns the
        dict of unweighted losses (one-to-many ones already times lambda).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    matcher = hybridmatch.HungarianMatcher(2.0, 5.0, 2.0)
    weight_dict = make_weight_dict(cfg.dec_layers, two_stage=cfg.two_stage, one2many=scheme == "branch")
    base = SetCriterion(cfg.num_classes, matcher, weight_dict)
    if scheme == "one2one":
        if cfg.num_queries_one2many:
            raise ValueError(
                f"scheme 'one2one' trains without one-to-many queries, but cfg.num_queries_one2many="
                f"{cfg.num_queries_one2many}; set it to 0 (see examples.detection.engine.config_for_scheme)"
            )
        return base, None, weight_dict
    k = DEFAULT_K[scheme] if k is None else k
    scheme_object: hybridmatch.HybridBranch | hybridmatch.HybridEpoch | hybridmatch.HybridLayer
    if scheme == "branch":
        if not cfg.num_queries_one2many:
            raise ValueError("scheme 'branch' needs cfg.num_queries_one2many > 0 (paper: 1500)")
        scheme_object = hybridmatch.HybridBranch(cfg.num_queries_one2one, cfg.num_queries_one2many,
                                                 k=k, weight=lambda_one2many)
    else:
        if cfg.num_queries_one2many:
            raise ValueError(
                f"scheme {scheme!r} uses one group of queries: set cfg.num_queries_one2one to all of "
                f"them (paper: 1800) and cfg.num_queries_one2many=0, got {cfg.num_queries_one2many}"
            )
        if scheme == "epoch":
            scheme_object = hybridmatch.HybridEpoch(k, one2many_fraction, epochs,
                                                    num_queries=cfg.num_queries_one2one)
        else:
            layers = max(cfg.dec_layers - 2, 1) if num_one2many_layers is None else num_one2many_layers
            scheme_object = hybridmatch.HybridLayer(k, layers, num_queries=cfg.num_queries_one2one)
    extra = hybridmatch.OneToManyMatcher(k) if one2many_matcher else None
    criterion = hybridmatch.HybridCriterion(base, scheme_object, one2many_matcher=extra)
    return criterion, scheme_object, weight_dict
