"""Training loop of the H-Deformable-DETR example: data, optimiser, epochs, checkpoints.

:func:`run` does a whole run from parsed arguments (:func:`get_args_parser`) and returns
its history, one dict per epoch, also written as JSON lines to ``output_dir/log.jsonl``.
The pieces are usable alone: :func:`train_step` (one optimiser step),
:func:`train_one_epoch`, :func:`save_checkpoint` / :func:`load_checkpoint`.

Data parallelism: launched by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in
the environment) each process joins a process group (NCCL on GPU, gloo on the CPU), reads
its share of the images through a ``DistributedSampler`` and the model is wrapped in
``DistributedDataParallel``. The criterion normalises by the global object count
(:func:`hybridmatch.global_num_boxes`), so averaging gradients over ranks gives the
gradient of the whole batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from .criterion import SCHEMES, build_criterion, total_loss

__all__ = [
    "DistInfo",
    "Progress",
    "build_optimizer",
    "config_for_scheme",
    "get_args_parser",
    "init_distributed",
    "load_checkpoint",
    "run",
    "save_checkpoint",
    "train_one_epoch",
    "train_step",
]

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"


# ---------------------------------------------------------------------------------- arguments


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m examples.detection.train``."""
    p = argparse.ArgumentParser(
        "examples.detection.train",
        description="Train / evaluate H-Deformable-DETR with hybridmatch (one2one, branch, epoch, layer).",
    )
    p.add_argument("--data", choices=("synthetic", "coco"), default="synthetic",
                   help="synthetic: coloured shapes, generated into --data-path when missing; coco: "
                        "DATA_PATH/{train2017,val2017} + DATA_PATH/annotations/instances_*2017.json")
    p.add_argument("--data-path", type=Path, default=Path("data/synthetic"))
    p.add_argument("--scheme", choices=SCHEMES, default="branch")
    p.add_argument("--config", choices=("tiny", "r50"), default="tiny",
                   help="tiny: small CNN + 2+2 layers for the CPU; r50: H-Deformable-DETR R50 settings")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="(r50) local .pth of torchvision-named ResNet-50 ImageNet weights")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=2, help="images per process")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-backbone", type=float, default=2e-5)
    p.add_argument("--lr-linear-proj-mult", type=float, default=0.1,
                   help="lr factor of the deformable attention's sampling offsets and reference points")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr-drop", type=int, default=None,
                   help="epoch at which the lr drops 10x (default: 11/12 of --epochs, 11 of 12)")
    p.add_argument("--clip-max-norm", type=float, default=0.1)
    p.add_argument("--k", type=int, default=None, help="GT copies (default: branch 6, epoch/layer 10)")
    p.add_argument("--lambda-one2many", type=float, default=1.0, help="one-to-many loss weight (branch)")
    p.add_argument("--one2many-fraction", type=float, default=2 / 3, help="rho of the epoch scheme")
    p.add_argument("--num-one2many-layers", type=int, default=None,
                   help="L1 of the layer scheme (default dec_layers - 2, at least 1)")
    p.add_argument("--one2many-matcher", action="store_true",
                   help="match one-to-many groups with a capacity-K OneToManyMatcher (no K copies matched)")
    p.add_argument("--num-queries-one2one", type=int, default=None, help="override the config's Q1")
    p.add_argument("--num-queries-one2many", type=int, default=None, help="override the config's Q2 (branch)")
    p.add_argument("--synthetic-train-images", type=int, default=256)
    p.add_argument("--synthetic-val-images", type=int, default=64)
    p.add_argument("--synthetic-size", type=int, default=128, help="side of the synthetic images")
    p.add_argument("--synthetic-classes", type=int, default=4)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="evaluate only the first N validation images")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/detection"))
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    p.add_argument("--stop-after", type=int, default=None,
                   help="train at most N epochs in this invocation, then stop with a checkpoint as if "
                        "interrupted (the schedule still spans --epochs; continue with --resume)")
    p.add_argument("--eval-only", action="store_true", help="evaluate (the --resume checkpoint) and exit")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: only at the end)")
    p.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (GPU only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DistributedDataParallel(find_unused_parameters=True): needed only for a model "
                        "variant that leaves some parameters without a gradient in a step")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ---------------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), else run alone.

    NCCL on GPU, gloo on the CPU. A process group already initialised (e.g. by a test) is used
    as it is.
    """
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    else:
        rank, world, local = 0, 1, 0
    if want_cuda:
        dev = torch.device("cuda", local) if device in (None, "cuda") else torch.device(device)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, world, local, dev)


def model_config(args: argparse.Namespace, num_classes: int) -> Any:
    """The :class:`ModelConfig` of ``--config`` for ``--scheme``."""
    from .config import ModelConfig

    if args.config == "tiny":
        cfg = ModelConfig.tiny(num_classes)
    else:
        cfg = ModelConfig(num_classes=num_classes, backbone="resnet50",
                          backbone_weights=str(args.backbone_weights) if args.backbone_weights else None)
    if args.num_queries_one2one is not None:
        cfg.num_queries_one2one = args.num_queries_one2one
    if args.num_queries_one2many is not None:
        cfg.num_queries_one2many = args.num_queries_one2many
    return config_for_scheme(cfg, args.scheme)


def config_for_scheme(cfg: Any, scheme: str) -> Any:
    """A copy of ``cfg`` with the query counts a scheme trains with.

    ``one2one``: the Q1 one-to-one queries only (Q2 = 0). ``branch``: Q1 + Q2 as configured.
    ``epoch`` / ``layer``: one group of Q1 + Q2 queries (the paper's 1800), Q2 = 0, so the
    single-group schemes see as many queries as the branch does in training.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "one2one":
        cfg = dataclasses.replace(cfg, num_queries_one2many=0)
    elif scheme in ("epoch", "layer"):
        cfg = dataclasses.replace(cfg, num_queries_one2one=cfg.num_queries_one2one + cfg.num_queries_one2many,
                                  num_queries_one2many=0)
    cfg.validate()
    return cfg


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW over three parameter groups: backbone (``lr_backbone``), deformable attention's
    sampling offsets / reference points (``lr * lr_linear_proj_mult``), the rest (``lr``)."""
    backbone, linear_proj, rest = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone") or ".backbone." in name:
            backbone.append(param)
        elif "sampling_offsets" in name or "reference_points" in name:
            linear_proj.append(param)
        else:
            rest.append(param)
    groups = [{"params": rest, "lr": args.lr}]
    if linear_proj:
        groups.append({"params": linear_proj, "lr": args.lr * args.lr_linear_proj_mult})
    if backbone:
        groups.append({"params": backbone, "lr": args.lr_backbone})
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def default_lr_drop(epochs: int) -> int:
    """H-DETR's 12-epoch schedule drops at epoch 11: 11/12 of the epochs, at least 1."""
    return max(1, (11 * epochs) // 12)


# ---------------------------------------------------------------------------------- data


def build_datasets(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
    """``(train_set, val_set)`` of ``--data``; the synthetic set is generated on rank 0 if missing."""
    from .data import CocoDetection, make_transforms

    root = Path(args.data_path)
    if args.data == "synthetic":
        from .synthetic import generate_synthetic_coco

        size = (args.synthetic_size, args.synthetic_size)
        splits = {"train": args.synthetic_train_images, "val": args.synthetic_val_images}
        if info.is_main:
            for split, count in splits.items():
                if not _synthetic_ready(root, split, count, size, args.synthetic_classes):
                    generate_synthetic_coco(root, num_images=count, image_size=size,
                                            num_classes=args.synthetic_classes, seed=0, split=split)
        if info.distributed:
            dist.barrier()
        paths = {split: (root / split, root / "annotations" / f"instances_{split}.json") for split in splits}
        scales = _synthetic_scales(args.synthetic_size)
        train_tf = make_transforms(True, scales=scales, max_size=max(scales))
        val_tf = make_transforms(False, scales=(args.synthetic_size,), max_size=args.synthetic_size)
    else:
        paths = {split: (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
                 for split in ("train", "val")}
        train_tf, val_tf = make_transforms(True), make_transforms(False)
    for split, (images, annotations) in paths.items():
        if not annotations.is_file():
            raise FileNotFoundError(f"{split} annotations not found: {annotations} (--data {args.data} "
                                    f"--data-path {root})")
    train_set = CocoDetection(*paths["train"], transforms=train_tf)
    val_set = CocoDetection(*paths["val"], transforms=val_tf)
    if args.train_limit:
        train_set = torch.utils.data.Subset(train_set, range(min(args.train_limit, len(train_set))))
    if args.val_limit:
        # The evaluation reads COCO ground truth of the images it saw only.
        val_set = torch.utils.data.Subset(val_set, range(min(args.val_limit, len(val_set))))
    return train_set, val_set


def _synthetic_scales(side: int) -> tuple[int, ...]:
    # Multi-scale training at 3/4 to 1 of the image side in steps of 8 (128: 96, 104, ..., 128),
    # as examples.detection.data.small_scales; never upscaled, which would only cost CPU time.
    return tuple(range(max(16, (3 * side // 4) // 8 * 8), side + 1, 8)) or (side,)


def _synthetic_ready(root: Path, split: str, count: int, size: tuple[int, int], classes: int) -> bool:
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        return False
    try:
        data = json.loads(annotations.read_text())
    except (OSError, ValueError):
        return False
    images = data.get("images", [])
    return (len(images) == count and len(data.get("categories", [])) == classes
            and all((im["height"], im["width"]) == size for im in images[:1]))


def _base(dataset: Any) -> Any:
    return dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset


def num_classes_of(dataset: Any) -> int:
    return len(_base(dataset).label_to_category)


def make_loader(dataset: Any, batch_size: int, info: DistInfo, *, train: bool, seed: int,
                num_workers: int = 0) -> DataLoader:
    """A loader over this rank's share; shuffled per epoch (``sampler.set_epoch``) with ``seed``.

    A ``DistributedSampler`` also for one process: its order depends only on (seed, epoch), so a
    resumed run reads the same images in the same order as an uninterrupted one.
    """
    from .data import collate_fn

    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train,
                                 seed=seed, drop_last=train and info.distributed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, drop_last=False, pin_memory=info.device.type == "cuda")


# ---------------------------------------------------------------------------------- training


def _to_device(targets: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()}
            for t in targets]


def train_step(model: nn.Module, criterion: nn.Module, weight_dict: Mapping[str, float],
               images: Tensor, pixel_mask: Tensor, targets: Sequence[Mapping[str, Any]],
               optimizer: torch.optim.Optimizer | None, *, device: torch.device | str = "cpu",
               scaler: torch.amp.GradScaler | None = None, amp: bool = False,
               clip_max_norm: float = 0.1) -> dict[str, float]:
    """One forward, backward and (when ``optimizer`` is given) optimiser step.

    Args:
        model: the detector in training mode (or its DDP wrapper).
        criterion: ``criterion(outputs, targets) -> dict`` of unweighted losses.
        weight_dict: loss weights; the optimised loss is ``sum(weight * loss)``.
        images (Tensor[B, 3, H, W]), pixel_mask (Tensor[B, H, W] bool, True = padding), targets:
            a batch of :func:`examples.detection.data.collate_fn`.
        optimizer: None leaves the gradients in ``.grad`` (for tests).
        scaler: a ``GradScaler`` when ``amp``.
        clip_max_norm (float): gradient-norm clip; 0 disables it.

    Returns:
        ``{"loss": weighted total, "grad_norm": ..., <each loss>: value}`` as floats.

    Raises:
        FloatingPointError: the loss is not finite (stops the run instead of corrupting it).
    """
    device = torch.device(device)
    images, pixel_mask = images.to(device, non_blocking=True), pixel_mask.to(device, non_blocking=True)
    targets = _to_device(targets, device)
    use_amp = amp and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        outputs = model(images, pixel_mask)
    # The losses in float32, outside autocast (the criterion upcasts anyway).
    losses = criterion(outputs, targets)
    loss = total_loss(losses, weight_dict)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value}; losses: { {k: float(v) for k, v in losses.items()} }")
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None and use_amp:
        scaler.scale(loss).backward()
        if optimizer is not None:
            scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_max_norm > 0 and optimizer is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_max_norm))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))) \
            if params else 0.0
    if optimizer is not None:
        if scaler is not None and use_amp:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    record = {"loss": value, "grad_norm": grad_norm}
    record.update({key: float(v.detach()) for key, v in losses.items()})
    return record


class Progress:
    """A one-line progress bar on stderr (rewritten in place on a terminal, else every ~10%)."""

    def __init__(self, total: int, description: str, enabled: bool = True, width: int = 24) -> None:
        self.total, self.description, self.enabled, self.width = max(total, 1), description, enabled, width
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        fraction = min(done / self.total, 1.0)
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.description} [{bar}] {done}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {note}"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(100))
            if done >= self.total:
                sys.stderr.write("\n")
        else:
            decile = int(10 * fraction)
            if decile == self._last_decile:
                return
            self._last_decile = decile
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def train_one_epoch(model: nn.Module, criterion: nn.Module, weight_dict: Mapping[str, float],
                    loader: Iterable, optimizer: torch.optim.Optimizer, info: DistInfo, epoch: int, *,
                    scaler: torch.amp.GradScaler | None = None, amp: bool = False,
                    clip_max_norm: float = 0.1, progress: bool = True) -> dict[str, float]:
    """Train one epoch; return every logged number averaged over the epoch's steps (and ranks)."""
    model.train()
    criterion.train()
    sums: dict[str, float] = {}
    steps = 0
    bar = Progress(len(loader), f"epoch {epoch}", enabled=progress and info.is_main)  # type: ignore[arg-type]
    for images, pixel_mask, targets in loader:
        record = train_step(model, criterion, weight_dict, images, pixel_mask, targets, optimizer,
                            device=info.device, scaler=scaler, amp=amp, clip_max_norm=clip_max_norm)
        steps += 1
        for key, value in record.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(steps, f"loss {record['loss']:.3f}")
    means = {key: value / max(steps, 1) for key, value in sums.items()}
    if info.distributed:
        keys = sorted(means)
        packed = torch.tensor([means[k] for k in keys], dtype=torch.float64,
                              device=info.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(packed)
        means = {k: float(v) / info.world_size for k, v in zip(keys, packed.tolist())}
    return means


# ---------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    lr_scheduler: Any, scheme: Any, epoch: int, args: argparse.Namespace,
                    info: DistInfo, scaler: torch.amp.GradScaler | None = None,
                    history: list[dict[str, Any]] | None = None) -> None:
    """Write the run's state after ``epoch`` (0-based) to ``path`` (rank 0; a collective when distributed).

    Holds model, optimizer, lr scheduler, GradScaler, the scheme's ``state_dict``, the epoch,
    the arguments, the history and every rank's RNG states, so that ``--resume`` continues
    exactly where an uninterrupted run would be.
    """
    rng = [_rng_state()]
    if info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if not info.is_main:
        return
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheme": scheme.state_dict() if scheme is not None else None,
        "epoch": epoch,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rng": rng,
        "history": history or [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    lr_scheduler: Any = None, scheme: Any = None, info: DistInfo | None = None,
                    scaler: torch.amp.GradScaler | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load :func:`save_checkpoint`'s state into the given objects; return the checkpoint dict.

    The scheme's settings are checked against the checkpoint's (a different K raises).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    _unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and state.get("lr_scheduler") is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if scheme is not None:
        if state.get("scheme") is None:
            raise ValueError(f"{path} was trained without a hybrid scheme; resume it with --scheme one2one")
        scheme.load_state_dict(state["scheme"])
    if restore_rng and state.get("rng"):
        rank = info.rank if info is not None else 0
        if len(state["rng"]) == (info.world_size if info is not None else 1):
            _set_rng_state(state["rng"][rank])
    return state


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------- the run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train (or with ``--eval-only`` evaluate) as the arguments say; return the per-epoch history.

    Each epoch appends one JSON line to ``output_dir/log.jsonl`` (rank 0): ``epoch``, ``scheme``,
    ``lr``, the averaged ``train`` losses, the ``coco`` stats when evaluated, ``train_time_s``,
    ``eval_time_s``; and overwrites ``output_dir/checkpoint.pth``.
    """
    from .evaluate import evaluate_coco, format_ap_table
    from .model import build_model

    info = init_distributed(args.device)
    if args.amp and info.device.type != "cuda" and info.is_main:
        print("--amp needs a GPU; training in float32 on the CPU", file=sys.stderr)
    amp = args.amp and info.device.type == "cuda"
    out = Path(args.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    train_set, val_set = build_datasets(args, info)
    cfg = model_config(args, num_classes_of(train_set))
    seed_everything(args.seed)  # the same initial weights on every rank
    model = build_model(cfg).to(info.device)
    criterion, scheme, weight_dict = build_criterion(
        args.scheme, cfg, k=args.k, lambda_one2many=args.lambda_one2many, epochs=args.epochs,
        one2many_fraction=args.one2many_fraction, num_one2many_layers=args.num_one2many_layers,
        one2many_matcher=args.one2many_matcher)
    optimizer = build_optimizer(model, args)
    lr_drop = args.lr_drop if args.lr_drop is not None else default_lr_drop(args.epochs)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    seed_everything(args.seed + info.rank)  # data augmentation differs per rank

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=args.find_unused_parameters)

    start_epoch, history = 0, []
    if args.resume:
        state = load_checkpoint(Path(args.resume), model=model,
                                optimizer=None if args.eval_only else optimizer,
                                lr_scheduler=None if args.eval_only else lr_scheduler,
                                scheme=None if args.eval_only else scheme, info=info,
                                scaler=scaler, restore_rng=not args.eval_only)
        start_epoch, history = state["epoch"] + 1, list(state.get("history", []))
        if scheme is not None and scheme.epoch != start_epoch:
            scheme.set_epoch(start_epoch)

    val_loader = make_loader(val_set, args.batch_size, info, train=False, seed=args.seed,
                             num_workers=args.num_workers)
    if args.eval_only:
        started = time.perf_counter()
        stats = evaluate_coco(model, val_loader, _base(val_set), info.device, amp=amp)
        if info.is_main:
            print(format_ap_table(stats, title=f"COCO bbox, {args.scheme}"))
            _append_log(out, {"eval_only": True, "scheme": args.scheme, "coco": stats,
                              "eval_time_s": time.perf_counter() - started})
        return [{"coco": stats}]

    train_loader = make_loader(train_set, args.batch_size, info, train=True, seed=args.seed,
                               num_workers=args.num_workers)
    stop = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, stop):
        started = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        lr = optimizer.param_groups[0]["lr"]
        means = train_one_epoch(train_model, criterion, weight_dict, train_loader, optimizer, info, epoch,
                                scaler=scaler, amp=amp, clip_max_norm=args.clip_max_norm,
                                progress=not args.quiet)
        lr_scheduler.step()
        if scheme is not None:
            scheme.step()  # hybrid epoch: switches to one-to-one after rho * epochs
        train_time = time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch, "scheme": args.scheme, "lr": lr, "train": means,
                                  "train_time_s": round(train_time, 3)}
        last = epoch == args.epochs - 1
        if last or (args.eval_every > 0 and (epoch + 1) % args.eval_every == 0):
            started = time.perf_counter()
            record["coco"] = evaluate_coco(model, val_loader, _base(val_set), info.device, amp=amp)
            record["eval_time_s"] = round(time.perf_counter() - started, 3)
        history.append(record)
        if info.is_main:
            _append_log(out, record)
            ap = f" AP {100 * record['coco']['AP']:.1f}" if "coco" in record else ""
            if not args.quiet:
                print(f"epoch {epoch}: loss {means.get('loss', float('nan')):.4f}{ap} "
                      f"({train_time:.1f}s)", file=sys.stderr)
        save_checkpoint(out / CHECKPOINT_NAME, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                        scheme=scheme, epoch=epoch, args=args, info=info, scaler=scaler, history=history)
    return history


def _append_log(out: Path, record: Mapping[str, Any]) -> None:
    with open(out / LOG_NAME, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
