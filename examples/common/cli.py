"""The command-line arguments every task example shares; tasks add their own.

Example:
    >>> from examples.common.cli import training_parser, check_training_args
    >>> parser = training_parser("examples.pose.train", "Train a pose model.", epochs=50)
    >>> _ = parser.add_argument("--num-keypoints", type=int, default=17)   # the task's own
    >>> args = parser.parse_args(["--lr", "1e-4"])
    >>> check_training_args(parser, args)
    >>> args.epochs, args.lr, args.num_keypoints
    (50, 0.0001, 17)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["check_training_args", "training_parser"]


def training_parser(prog: str, description: str, **defaults: Any) -> argparse.ArgumentParser:
    """A parser with the shared training arguments; ``defaults`` override their defaults.

    Arguments: ``--epochs``, ``--batch-size`` (per process), ``--lr``, ``--weight-decay``,
    ``--lr-drop`` (epoch of the 10x drop; None: the task decides), ``--clip-max-norm``
    (0: off), ``--output-dir``, ``--resume``, ``--stop-after``, ``--eval-only``,
    ``--eval-every``, ``--amp``, ``--seed``, ``--num-workers``, ``--device``,
    ``--find-unused-parameters``, ``--quiet``.

    Args:
        prog: the program name shown in ``--help``.
        description: one line shown in ``--help``.
        defaults: new defaults by destination name, e.g. ``epochs=50``, ``lr=1e-4``.

    Raises:
        ValueError: a key of ``defaults`` is not one of the shared arguments.
    """
    p = argparse.ArgumentParser(prog, description=description)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=2, help="samples per process")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr-drop", type=int, default=None,
                   help="epoch at which the lr drops 10x (default: the task's schedule)")
    p.add_argument("--clip-max-norm", type=float, default=0.1, help="gradient-norm clip; 0 disables it")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/run"))
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    p.add_argument("--stop-after", type=int, default=None,
                   help="train at most N epochs in this invocation, then stop with a checkpoint as if "
                        "interrupted (the schedule still spans --epochs; continue with --resume)")
    p.add_argument("--eval-only", action="store_true", help="evaluate (the --resume checkpoint) and exit")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: only at the end)")
    p.add_argument("--eval-epochs", type=int, nargs="+", default=None, metavar="EPOCH",
                   help="evaluate after these 1-based epochs (and the last); replaces --eval-every")
    p.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (GPU only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DistributedDataParallel(find_unused_parameters=True): needed only for a model "
                        "variant that leaves some parameters without a gradient in a step")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    known = {action.dest for action in p._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ValueError(f"training_parser: {unknown} are not shared arguments; add them with "
                         f"parser.add_argument and give their default there")
    p.set_defaults(**defaults)
    return p


def check_training_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible values of the shared arguments with ``parser.error`` (exit 2)."""
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.clip_max_norm < 0:
        parser.error(f"--clip-max-norm must be >= 0 (0 disables clipping), got {args.clip_max_norm}")
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after must be >= 1, got {args.stop_after}")
    if args.eval_every < 0:
        parser.error(f"--eval-every must be >= 0 (0: only at the end), got {args.eval_every}")
    if args.eval_epochs is not None and any(e < 1 or e > args.epochs for e in args.eval_epochs):
        parser.error(f"--eval-epochs must be in 1..{args.epochs} (--epochs), got {args.eval_epochs}")
    if args.lr_drop is not None and args.lr_drop < 1:
        parser.error(f"--lr-drop must be >= 1, got {args.lr_drop}")
