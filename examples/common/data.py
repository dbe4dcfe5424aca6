"""Data plumbing every task shares: loaders whose order resume can replay, Subset unwrapping,
and the check that a generated synthetic split is already on disk.

Example:
    >>> import torch
    >>> from examples.common.distributed import DistInfo
    >>> data = list(range(10))
    >>> info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    >>> loader = make_loader(data, 4, info, train=True, seed=0, collate_fn=list)
    >>> loader.sampler.set_epoch(3)
    >>> first = [batch for batch in loader]
    >>> loader.sampler.set_epoch(3)
    >>> first == [batch for batch in loader], sorted(sum(first, []))   # same order for (seed, epoch)
    (True, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    >>> base_dataset(torch.utils.data.Subset(data, range(3))) is data
    True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from .distributed import DistInfo

__all__ = ["base_dataset", "coco_splits", "limit", "make_loader", "split_ready"]


def base_dataset(dataset: Any) -> Any:
    """The data set a ``torch.utils.data.Subset`` wraps (``--train-limit``); any other as it is."""
    return dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset


def limit(dataset: Any, count: int | None) -> Any:
    """The first ``count`` items of ``dataset`` as a ``Subset``; all of it for None or 0."""
    if not count:
        return dataset
    return torch.utils.data.Subset(dataset, range(min(count, len(dataset))))


def make_loader(dataset: Any, batch_size: int, info: DistInfo, *, train: bool, seed: int,
                collate_fn: Callable[[Sequence[Any]], Any], num_workers: int = 0) -> DataLoader:
    """A loader over this rank's share; shuffled per epoch (``sampler.set_epoch``) with ``seed``.

    A ``DistributedSampler`` also for one process: its order depends only on (seed, epoch), so
    a resumed run reads the same images in the same order as an uninterrupted one. Training
    drops the last uneven batch only under ``torch.distributed`` (every rank steps equally).

    Args:
        dataset: the data set (a map-style one).
        batch_size: samples per process.
        info: this process's rank and device (:func:`examples.common.init_distributed`).
        train: shuffle (training) or keep the order (evaluation; such a loader draws no
            numbers from torch's global generator, so evaluating cannot change training).
        seed: the sampler's seed.
        collate_fn: the task's batcher, e.g. :func:`examples.detection.data.collate_fn`.
        num_workers: loader worker processes.
    """
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train,
                                 seed=seed, drop_last=train and info.distributed)
    # Each iterator of a loader draws its base seed from the loader's generator, by default
    # torch's global one. An evaluation loader gets a generator of its own, so that how often
    # a run evaluates cannot shift the random numbers its training draws.
    generator = None if train else torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, drop_last=False, pin_memory=info.device.type == "cuda",
                      generator=generator)


def split_ready(annotation_file: str | Path, *, count: int, size: tuple[int, int], num_categories: int | None = None,
                **info: Any) -> bool:
    """Whether a generated synthetic split is on disk as asked, so it need not be drawn again.

    True when ``annotation_file`` reads as JSON with ``count`` images, the first of ``size``
    (h, w), ``num_categories`` categories (when given) and every ``info`` item equal to the
    file's ``info`` entry of that name (e.g. ``seed=0, max_objects=20``).

    Example:
        >>> import json, pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "instances_val.json"
        >>> _ = path.write_text(json.dumps({"info": {"seed": 0}, "categories": [{"id": 1}],
        ...                                 "images": [{"height": 8, "width": 8}]}))
        >>> split_ready(path, count=1, size=(8, 8), num_categories=1, seed=0), split_ready(path, count=1,
        ...     size=(8, 8), seed=1)
        (True, False)
    """
    try:
        data = json.loads(Path(annotation_file).read_text())
    except (OSError, ValueError):
        return False
    images = data.get("images", [])
    found = data.get("info", {})
    return (len(images) == count
            and (num_categories is None or len(data.get("categories", [])) == num_categories)
            and all(found.get(key) == value for key, value in info.items())
            and all((image["height"], image["width"]) == tuple(size) for image in images[:1]))


def coco_splits(data: str, root: str | Path, info: DistInfo, *, prefix: str,
                make_split: Callable[[str], None] | None = None) -> dict[str, tuple[Path, Path]]:
    """``{"train": (image_dir, annotation_file), "val": (...)}`` of a COCO-format data set.

    ``data="coco"``: ``root/{train,val}2017/`` and ``root/annotations/{prefix}_{split}2017.json``
    (COCO's layout). ``data="synthetic"``: ``root/{train,val}/`` and
    ``root/annotations/{prefix}_{split}.json``; rank 0 first calls ``make_split(split)`` for
    each split (which generates it when it is not on disk, e.g. after :func:`split_ready`),
    the other ranks wait for it at a barrier.

    Args:
        data: ``"synthetic"`` or ``"coco"``.
        root: the data set's folder (``--data-path``).
        info: this process's rank.
        prefix: the annotation files' prefix, ``"instances"`` or ``"person_keypoints"``.
        make_split: ``make_split(split)`` makes a synthetic split ready.

    Raises:
        FileNotFoundError: an annotation file is missing (the message names it and the arguments).
    """
    root = Path(root)
    if data == "synthetic":
        if info.is_main and make_split is not None:
            for split in ("train", "val"):
                make_split(split)
        if info.distributed:
            dist.barrier()
        paths = {split: (root / split, root / "annotations" / f"{prefix}_{split}.json") for split in ("train", "val")}
    else:
        paths = {split: (root / f"{split}2017", root / "annotations" / f"{prefix}_{split}2017.json")
                 for split in ("train", "val")}
    for split, (_, annotation_file) in paths.items():
        if not annotation_file.is_file():
            raise FileNotFoundError(f"{split} annotations not found: {annotation_file} (--data {data} "
                                    f"--data-path {root})")
    return paths
