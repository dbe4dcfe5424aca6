"""End-to-end H-DETR matching of one training step on the GPU, against the official-style loop.

One step of H-Deformable-DETR with the hybrid branch matches 7 layer outputs per
group (6 decoder layers and the two-stage encoder proposals): the one-to-one group
(300 queries, each target once) and the one-to-many group (1500 queries, each target
6 times), 14 matcher calls. Both methods get the same outputs (random logits over 91
classes and boxes, on the device) and compute the same cost
(``2 * focal + 5 * L1 + 2 * (-GIoU)``, hybridmatch's cost functions, on the device):

- ``hybridmatch cuda``: ``HungarianMatcher(backend="cuda")`` and
  ``OneToManyMatcher(k=6, backend="cuda")`` called as DETR code calls its matcher
  (``matcher(outputs, targets)``, index pairs on the host), no copies of the targets.
- ``official loop``: the H-DETR / DETR matcher's way: targets repeated 6 times for
  the one-to-many group, the cost moved to the host (``.cpu()``), then
  ``scipy.optimize.linear_sum_assignment`` per image.

Every call's total cost (float64, on the cost the device computed) must equal the
official loop's to a relative 1e-9; the script exits with status 1 otherwise.

    python benchmarks/gpu_matching.py [--batches 2 16] [--objects 7 30 100] [--repeat 10] [--json out.json]
    python benchmarks/gpu_matching.py --device cpu --quick     # rehearsal without a GPU (native backend)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridmatch import HungarianMatcher  # noqa: E402
from hybridmatch.matchers import OneToManyMatcher  # noqa: E402
from hybridmatch.targets import pad_targets, repeat_targets  # noqa: E402

NUM_CLASSES = 91
LAYERS = 7  # 6 decoder layers + the encoder's proposals
GROUPS = {"one-to-one": (300, 1), "one-to-many": (1500, 6)}  # queries, K
MAX_REL_GAP = 1e-9
TARGET_MS = 5.0  # the whole step's matching, batch 16


def make_step(batch: int, objects: int, device: str, seed: int) -> tuple[dict, list[dict]]:
    """Outputs of every layer of both groups, and the targets (``objects`` per image)."""
    g = torch.Generator().manual_seed(seed)

    def boxes(*shape: int) -> torch.Tensor:
        centres = 0.1 + 0.8 * torch.rand(*shape, 2, generator=g)
        sizes = 0.02 + 0.3 * torch.rand(*shape, 2, generator=g)
        return torch.cat([centres, sizes], dim=-1)

    outputs = {
        group: [
            {"pred_logits": torch.randn(batch, queries, NUM_CLASSES, generator=g).to(device),
             "pred_boxes": boxes(batch, queries).to(device)}
            for _ in range(LAYERS)
        ]
        for group, (queries, _) in GROUPS.items()
    }
    targets = [
        {"labels": torch.randint(0, NUM_CLASSES, (objects,), generator=g).to(device),
         "boxes": boxes(objects).to(device)}
        for _ in range(batch)
    ]
    return outputs, targets


def hybridmatch_step(matchers: dict, outputs: dict, targets: list[dict]) -> list:
    return [matchers[group](layer, targets) for group in GROUPS for layer in outputs[group]]


def official_step(cost_fn: Callable, outputs: dict, targets: list[dict]) -> list:
    """DETR's matcher per call: (repeated) targets, the cost to the host, scipy per image."""
    results = []
    for group, (_, k) in GROUPS.items():
        group_targets = repeat_targets(targets, k) if k > 1 else targets
        padded = pad_targets(group_targets)
        counts = [len(t["labels"]) for t in group_targets]
        for layer in outputs[group]:
            cost = cost_fn(layer, padded).cpu()
            results.append([scipy_lsa(cost[b, :, :m].numpy()) if m else (np.zeros(0, int), np.zeros(0, int))
                            for b, m in enumerate(counts)])
    return results


def totals_agree(cost_fn: Callable, outputs: dict, targets: list[dict], ours: list, official: list) -> float:
    """The largest relative gap between the two methods' totals over every call and image."""
    worst = 0.0
    padded = pad_targets(targets)
    counts = padded.num_targets_list
    calls = [(group, k, layer) for group, (_, k) in GROUPS.items() for layer in outputs[group]]
    for (group, k, layer), pairs, theirs in zip(calls, ours, official):
        cost = cost_fn(layer, padded).double().cpu().numpy()
        for b, m in enumerate(counts):
            rows, cols = (t.numpy() for t in pairs[b])
            mine = float(cost[b, rows, cols].sum())
            tiled = np.tile(cost[b, :, :m], (1, k))
            their = float(tiled[theirs[b][0], theirs[b][1]].sum()) if m else 0.0
            if len(rows) != min(cost.shape[1], m * k):
                return float("inf")
            worst = max(worst, abs(mine - their) / max(abs(their), 1e-12))
    return worst


def timed(run: Callable[[], object], repeats: int, synchronize: Callable[[], None], budget_s: float) -> tuple:
    synchronize()
    start = time.perf_counter()
    result = run()  # warm-up (and the result that is checked)
    synchronize()
    once = time.perf_counter() - start
    planned = max(1, min(repeats, int(budget_s / once) if once > 0 else repeats))
    times = []
    for _ in range(planned):
        start = time.perf_counter()
        run()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return result, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--objects", type=int, nargs="+", default=[7, 30, 100])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--method-budget", type=float, default=15.0,
                        help="seconds of timed repeats per method and setting (at least one run)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a rehearsal")
    parser.add_argument("--quick", action="store_true", help="batch 2, 7 objects, 1 repeat")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.objects, args.repeat = [2], [7], 1
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("gpu_matching: torch sees no GPU; use --device cpu for a rehearsal", file=sys.stderr)
        return 2
    backend = "cuda" if on_gpu else "native"
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    matchers = {"one-to-one": HungarianMatcher(backend=backend),
                "one-to-many": OneToManyMatcher(k=GROUPS["one-to-many"][1], backend=backend)}
    cost_fn = matchers["one-to-one"].cost
    device_name = torch.cuda.get_device_name() if on_gpu else "cpu (rehearsal)"
    print(f"H-DETR step matching on {device_name}: {LAYERS} calls per group, groups "
          f"{ {g: f'{q} queries, K={k}' for g, (q, k) in GROUPS.items()} }; ms per step (median)")
    records, failed = [], False
    for batch in args.batches:
        for objects in args.objects:
            outputs, targets = make_step(batch, objects, args.device, seed=batch * 1000 + objects)
            ours, ours_ms = timed(lambda: hybridmatch_step(matchers, outputs, targets), args.repeat, synchronize,
                                  args.method_budget)
            theirs, theirs_ms = timed(lambda: official_step(cost_fn, outputs, targets), args.repeat, synchronize,
                                      args.method_budget)
            gap = totals_agree(cost_fn, outputs, targets, ours, theirs)
            same = gap <= MAX_REL_GAP
            failed |= not same
            for method, times in ((f"hybridmatch {backend}", ours_ms), ("official loop (.cpu() + scipy)", theirs_ms)):
                records.append({
                    "batch": batch, "objects": objects, "calls": 2 * LAYERS, "method": method,
                    "ms_median": statistics.median(times), "ms_min": min(times), "repeats": len(times),
                    "speedup_vs_official": statistics.median(theirs_ms) / statistics.median(times),
                    "rel_gap": gap, "same_total": same,
                    "target_ms": TARGET_MS if batch == 16 and method.startswith("hybridmatch") else None,
                })
            mine, official = statistics.median(ours_ms), statistics.median(theirs_ms)
            print(f"  B={batch:<3} {objects:>3} objects: hybridmatch {mine:9.2f} ms  official {official:9.2f} ms  "
                  f"x{official / mine:7.1f}  totals {'same' if same else f'DIFFER (gap {gap:.1e})'}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": device_name, "torch": torch.__version__, "layers": LAYERS,
            "groups": {g: {"queries": q, "k": k} for g, (q, k) in GROUPS.items()},
            "target_ms_batch16": TARGET_MS, "records": records,
        }, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
