"""Time the matching of one H-DETR training step: hybridmatch's matchers against the official-style loop.

Usage::

    python benchmarks/matching_step.py [--threads 1 2] [--batches 2 16] [--objects 7 30 100 300]
                                       [--repeat 5] [--json out.json] [--baseline before.json]
                                       [--no-official] [--official-max-pairs P] [--no-split]
                                       [--no-memory] [--markdown MATCHING.md] [--quick]

    # the full table of issue 22 (both thread counts, 7-300 objects, batch 2 and 16):
    python benchmarks/matching_step.py --json benchmarks/matching.json --markdown benchmarks/MATCHING.md

One step of H-DETR's hybrid branch (6 decoder layers + the two-stage encoder output) calls the
matcher 7 times for the 300 one-to-one queries and 7 times for the 1500 one-to-many queries
against the ground truth repeated K = 6 times; the 7 calls of a group match 7 output dicts
against one list of targets. For each thread count, batch size and number of objects per
image, this script times:

- ``hybridmatch``: the matching ``HybridCriterion`` does in such a step, from the outputs dicts
  and list of target dicts to DETR's index pairs: per group, the 6 decoder layers in one
  ``match_layers`` call (one cost computation and one solver call for the 6 x B images) and
  the encoder proposals in a call of their own (their targets differ in a real step);
  ``HungarianMatcher()`` on 300 queries, ``OneToManyMatcher(k=6)`` on 1500 (capacity 6, no
  copies);
- ``hybridmatch, a call per layer``: the same matchers called 7 + 7 times, a layer at a time
  (what a criterion of one's own that calls the matcher per layer gets without
  ``HybridCriterion``);
- ``official-style``: the loop of DETR / H-DETR's own matcher: one concatenated ``(B*N, sum M)``
  focal + L1 + GIoU cost, ``.cpu()``, split per image, ``scipy.optimize.linear_sum_assignment``
  per image; the one-to-many calls on targets repeated 6 times (``--no-official`` skips it);
- the *overhead* of one ``HungarianMatcher`` call at 300 queries: the call minus the time of
  its two parts done by hand (the cost on pre-padded targets, and the solver on that cost):
  what the matcher's padding, checks and index conversion add;
- the *split* of one call of each kind (``--no-split`` skips it): hybridmatch's cost and
  solve, the official-style cost and solve, and the one-to-many problem solved on K copies
  of hybridmatch's cost by scipy and by lap, image by image;
- the *peak extra memory* of one step (``--no-memory`` skips it; Linux only): in a fresh
  process per setting, the peak resident set while one step runs (reset through
  ``/proc/self/clear_refs`` once the inputs are built) minus the resident set before it.

The official-style loop at batch 16 and many objects builds a ``(B*N, sum K*M)`` matrix
(24000 x 43200 at 300 objects): settings above ``--official-max-pairs`` of it are skipped and
say so. ``--markdown`` writes the tables, the command and the machine to a file.

Inputs are seeded random DETR-like outputs (91 focal classes; a third of the queries jittered
copies of a ground-truth box). Times are medians of ``--repeat`` runs after one warm-up. The
table gives milliseconds per step and the speed-up over the official-style loop. The script
imports whichever ``hybridmatch`` is importable, so running it from two checkouts measures a
change; ``--baseline`` adds the columns of an earlier JSON (same settings) to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hybridmatch  # noqa: E402
from hybridmatch import HungarianMatcher, OneToManyMatcher, batched_linear_sum_assignment, pad_targets  # noqa: E402
from hybridmatch.boxes import box_cxcywh_to_xyxy, pairwise_giou  # noqa: E402

NUM_CLASSES = 91
CALLS = 7
K = 6


def make_inputs(seed: int, batch: int, num_queries: int, objects: int) -> tuple[dict, list]:
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        centres = torch.rand(objects, 2, generator=generator) * 0.8 + 0.1
        sizes = torch.rand(objects, 2, generator=generator) * 0.3 + 0.02
        labels = torch.randint(0, NUM_CLASSES, (objects,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centres, sizes], dim=1)})
    boxes = torch.cat(
        [torch.rand(batch, num_queries, 2, generator=generator), torch.rand(batch, num_queries, 2, generator=generator) * 0.4 + 0.01],
        dim=-1,
    )
    for b, target in enumerate(targets):
        copies = min(num_queries // 3, objects * 4)
        source = target["boxes"][torch.arange(copies) % objects]
        boxes[b, :copies] = (source + torch.randn(copies, 4, generator=generator) * 0.02).clamp(0.01, 0.99)
    logits = torch.randn(batch, num_queries, NUM_CLASSES, generator=generator)
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def official_style_match(outputs: dict, targets: list) -> list:
    """DETR's matcher loop: one concatenated cost, to the host, scipy per image."""
    batch, num_queries = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).sigmoid()
    boxes = outputs["pred_boxes"].flatten(0, 1)
    labels = torch.cat([t["labels"] for t in targets])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    alpha, gamma = 0.25, 2.0
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    cost_class = pos[:, labels] - neg[:, labels]
    cost_bbox = torch.cdist(boxes, target_boxes, p=1)
    cost_giou = -pairwise_giou(box_cxcywh_to_xyxy(boxes)[None], box_cxcywh_to_xyxy(target_boxes)[None])[0]
    cost = (5 * cost_bbox + 2 * cost_class + 2 * cost_giou).view(batch, num_queries, -1).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    out = []
    for b, part in enumerate(cost.split(sizes, -1)):
        rows, cols = linear_sum_assignment(part[b].numpy())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


def median_ms(function, repeat: int) -> float:
    function()  # warm-up: builds, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(threads: int, batch: int, objects: int, repeat: int, official: bool, split: bool = False,
            memory: bool = False) -> dict:
    torch.set_num_threads(threads)
    one2one = HungarianMatcher()
    one2many = OneToManyMatcher(k=K)
    o2o_inputs, o2m_inputs = step_inputs(batch, objects)

    def hybridmatch_step() -> None:
        step_as_the_criterion_does(one2one, one2many, o2o_inputs, o2m_inputs)

    def per_layer_step() -> None:
        for outputs, targets in o2o_inputs:
            one2one(outputs, targets)
        for outputs, targets in o2m_inputs:
            one2many(outputs, targets)

    record = {"threads": threads, "batch": batch, "objects": objects, "hybridmatch_ms": median_ms(hybridmatch_step, repeat),
              "per_layer_ms": median_ms(per_layer_step, repeat)}

    outputs, targets = o2o_inputs[0]
    padded = pad_targets(targets)
    cost = one2one.cost(outputs, padded)
    counts = padded.num_targets_list
    call = median_ms(lambda: one2one(outputs, targets), max(repeat, 20))
    parts = median_ms(lambda: one2one.cost(outputs, padded), max(repeat, 20)) + median_ms(
        lambda: batched_linear_sum_assignment(cost, counts), max(repeat, 20)
    )
    record["call_300_ms"] = call
    record["overhead_300_ms"] = call - parts

    official_fits = official_pairs(batch, objects) <= _OFFICIAL_MAX_PAIRS[0]
    if official and not official_fits:
        record["official_skipped"] = f"one-to-many matrix of {official_pairs(batch, objects):,} entries"
    if official and official_fits:
        repeated = repeat_k(o2m_inputs[0][1])  # once per step, as H-DETR repeats its targets

        def official_step() -> None:
            for outputs, targets in o2o_inputs:
                official_style_match(outputs, targets)
            for outputs, _ in o2m_inputs:
                official_style_match(outputs, repeated)

        record["official_ms"] = median_ms(official_step, repeat)
    if split:
        record.update(measure_split(batch, objects, repeat, official))
    if memory:
        record["peak_extra_mib"] = peak_extra_mib("hybridmatch", threads, batch, objects)
        if official and official_fits:
            record["official_peak_extra_mib"] = peak_extra_mib("official", threads, batch, objects)
    return record


def step_inputs(batch: int, objects: int) -> tuple[list, list]:
    """The 7 + 7 ``(outputs, targets)`` of one step: 7 output dicts per group, one list of targets."""
    _, targets = make_inputs(objects, batch, 300, objects)
    o2o = [(make_inputs(100 * i + objects, batch, 300, objects)[0], targets) for i in range(CALLS)]
    o2m = [(make_inputs(100 * i + objects + 7, batch, 1500, objects)[0], targets) for i in range(CALLS)]
    return o2o, o2m


def step_as_the_criterion_does(one2one, one2many, o2o_inputs: list, o2m_inputs: list) -> None:  # type: ignore[no-untyped-def]
    """Per group: the decoder layers in one ``match_layers`` call, the encoder's proposals alone."""
    for matcher, inputs in ((one2one, o2o_inputs), (one2many, o2m_inputs)):
        targets = inputs[0][1]
        matcher.match_layers([outputs for outputs, _ in inputs[:-1]], targets)
        matcher(*inputs[-1])


def official_cost(outputs: dict, targets: list) -> torch.Tensor:
    """The official-style concatenated cost alone, ``(B, N, sum M)`` on the host."""
    batch, num_queries = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).sigmoid()
    boxes = outputs["pred_boxes"].flatten(0, 1)
    labels = torch.cat([t["labels"] for t in targets])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    alpha, gamma = 0.25, 2.0
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    cost_class = pos[:, labels] - neg[:, labels]
    cost_bbox = torch.cdist(boxes, target_boxes, p=1)
    cost_giou = -pairwise_giou(box_cxcywh_to_xyxy(boxes)[None], box_cxcywh_to_xyxy(target_boxes)[None])[0]
    return (5 * cost_bbox + 2 * cost_class + 2 * cost_giou).view(batch, num_queries, -1).cpu()


def official_solve(cost: torch.Tensor, sizes: list) -> None:
    for b, part in enumerate(cost.split(sizes, -1)):
        linear_sum_assignment(part[b].numpy())


def repeat_k(targets: list) -> list:
    return [{k: v.repeat(K, *([1] * (v.ndim - 1))) for k, v in t.items()} for t in targets]


def official_pairs(batch: int, objects: int) -> int:
    """Entries of the official-style one-to-many matrix, (B*1500, B*K*M)."""
    return batch * 1500 * batch * K * objects


def measure_split(batch: int, objects: int, repeat: int, official: bool) -> dict:
    """Per call, in ms: cost and solve of hybridmatch, of the official loop, and of scipy/lap on copies."""
    one2one = HungarianMatcher()
    one2many = OneToManyMatcher(k=K)
    split: dict = {}
    for name, matcher, queries, capacity in (("o2o", one2one, 300, 1), ("o2m", one2many, 1500, K)):
        outputs, targets = make_inputs(objects + capacity, batch, queries, objects)
        padded = pad_targets(targets)
        counts = padded.num_targets_list
        cost = matcher.cost(outputs, padded)
        split[f"{name}_cost_ms"] = median_ms(lambda: matcher.cost(outputs, padded), repeat)
        split[f"{name}_solve_ms"] = median_ms(lambda: batched_linear_sum_assignment(cost, counts, capacity=capacity), repeat)
        if capacity > 1:
            copies = [np.tile(cost[b, :, : counts[b]].numpy(), (1, capacity)) for b in range(batch)]
            split["o2m_scipy_copies_ms"] = median_ms(lambda: [linear_sum_assignment(c) for c in copies], max(1, repeat // 2))
            try:
                import lap
            except ImportError:
                split["o2m_lap_copies_ms"] = None
            else:
                split["o2m_lap_copies_ms"] = median_ms(
                    lambda: [lap.lapjv(c.astype(np.float64), extend_cost=True) for c in copies], max(1, repeat // 2)
                )
        if official and (capacity == 1 or official_pairs(batch, objects) <= _OFFICIAL_MAX_PAIRS[0]):
            official_targets = repeat_k(targets) if capacity > 1 else targets
            sizes = [len(t["boxes"]) for t in official_targets]
            full = official_cost(outputs, official_targets)
            split[f"official_{name}_cost_ms"] = median_ms(lambda: official_cost(outputs, official_targets), max(1, repeat // 2))
            split[f"official_{name}_solve_ms"] = median_ms(lambda: official_solve(full, sizes), max(1, repeat // 2))
            del full
    return split


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_child(kind: str, threads: int, batch: int, objects: int, queue) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(threads)
    o2o_inputs, o2m_inputs = step_inputs(batch, objects)
    if kind == "official":
        repeated = repeat_k(o2m_inputs[0][1])
        o2m_inputs = [(outputs, repeated) for outputs, _ in o2m_inputs]
        one2one = one2many = official_style_match
    else:
        one2one, one2many = HungarianMatcher(), OneToManyMatcher(k=K)
    # Warm-up on a smaller copy: libraries and thread pools loaded, not counted.
    small = make_inputs(1, 1, 20, 2)
    one2one(*small)
    if kind != "official":
        one2one.match_layers([small[0], small[0]], small[1])
    # Linux: "5" to clear_refs resets the peak resident set (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    if kind == "official":
        for outputs, targets in o2o_inputs + o2m_inputs:
            official_style_match(outputs, targets)
    else:
        step_as_the_criterion_does(one2one, one2many, o2o_inputs, o2m_inputs)
    queue.put((_status_kib("VmHWM") - before) / 1024.0)  # KiB -> MiB


def peak_extra_mib(kind: str, threads: int, batch: int, objects: int) -> float | None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_child, args=(kind, threads, batch, objects, queue))
    process.start()
    process.join()
    return queue.get() if process.exitcode == 0 and not queue.empty() else None  # None: not on Linux


_OFFICIAL_MAX_PAIRS = [100_000_000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--objects", type=int, nargs="+", default=[7, 30, 100, 300])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", type=Path, help="JSON of an earlier run (e.g. before a change)")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--official-max-pairs", type=int, default=_OFFICIAL_MAX_PAIRS[0],
                        help="skip the official-style loop where its one-to-many matrix has more entries")
    parser.add_argument("--no-split", action="store_true", help="skip the per-call cost / solve split")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-batches", type=int, nargs="+", default=None,
                        help="measure the peak memory only at these batch sizes (default: all); the official "
                             "loop's process at batch 16 and 100 objects takes minutes and gigabytes")
    parser.add_argument("--markdown", type=Path, help="write the tables, command and machine to this file")
    parser.add_argument("--quick", action="store_true", help="batch 2, 7 objects, 1 thread, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.batches, args.objects, args.repeat = [1], [2], [7], 1
        args.no_split = args.no_memory = True
    _OFFICIAL_MAX_PAIRS[0] = args.official_max_pairs
    load_before = _loadavg()

    baseline = {}
    if args.baseline:
        for r in json.loads(args.baseline.read_text())["records"]:
            baseline[(r["threads"], r["batch"], r["objects"])] = r
    records = []
    for threads in args.threads:
        for batch in args.batches:
            for objects in args.objects:
                memory = not args.no_memory and (args.memory_batches is None or batch in args.memory_batches)
                records.append(
                    measure(threads, batch, objects, args.repeat, not args.no_official, not args.no_split, memory)
                )
                print(".", end="", flush=True, file=sys.stderr)
                if args.json:  # written as it goes: a long run that is stopped keeps what it measured
                    args.json.write_text(json.dumps({"info": _info(args), "records": records}, indent=1))
    print(file=sys.stderr)

    header = "| threads | batch | objects | hybridmatch step (ms) | official-style step (ms) | speed-up |"
    rule = "|---|---|---|---|---|---|"
    if baseline:
        header += " baseline step (ms) | change | 300-query call (ms) | overhead (ms) | baseline overhead (ms) |"
        rule += "---|---|---|---|---|"
    else:
        header += " 300-query call (ms) | overhead (ms) |"
        rule += "---|---|"
    print(f"hybridmatch {hybridmatch.__version__} from {Path(hybridmatch.__file__).parent}; torch {torch.__version__}")
    print(header)
    print(rule)
    for r in records:
        official = r.get("official_ms")
        cells = [
            str(r["threads"]), str(r["batch"]), str(r["objects"]), f"{r['hybridmatch_ms']:.1f}",
            f"{official:.1f}" if official else "-", f"{official / r['hybridmatch_ms']:.1f}x" if official else "-",
        ]
        old = baseline.get((r["threads"], r["batch"], r["objects"]))
        if baseline:
            cells += [
                f"{old['hybridmatch_ms']:.1f}" if old else "-",
                f"{r['hybridmatch_ms'] / old['hybridmatch_ms']:.2f}x" if old else "-",
            ]
        cells += [f"{r['call_300_ms']:.2f}", f"{r['overhead_300_ms']:.2f}"]
        if baseline:
            cells.append(f"{old['overhead_300_ms']:.2f}" if old else "-")
        print("| " + " | ".join(cells) + " |")
    if args.markdown:
        args.markdown.write_text(markdown(records, args, load_before, _loadavg()))
        print(f"wrote {args.markdown}", file=sys.stderr)


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _ms(value: object, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(records: list, args: argparse.Namespace, load_before: str, load_after: str) -> str:
    """MATCHING.md: the step table (both thread counts), the per-call split and the peak memory."""
    command = "python benchmarks/matching_step.py " + " ".join(sys.argv[1:])
    lines = [
        "# One H-DETR training step's matching on the CPU: hybridmatch against the official loop",
        "",
        "Written by `benchmarks/matching_step.py` (see its docstring for what each column times):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"hybridmatch {hybridmatch.__version__}, torch {torch.__version__}, {platform.machine()}, "
        f"{_cpu_name()}, {os.cpu_count()} logical CPUs; 1-minute load average {load_before} before the run and "
        f"{load_after} after it. Steps: medians of {args.repeat} runs after one warm-up, "
        f"official and ours alike; the per-call split of the official, scipy and lap: of {max(1, args.repeat // 2)}.",
        "",
        "## One step (7 one-to-one calls on 300 queries + 7 one-to-many calls on 1500, K = 6), ms",
        "",
        "hybridmatch: as `HybridCriterion` matches a step (per group, the 6 decoder layers in one "
        "`match_layers` call, the encoder's proposals in one call); a call per layer: the same matchers "
        "called 7 + 7 times.",
        "",
        "| threads | batch | objects | hybridmatch | official-style | speed-up | 2 threads / 1 thread (hybridmatch) "
        "| hybridmatch, a call per layer | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    single = {(r["batch"], r["objects"]): r["hybridmatch_ms"] for r in records if r["threads"] == 1}
    for r in records:
        official = r.get("official_ms")
        speed = f"{official / r['hybridmatch_ms']:.1f}x" if official else r.get("official_skipped", "-")
        base = single.get((r["batch"], r["objects"]))
        ratio = f"{r['hybridmatch_ms'] / base:.2f}" if base and r["threads"] != 1 else "-"
        per_layer = r.get("per_layer_ms")
        per_layer_speed = f"{official / per_layer:.1f}x" if official and per_layer else "-"
        lines.append(
            f"| {r['threads']} | {r['batch']} | {r['objects']} | {r['hybridmatch_ms']:.1f} | {_ms(official)} | {speed} "
            f"| {ratio} | {_ms(per_layer)} | {per_layer_speed} |"
        )
    if any("o2o_cost_ms" in r for r in records):
        lines += [
            "",
            "## One call, split into cost and solve, ms",
            "",
            "One-to-one: 300 queries; one-to-many: 1500 queries, K = 6 (hybridmatch: capacity 6; "
            "official: targets repeated; scipy / lap: hybridmatch's cost tiled K times, image by image).",
            "",
            "| threads | batch | objects | o2o cost | o2o solve | official o2o cost | official o2o solve "
            "| o2m cost | o2m solve | official o2m cost | official o2m solve | scipy on copies | lap on copies |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            if "o2o_cost_ms" not in r:
                continue
            cells = [r.get(key) for key in (
                "o2o_cost_ms", "o2o_solve_ms", "official_o2o_cost_ms", "official_o2o_solve_ms", "o2m_cost_ms",
                "o2m_solve_ms", "official_o2m_cost_ms", "official_o2m_solve_ms", "o2m_scipy_copies_ms", "o2m_lap_copies_ms",
            )]
            lines.append(f"| {r['threads']} | {r['batch']} | {r['objects']} | " + " | ".join(_ms(c, 2) for c in cells) + " |")
    if any("peak_extra_mib" in r for r in records):
        lines += [
            "",
            "## Peak extra memory of one step, MiB (growth of the peak resident set, fresh process)",
            "",
            "| threads | batch | objects | hybridmatch | official-style |",
            "|---|---|---|---|---|",
        ]
        for r in records:
            if "peak_extra_mib" in r:
                lines.append(
                    f"| {r['threads']} | {r['batch']} | {r['objects']} | {_ms(r['peak_extra_mib'])} "
                    f"| {_ms(r.get('official_peak_extra_mib'))} |"
                )
    return "\n".join(lines) + "\n"


def _info(args: argparse.Namespace) -> dict:
    return {
        "hybridmatch": hybridmatch.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "repeat": args.repeat,
    }


if __name__ == "__main__":
    main()
