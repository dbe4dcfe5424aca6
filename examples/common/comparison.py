"""The paired multi-seed comparison of one-to-one and hybrid training, for any task.

For each seed it trains the task twice, once one-to-one and once with the hybrid branch,
from identical initial weights (the runs seed before building the model, and the branch
only adds its one-to-many query rows) and reading the same images in the same order (the
sampler's order depends only on the seed and the epoch). So a per-seed difference is the
effect of the extra supervision, not of another start. The runs go in parallel worker
processes of one thread each; after every epoch each run is evaluated.

The readout (:func:`summarize`):

* per line (a run's evaluation, e.g. ``branch o2o``) the AP at an *early* epoch and at the
  *end*, the end being the mean AP over the last ``n`` evaluated epochs of each run (default
  3: one epoch's AP on a small validation set swings by a few points), as mean [min, max]
  over seeds;
* the paired difference hybrid - one-to-one per seed, its mean with a 95 % confidence
  interval (paired t: ``mean ± t(0.975, S-1) · sd / sqrt(S)``) and the sign count
  "n of S seeds ahead", early and at the end.

:func:`main` prints progress while the runs train (each run reports its epoch, step and
loss at least every ``--progress-every`` seconds and a line per epoch with its AP; when no
run has said anything for that long, a line says where each run stands), then the table
(:func:`format_report`), and writes ``<stem>.json`` (every number) and ``<stem>_ap.png``
(:func:`plot_curves`) to ``--output-dir``. A task supplies a :class:`Comparison`: its
:class:`~examples.common.runner.Task`, the lines to read, its data and model settings and
their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import queue as queue_module
import sys
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .runner import Task

__all__ = [
    "Comparison",
    "Line",
    "format_report",
    "main",
    "paired_difference",
    "plot_curves",
    "prepare_data",
    "run_jobs",
    "summarize",
    "train_worker",
]


@dataclasses.dataclass(frozen=True)
class Line:
    """One curve of the comparison: the ``key`` evaluation (``"coco"``) of the ``scheme`` runs."""

    name: str
    scheme: str
    key: str


class Comparison:
    """What a task supplies to be compared by :func:`main`; a task subclasses it.

    Attributes:
        task: the task (its ``train`` command line is what each run gets).
        task_ref: ``"module:ATTRIBUTE"`` of ``task`` for the worker processes to import;
            default ``"examples.<name>.task:TASK"``.
        lines: the curves; default ``one2one`` and ``branch o2o`` (the branch's one-to-one
            queries) of ``task.metric``. The first ``one2one`` line is the paired baseline.
        hybrid: the line of the paired difference (default ``"branch o2o"``).
        metric: how the table names the numbers (default ``"COCO " + task.metric_name``).
        stem: file names ``<stem>.json`` and ``<stem>_ap.png`` (default ``task.name``).
        defaults: new defaults of any option by destination (``seeds``, ``epochs``, ...).
        early_fraction: the default early epoch is ``ceil(early_fraction * epochs)``.
        caveat: printed under the table: what the run can and cannot show.
        ignore_warnings: message patterns the workers silence (known, said in the docs).
    """

    task: Task
    hybrid: str = "branch o2o"
    defaults: Mapping[str, Any] = types.MappingProxyType({})
    early_fraction: float = 0.5
    caveat: str = ""
    ignore_warnings: tuple[str, ...] = ()

    @property
    def task_ref(self) -> str:
        """``"examples.<name>.task:TASK"``: where a worker process finds the task."""
        return f"examples.{self.task.name}.task:TASK"

    @property
    def lines(self) -> tuple[Line, ...]:
        """``one2one`` and ``branch o2o`` of the task's metric."""
        return (Line("one2one", "one2one", self.task.metric), Line("branch o2o", "branch", self.task.metric))

    @property
    def metric(self) -> str:
        """``"COCO " + task.metric_name``."""
        return f"COCO {self.task.metric_name}"

    @property
    def stem(self) -> str:
        """The task's name."""
        return self.task.name

    @property
    def baseline(self) -> str:
        """The name of the one-to-one line."""
        return next(line.name for line in self.lines if line.scheme == "one2one")

    @property
    def schemes(self) -> tuple[str, ...]:
        """The schemes to train per seed, the hybrid one first (it is the longer run)."""
        names = list(dict.fromkeys(line.scheme for line in self.lines))
        return tuple(sorted(names, key=lambda scheme: scheme == "one2one"))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the task's own data and model options (the shared ones are :func:`comparison_parser`'s)."""

    def train_argv(self, options: argparse.Namespace, scheme: str) -> list[str]:
        """The task's options as arguments of its train command (the shared ones are added)."""
        return []

    def title(self, options: argparse.Namespace) -> str:
        """The figure's title."""
        return ""


# ---------------------------------------------------------------------------------- statistics


def _t_quantile(probability: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def paired_difference(differences: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, paired-t confidence interval and sign count of per-seed differences.

    Args:
        differences: hybrid - one-to-one, one value per seed.
        confidence: of the two-sided interval.

    Returns:
        ``{"values", "n", "mean", "sd" (sample, n - 1), "t" (the quantile), "low", "high",
        "ahead" (values > 0)}``; ``sd``, ``t``, ``low`` and ``high`` are None for one seed.

    Raises:
        ValueError: no differences, or ``confidence`` outside (0, 1).

    Example:
        >>> r = paired_difference([1.0, 2.0, 3.0])
        >>> r["mean"], r["ahead"], round(r["low"], 3), round(r["high"], 3)
        (2.0, 3, -0.484, 4.484)
    """
    values = [float(v) for v in differences]
    if not values:
        raise ValueError("paired_difference: no differences (one per seed) given")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_difference: confidence must be in (0, 1), got {confidence}")
    n = len(values)
    mean = sum(values) / n
    out: dict[str, Any] = {"values": values, "n": n, "mean": mean, "sd": None, "t": None, "low": None,
                           "high": None, "ahead": sum(v > 0 for v in values), "confidence": confidence}
    if n >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        t = _t_quantile(0.5 + confidence / 2, n - 1)
        out.update(sd=sd, t=t, low=mean - t * sd / math.sqrt(n), high=mean + t * sd / math.sqrt(n))
    return out


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def summarize(curves: Mapping[str, Mapping[int, Sequence[float]]], early_epoch: int, *, end_epochs: int = 3,
              hybrid: str | None = None, baseline: str | None = None,
              confidence: float = 0.95) -> dict[str, Any]:
    """The comparison's numbers: each line early and at the end, and the paired difference.

    Args:
        curves: ``{line: {seed: [AP after epoch 1, 2, ...]}}`` (fractions in [0, 1]; None
            after an epoch that was not evaluated); every line and seed with the same number
            of epochs, the early one and the last ``end_epochs`` evaluated.
        early_epoch: 1-based epoch of the early column.
        end_epochs: ``n``: a run's end value is the mean of its last ``n`` epochs.
        hybrid, baseline: the two lines of the paired difference (``hybrid - baseline`` per
            seed); None, or a line missing, leaves ``paired`` None.
        confidence: of the paired interval.

    Returns:
        ``{"epochs": E, "early_epoch": e, "end_epochs": n, "seeds": [...], "lines": {line:
        {"early": spread, "end": spread, "end_per_seed": {seed: value}, "per_epoch": [spread
        or None, ...]}}, "paired": {"hybrid", "baseline", "early": d, "end": d} or None}``; a
        spread is ``{"mean", "min", "max"}`` over seeds (None for an epoch not evaluated),
        ``d`` a :func:`paired_difference`.

    Raises:
        ValueError: no curves, curves of different lengths, ``early_epoch`` outside 1..E,
            ``end_epochs`` outside 1..E, or one of the epochs read not evaluated.
    """
    lengths = {len(c) for line in curves.values() for c in line.values()}
    if len(lengths) != 1:
        raise ValueError(f"summarize: every curve needs the same number of epochs, got lengths {sorted(lengths)}")
    epochs = lengths.pop()
    if not 1 <= early_epoch <= epochs:
        raise ValueError(f"summarize: early_epoch must be in 1..{epochs}, got {early_epoch}")
    if not 1 <= end_epochs <= epochs:
        raise ValueError(f"summarize: end_epochs must be in 1..{epochs}, got {end_epochs}")
    seeds = sorted({seed for line in curves.values() for seed in line})
    read = sorted({early_epoch, *range(epochs - end_epochs + 1, epochs + 1)})
    for name, per_seed in curves.items():
        for seed, curve in per_seed.items():
            missing = [epoch for epoch in read if curve[epoch - 1] is None]
            if missing:
                raise ValueError(f"summarize: {name!r} seed {seed} was not evaluated after epochs {missing}, "
                                 f"which the summary reads (early {early_epoch}, the last {end_epochs})")
    lines: dict[str, Any] = {}
    for name, per_seed in curves.items():
        columns = list(zip(*per_seed.values()))
        end = {seed: sum(curve[-end_epochs:]) / end_epochs for seed, curve in per_seed.items()}
        lines[name] = {"early": _spread(columns[early_epoch - 1]), "end": _spread(list(end.values())),
                       "end_per_seed": end,
                       "per_epoch": [None if any(v is None for v in c) else _spread(c) for c in columns]}
    paired = None
    if hybrid in curves and baseline in curves and set(curves[hybrid]) == set(curves[baseline]):
        order = sorted(curves[hybrid])
        early = [curves[hybrid][s][early_epoch - 1] - curves[baseline][s][early_epoch - 1] for s in order]
        end = [lines[hybrid]["end_per_seed"][s] - lines[baseline]["end_per_seed"][s] for s in order]
        paired = {"hybrid": hybrid, "baseline": baseline, "seeds": order,
                  "early": paired_difference(early, confidence), "end": paired_difference(end, confidence)}
    return {"epochs": epochs, "early_epoch": early_epoch, "end_epochs": end_epochs, "seeds": seeds,
            "lines": lines, "paired": paired}


# ---------------------------------------------------------------------------------- report


def _spread_cell(stats: Mapping[str, float]) -> str:
    return f"{100 * stats['mean']:5.1f} [{100 * stats['min']:.1f}, {100 * stats['max']:.1f}]"


def _paired_cell(d: Mapping[str, Any]) -> str:
    if d["low"] is None:
        return f"{100 * d['mean']:+5.1f} [n/a]"
    return f"{100 * d['mean']:+5.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _end_label(summary: Mapping[str, Any]) -> str:
    epochs, n = summary["epochs"], summary["end_epochs"]
    return f"end: epoch {epochs}" if n == 1 else f"end: epochs {epochs - n + 1}-{epochs}"


def format_report(summary: Mapping[str, Any], *, metric: str = "COCO AP", val_images: int | None = None) -> str:
    """The comparison's table (AP in %).

    One row per line: mean [min, max] over seeds at the early epoch and at the end (the mean
    of each run's last ``end_epochs`` epochs, said in the header). Then the paired
    difference: mean [confidence interval], the per-seed values and the sign count.

    Example:
        >>> s = summarize({"one2one": {0: [0.1, 0.2], 1: [0.1, 0.3]},
        ...                "branch o2o": {0: [0.2, 0.3], 1: [0.1, 0.3]}}, early_epoch=1, end_epochs=1,
        ...               hybrid="branch o2o", baseline="one2one")
        >>> print(format_report(s).splitlines()[4])
        one2one                     10.0 [10.0, 10.0]         25.0 [20.0, 30.0]
    """
    seeds = summary["seeds"]
    where = f" on {val_images} validation images" if val_images else ""
    early_head, end_head = f"epoch {summary['early_epoch']}", _end_label(summary)
    head = f"{'':<24} {early_head:>19}   {end_head:>23}"
    lines = [f"{metric} (%){where}, {len(seeds)} seeds {seeds}; end = the mean of each run's last "
             f"{summary['end_epochs']} evaluated epochs", "", head, "-" * len(head)]
    for name, row in summary["lines"].items():
        lines.append(f"{name:<24} {_spread_cell(row['early']):>19}   "
                     f"{_spread_cell(row['end']):>23}")
    paired = summary.get("paired")
    if paired:
        early, end = paired["early"], paired["end"]
        level = f"{100 * early['confidence']:g} %"
        lines.append("-" * len(head))
        lines.append(f"{paired['hybrid'] + ' - ' + paired['baseline']:<24} {_paired_cell(early):>19}   "
                     f"{_paired_cell(end):>23}")
        per_seed = [" ".join(f"{100 * v:+.1f}" for v in d["values"]) for d in (early, end)]
        lines.append(f"{'  per seed':<24} {per_seed[0]:>19}   {per_seed[1]:>23}")
        n = len(paired["seeds"])
        lines.append(f"{'  seeds ahead':<24} {str(early['ahead']) + ' of ' + str(n):>19}   "
                     f"{str(end['ahead']) + ' of ' + str(n):>23}")
        lines.append("")
        lines.append(f"rows: mean [min, max] over seeds; the difference row: paired mean [{level} paired-t "
                     f"interval]")
    return "\n".join(lines)


def plot_curves(summary: Mapping[str, Any], path: Path, *, title: str = "", metric: str = "COCO AP") -> None:
    """AP (%) per epoch of each line, mean over seeds with a min-max band, as a PNG.

    A dotted line marks the early epoch, a shaded span the epochs averaged for the end.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, row in summary["lines"].items():
        points = [(epoch, s) for epoch, s in enumerate(row["per_epoch"], start=1) if s is not None]
        epochs = [epoch for epoch, _ in points]
        axis.plot(epochs, [100 * s["mean"] for _, s in points], marker="o", label=name)
        axis.fill_between(epochs, [100 * s["min"] for _, s in points], [100 * s["max"] for _, s in points], alpha=0.2)
    axis.axvline(summary["early_epoch"], color="grey", linestyle=":", linewidth=1)
    end = summary["epochs"]
    axis.axvspan(end - summary.get("end_epochs", 1) + 0.5, end + 0.5, color="grey", alpha=0.08)
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"{metric} (%)")
    axis.set_title(title or f"mean and min-max over seeds {summary['seeds']}", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------- the runs


_REPORT: Any = None  # the worker's queue to the main process (set by _init_worker)
_INTERVAL = 20.0


def _init_worker(channel: Any, interval: float) -> None:
    global _REPORT, _INTERVAL
    _REPORT, _INTERVAL = channel, interval


def report(job: str, text: str) -> None:
    """Send a progress line of ``job`` to the main process (printed there); a no-op outside a worker."""
    if _REPORT is not None:
        _REPORT.put((job, text))


def train_worker(task_ref: str, job: str, argv: list[str], ignore_warnings: Sequence[str] = (),
                 metric: str | None = None) -> list[dict[str, Any]]:
    """Run one training in this (worker) process, one thread; return its history.

    Reports progress (:func:`report`): the epoch, step and loss at least every
    ``--progress-every`` seconds, and each finished epoch with its loss and ``metric``'s AP.

    Args:
        task_ref: ``"module:ATTRIBUTE"`` of the :class:`~examples.common.runner.Task`.
        job: the run's name in the progress lines, e.g. ``"branch seed 0"``.
        argv: the task's train command line.
        ignore_warnings: message patterns to silence in this process.
        metric: the record key of the AP to report (default: the task's).
    """
    import torch

    from .distributed import cleanup_distributed
    from .runner import run, task_parser

    torch.set_num_threads(1)  # one thread per run: the runs, not the threads, use the cores
    for pattern in ignore_warnings:
        warnings.filterwarnings("ignore", message=pattern)
    module, _, attribute = task_ref.partition(":")
    task: Task = getattr(importlib.import_module(module), attribute)
    key = metric or task.metric
    last = [time.monotonic()]

    def on_step(epoch: int, step: int, steps: int, record: Mapping[str, float]) -> None:
        now = time.monotonic()
        if now - last[0] >= _INTERVAL:
            last[0] = now
            report(job, f"epoch {epoch + 1} step {step}/{steps} loss {record['loss']:.3f}")

    def on_epoch(record: Mapping[str, Any]) -> None:
        last[0] = time.monotonic()
        ap = f" AP {100 * record[key]['AP']:.1f}" if key in record else ""
        report(job, f"epoch {record['epoch'] + 1} done: loss {record['train']['loss']:.3f}{ap}")

    try:
        return run(task, task_parser(task).parse_args(argv), on_step=on_step, on_epoch=on_epoch)
    finally:
        cleanup_distributed()


def run_jobs(jobs: Mapping[str, tuple[Callable[..., Any], tuple[Any, ...]]], *, workers: int, interval: float,
             emit: Callable[[str], None]) -> dict[str, Any]:
    """Run ``jobs`` in ``workers`` spawned processes and relay their progress; return their results.

    Each job is ``name -> (function, args)``; the function runs in a worker whose
    :func:`report` lines reach ``emit`` as ``"[  12s] name: text"``. When nothing has been
    emitted for ``interval`` seconds, a line says where each unfinished job stands (its
    last report, or "no report yet"), so a line comes at least every
    ``interval`` seconds while anything runs. A finished job emits ``"name: finished"``.

    Raises:
        whatever a job raised (after the pool shuts down).
    """
    context = get_context("spawn")
    channel = context.Queue()
    started = time.monotonic()
    latest: dict[str, str] = {}
    results: dict[str, Any] = {}
    last = [started]

    def say(text: str) -> None:
        emit(f"[{time.monotonic() - started:5.0f}s] {text}")
        last[0] = time.monotonic()

    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(channel, interval)) as pool:
        futures: dict[str, Future] = {name: pool.submit(function, *args) for name, (function, args) in jobs.items()}
        while len(results) < len(futures):
            try:
                job, text = channel.get(timeout=min(0.5, interval / 4))
                latest[job] = text
                say(f"{job}: {text}")
            except queue_module.Empty:
                pass
            for name, future in futures.items():
                if name not in results and future.done():
                    results[name] = future.result()
                    say(f"{name}: finished")
            if time.monotonic() - last[0] >= interval and len(results) < len(futures):
                standing = [f"{name} ({latest.get(name, 'no report yet')})" for name in futures if name not in results]
                say(f"still training: {'; '.join(standing)}")
    while True:  # lines sent just before the last job ended
        try:
            job, text = channel.get_nowait()
        except queue_module.Empty:
            break
        say(f"{job}: {text}")
    return results


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def comparison_parser(spec: Comparison) -> argparse.ArgumentParser:
    """The command line of ``python -m examples.<task>.main_job``: shared options, the task's, its defaults."""
    p = argparse.ArgumentParser(f"examples.{spec.task.name}.main_job",
                                description=f"one-to-one vs hybrid {spec.task.name}, paired over seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one pair of runs per seed")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--early-epoch", type=int, default=None,
                   help=f"the early column (default: {spec.early_fraction:g} of --epochs, rounded up)")
    p.add_argument("--end-epochs", type=int, default=None,
                   help="the end value of a run is its mean AP over its last N evaluated epochs (default: 3, "
                        "or every epoch of a shorter run)")
    p.add_argument("--every-epoch", action="store_true",
                   help="evaluate after every epoch (the whole curve); default: only the epochs the table reads "
                        "(the early one and the last --end-epochs), which saves most of the evaluation time")
    p.add_argument("--workers", type=int, default=None,
                   help="runs in parallel, one thread each (default: one per available core, at most one per run)")
    p.add_argument("--progress-every", type=float, default=20.0,
                   help="seconds between progress lines at most (while any run trains)")
    p.add_argument("--output-dir", type=Path, default=Path(f"outputs/{spec.stem}-demo"))
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("data, model and training (shared)")
    g.add_argument("--train-images", type=int, default=160)
    g.add_argument("--val-images", type=int, default=64)
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--num-queries-one2one", type=int, default=30)
    g.add_argument("--num-queries-one2many", type=int, default=90)
    g.add_argument("--k", type=int, default=6, help="GT copies of the one-to-many group")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--lr", type=float, default=4e-4)
    spec.add_arguments(p.add_argument_group(spec.task.name))  # type: ignore[arg-type]
    known = {action.dest for action in p._actions}
    unknown = sorted(set(spec.defaults) - known)
    if unknown:
        raise ValueError(f"Comparison of {spec.task.name!r}: defaults {unknown} are no options; known: {sorted(known)}")
    p.set_defaults(**spec.defaults)
    return p


def _train_argv(spec: Comparison, options: argparse.Namespace, scheme: str, seed: int) -> list[str]:
    return [
        "--data", "synthetic", "--data-path", str(options.output_dir / "data"), "--data-seed", str(options.data_seed),
        "--scheme", scheme, "--config", "tiny", "--epochs", str(options.epochs),
        "--batch-size", str(options.batch_size), "--lr", str(options.lr), "--k", str(options.k),
        "--num-queries-one2one", str(options.num_queries_one2one),
        "--num-queries-one2many", str(options.num_queries_one2many),
        "--synthetic-train-images", str(options.train_images), "--synthetic-val-images", str(options.val_images),
        *spec.train_argv(options, scheme),
        "--seed", str(seed), "--output-dir", str(options.output_dir / "runs" / f"{scheme}-seed{seed}"),
        "--device", "cpu", *_eval_argv(options), "--quiet",
    ]


def _eval_argv(options: argparse.Namespace) -> list[str]:
    """Every epoch with ``--every-epoch``, else the epochs the table reads: the early one and
    the last ``--end-epochs`` (evaluation has a generator of its own, so which epochs are
    evaluated does not change the training)."""
    if options.every_epoch:
        return ["--eval-every", "1"]
    read = sorted({options.early_epoch, *range(options.epochs - options.end_epochs + 1, options.epochs + 1)})
    return ["--eval-epochs", *map(str, read)]


def prepare_data(task: Task, argv: Sequence[str]) -> float:
    """Make the data of ``task``'s train command line ``argv`` ready in this process (generate
    the synthetic splits once, before parallel workers would each try); return the training
    set's objects per image."""
    import torch

    from .coco import coco_api
    from .data import base_dataset
    from .distributed import DistInfo
    from .runner import task_parser

    args = task_parser(task).parse_args(list(argv))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    train, _ = task.build_data(args, info)
    data = coco_api(base_dataset(train)).dataset
    return len(data["annotations"]) / max(len(data["images"]), 1)


def main(spec: Comparison, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print progress and the table; write the JSON and the PNG; return the summary.

    The summary is :func:`summarize`'s with the raw ``curves``, the ``settings``,
    ``objects_per_image`` and the wall ``seconds``.
    """
    parser = comparison_parser(spec)
    options = parser.parse_args(argv)
    if options.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {options.epochs}")
    early = options.early_epoch if options.early_epoch is not None else \
        max(1, math.ceil(spec.early_fraction * options.epochs))
    if not 1 <= early <= options.epochs:
        parser.error(f"--early-epoch must be in 1..{options.epochs}, got {early}")
    if options.end_epochs is None:
        options.end_epochs = min(3, options.epochs)
    if not 1 <= options.end_epochs <= options.epochs:
        parser.error(f"--end-epochs must be in 1..{options.epochs}, got {options.end_epochs}")
    if len(set(options.seeds)) != len(options.seeds):
        parser.error(f"--seeds must be distinct, got {options.seeds}")
    options.early_epoch = early
    if options.progress_every <= 0:
        parser.error(f"--progress-every must be > 0 seconds, got {options.progress_every}")
    runs = [(scheme, seed) for seed in options.seeds for scheme in spec.schemes]  # longest first
    if options.workers is None:
        options.workers = max(1, min(len(runs), _available_cores()))
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}")
    started = time.perf_counter()
    out = options.output_dir
    out.mkdir(parents=True, exist_ok=True)
    per_image = prepare_data(spec.task, _train_argv(spec, options, spec.schemes[0], options.seeds[0]))
    print(f"== {spec.title(options)}", file=sys.stderr, flush=True)
    print(f"== {len(options.seeds)} seeds x ({', '.join(spec.schemes)}), {options.epochs} epochs of "
          f"{options.train_images} images ({per_image:.1f} objects per image); {options.workers} parallel runs of "
          f"1 thread; a progress line at least every {options.progress_every:g}s", file=sys.stderr, flush=True)

    jobs = {f"{scheme} seed {seed}": (train_worker, (spec.task_ref, f"{scheme} seed {seed}",
                                                     _train_argv(spec, options, scheme, seed), spec.ignore_warnings))
            for scheme, seed in runs}

    def emit(text: str) -> None:
        if not options.quiet:
            print(text, file=sys.stderr, flush=True)

    results = run_jobs(jobs, workers=options.workers, interval=options.progress_every, emit=emit)
    histories = {(scheme, seed): results[f"{scheme} seed {seed}"] for scheme, seed in runs}
    curves = {line.name: {seed: [r[line.key]["AP"] if line.key in r else None for r in histories[(line.scheme, seed)]]
                          for seed in options.seeds} for line in spec.lines}
    summary = summarize(curves, early, end_epochs=options.end_epochs, hybrid=spec.hybrid, baseline=spec.baseline)
    seconds = time.perf_counter() - started
    plot_curves(summary, out / f"{spec.stem}_ap.png", title=spec.title(options), metric=spec.metric)
    summary.update({"curves": curves, "seconds": round(seconds, 1), "objects_per_image": per_image,
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}})
    (out / f"{spec.stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_report(summary, metric=spec.metric, val_images=options.val_images))
    if spec.caveat:
        print()
        print(spec.caveat)
    print(f"\nwrote {out / (spec.stem + '_ap.png')} and {out / (spec.stem + '.json')}; {seconds:.0f}s in all")
    return summary
