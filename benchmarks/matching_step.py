"""Time the matching of one H-DETR training step: hybridmatch's matchers against the official-style loop.

Usage::

    python benchmarks/matching_step.py [--threads 1 2] [--batches 2 16] [--objects 7 30 100]
                                       [--repeat 5] [--json out.json] [--baseline before.json]
                                       [--no-official] [--quick]

One step of H-DETR's hybrid branch (6 decoder layers + the two-stage encoder output) calls the
matcher 7 times for the 300 one-to-one queries and 7 times for the 1500 one-to-many queries
against the ground truth repeated K = 6 times. For each thread count, batch size and number of
objects per image, this script times:

- ``hybridmatch``: ``HungarianMatcher()`` x 7 on 300 queries plus ``OneToManyMatcher(k=6)`` x 7 on
  1500 queries (capacity 6, no copies), from the outputs dict and list of target dicts to DETR's
  index pairs;
- ``official-style``: the loop of DETR / H-DETR's own matcher: one concatenated ``(B*N, sum M)``
  focal + L1 + GIoU cost, ``.cpu()``, split per image, ``scipy.optimize.linear_sum_assignment``
  per image; the one-to-many calls on targets repeated 6 times (``--no-official`` skips it);
- the *overhead* of one ``HungarianMatcher`` call at 300 queries: the call minus the time of
  its two parts done by hand (the cost on pre-padded targets, and the solver on that cost):
  what the matcher's padding, checks and index conversion add.

Inputs are seeded random DETR-like outputs (91 focal classes; a third of the queries jittered
copies of a ground-truth box). Times are medians of ``--repeat`` runs after one warm-up. The
table gives milliseconds per step and the speed-up over the official-style loop. The script
imports whichever ``hybridmatch`` is importable, so running it from two checkouts measures a
change; ``--baseline`` adds the columns of an earlier JSON (same settings) to the table.
"""

from __future__ import annotations

import argparse
import json
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


def measure(threads: int, batch: int, objects: int, repeat: int, official: bool) -> dict:
    torch.set_num_threads(threads)
    one2one = HungarianMatcher()
    one2many = OneToManyMatcher(k=K)
    o2o_inputs = [make_inputs(100 * i + objects, batch, 300, objects) for i in range(CALLS)]
    o2m_inputs = [make_inputs(100 * i + objects + 7, batch, 1500, objects) for i in range(CALLS)]

    def hybridmatch_step() -> None:
        for outputs, targets in o2o_inputs:
            one2one(outputs, targets)
        for outputs, targets in o2m_inputs:
            one2many(outputs, targets)

    record = {"threads": threads, "batch": batch, "objects": objects, "hybridmatch_ms": median_ms(hybridmatch_step, repeat)}

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

    if official:
        repeated = [([{k: v.repeat(K, *([1] * (v.ndim - 1))) for k, v in t.items()} for t in targets]) for _, targets in o2m_inputs]

        def official_step() -> None:
            for outputs, targets in o2o_inputs:
                official_style_match(outputs, targets)
            for (outputs, _), targets in zip(o2m_inputs, repeated):
                official_style_match(outputs, targets)

        record["official_ms"] = median_ms(official_step, max(1, repeat // 2))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--objects", type=int, nargs="+", default=[7, 30, 100])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", type=Path, help="JSON of an earlier run (e.g. before a change)")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--quick", action="store_true", help="batch 2, 7 objects, 1 thread, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.batches, args.objects, args.repeat = [1], [2], [7], 1

    baseline = {}
    if args.baseline:
        for r in json.loads(args.baseline.read_text())["records"]:
            baseline[(r["threads"], r["batch"], r["objects"])] = r
    records = []
    for threads in args.threads:
        for batch in args.batches:
            for objects in args.objects:
                records.append(measure(threads, batch, objects, args.repeat, not args.no_official))
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


def _info(args: argparse.Namespace) -> dict:
    return {
        "hybridmatch": hybridmatch.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "repeat": args.repeat,
    }


if __name__ == "__main__":
    main()
