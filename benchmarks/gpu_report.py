"""Summarise a benchmarks/gpu_check.sh run: summary.md, summary.json and a short printout.

    python benchmarks/gpu_report.py OUTDIR STEPS.tsv [--gpu 0|1]

Reads the step table (name, exit status, seconds), the pytest and compute-sanitizer
logs, ``solvers.json`` (benchmarks/solvers.py's GPU section) and ``matching.json``
(benchmarks/gpu_matching.py) from OUTDIR, and checks the CUDA solver's targets on
the H100/H200 (float32, batch 16). Exit status 1 when a step that ran failed.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# Targets for the cuda backend, float32, batch 16 (the issue's): ms per batch.
TARGET_MS = {"300x30": 0.1, "1500x180": 2.0, "1500x600": 8.0, "3000x600": 8.0}
TARGET_X_SCIPY = 20.0
TARGET_STEP_MS = 5.0  # the whole step's matching (14 calls), batch 16


def _state(step: dict) -> str:
    if step["rc"] == -1:
        return "not run (no time left)"
    if step["rc"] == -2:
        return f"unsupported: {step['note']}"
    return "ok" if step["rc"] == 0 else f"FAILED (exit {step['rc']}{', out of time' if step['rc'] == 124 else ''})"


def _x(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def pytest_counts(log: str) -> list[str]:
    """The final 'N passed, M skipped in Xs' line of each pytest run in the log."""
    pattern = (r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)(?:, )?)+"
               r" in [\d.]+s.*?|\d+(?:/\d+)? tests? collected.*?)\s*=*$")
    return [line.strip() for line in re.findall(pattern, log, re.M)]


def sanitizer_counts(log: str) -> list[str]:
    return re.findall(r"^=+ ((?:ERROR|RACECHECK) SUMMARY: .*)$", log, re.M)


def shape_key(label: str) -> str:
    return label.split(" ")[0]  # "1500x180 (30 GT x6)" -> "1500x180"


def solver_rows(payload: dict) -> tuple[list[str], list[dict]]:
    records = payload.get("gpu", {}).get("records", [])
    lines = ["| shape | method | ms/batch | min ms | x scipy+copy | same total | note |",
             "|---|---|---:|---:|---:|---|---|"]
    checks = []
    by_shape: dict[str, dict[str, dict]] = {}
    for r in records:
        ms = f"{r['ms_median']:.3f}" if r["ms_median"] is not None else "-"
        low = f"{r['ms_min']:.3f}" if r["ms_min"] is not None else "-"
        x = f"{r['speedup_vs_scipy_loop']:.1f}" if r["speedup_vs_scipy_loop"] is not None else "-"
        same = {True: "yes", False: "NO", None: "-"}[r["same_total"]]
        lines.append(f"| {r['shape']} | {r['method']} | {ms} | {low} | {x} | {same} | {r['note'][:80]} |")
        by_shape.setdefault(r["shape"], {})[r["method"]] = r
    for shape, methods in by_shape.items():
        tla = methods.get("torch_linear_assignment", {}).get("ms_median")
        for method, r in methods.items():
            if not method.startswith("hybridmatch cuda") or r["ms_median"] is None:
                continue
            key = shape_key(shape)
            checks.append({
                "shape": shape, "method": method, "ms": r["ms_median"],
                "target_ms": TARGET_MS.get(key), "met_ms": r["ms_median"] <= TARGET_MS[key] if key in TARGET_MS else None,
                "x_scipy": r["speedup_vs_scipy_loop"], "met_x_scipy": r["speedup_vs_scipy_loop"] >= TARGET_X_SCIPY,
                "x_tla": tla / r["ms_median"] if tla else None, "met_tla": tla / r["ms_median"] > 1 if tla else None,
                "exact": bool(r["same_total"]),
            })
    return lines, checks


def matching_rows(payload: dict) -> tuple[list[str], list[dict]]:
    lines = ["| batch | objects | method | ms/step | min ms | x official | same totals |",
             "|---:|---:|---|---:|---:|---:|---|"]
    checks = []
    for r in payload.get("records", []):
        lines.append(f"| {r['batch']} | {r['objects']} | {r['method']} | {r['ms_median']:.2f} | {r['ms_min']:.2f} | "
                     f"{r['speedup_vs_official']:.1f} | {'yes' if r['same_total'] else 'NO'} |")
        if r.get("target_ms") is not None:
            checks.append({"batch": r["batch"], "objects": r["objects"], "ms": r["ms_median"],
                           "target_ms": r["target_ms"], "met": r["ms_median"] <= r["target_ms"]})
    return lines, checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("steps", type=Path)
    parser.add_argument("--gpu", type=int, default=1)
    args = parser.parse_args(argv)
    out = args.outdir
    steps = [dict(zip(("name", "rc", "seconds"), line.split("\t"))) for line in read(args.steps).splitlines() if line]
    for s in steps:
        s["rc"], s["seconds"] = int(s["rc"]), int(s["seconds"])
    tests = pytest_counts(read(out / "tests.log"))
    sanitizer = sanitizer_counts(read(out / "sanitizer.log"))
    solvers = json.loads(read(out / "solvers.json") or "{}")
    matching = json.loads(read(out / "matching.json") or "{}")
    solver_table, solver_checks = solver_rows(solvers)
    matching_table, matching_checks = matching_rows(matching)
    environment = []
    for line in read(out / "build.log").splitlines():  # the header, up to the first step's output
        if line.startswith("====="):
            break
        environment.append(line)
    # compute-sanitizer refuses the GPU on some runtimes (gVisor: "Device not supported"):
    # that is no finding about the kernel, and is said as such.
    sanitizer_log = read(out / "sanitizer.log")
    for s in steps:
        if s["name"].startswith("sanitizer-") and s["rc"] not in (0, -1) and "not supported" in sanitizer_log:
            s["rc"], s["note"] = -2, "compute-sanitizer does not support this device/runtime"
    failed = [s["name"] for s in steps if s["rc"] not in (0, -1, -2)]
    not_run = [s["name"] for s in steps if s["rc"] == -1]
    mode = "GPU run" if args.gpu else "CPU rehearsal (no GPU: CUDA parts skipped or dry-run)"

    md = [f"# GPU check: {mode}", "", "```", *environment, "```", "", "## Steps", "",
          "| step | result | seconds |", "|---|---:|---:|"]
    md += [f"| {s['name']} | {_state(s)} | {s['seconds']} |" for s in steps]
    md += ["", "## Tests", "", *[f"- {line}" for line in tests or ["(no pytest summary found)"]]]
    md += ["", "## compute-sanitizer", "", *[f"- {line}" for line in sanitizer or ["(no sanitizer summary)"]]]
    md += ["", f"## Solvers, GPU section ({solvers.get('machine', {}).get('cuda_device')})", "", *solver_table]
    if solver_checks:
        md += ["", "Targets (float32, batch 16): ms per batch; >= 20x the scipy loop incl. host copy; faster than "
                   "torch-linear-assignment; exact.", "",
               "| shape | method | ms | target ms | met | x scipy | x tla | exact |", "|---|---|---:|---:|---|---:|---:|---|"]
        for c in solver_checks:
            met = {True: "yes", False: "NO", None: "-"}[c["met_ms"]]
            md.append(f"| {c['shape']} | {c['method']} | {c['ms']:.3f} | {c['target_ms'] or '-'} | {met} | "
                      f"{c['x_scipy']:.1f} | {_x(c['x_tla'])} | {'yes' if c['exact'] else 'NO'} |")
    md += ["", f"## End-to-end H-DETR step matching ({matching.get('device')}; 14 calls per step)", "",
           *matching_table]
    md.append("")
    (out / "summary.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps({
        "mode": mode, "steps": steps, "failed_steps": failed, "not_run": not_run, "tests": tests,
        "sanitizer": sanitizer, "solver_targets": solver_checks, "matching_targets": matching_checks,
    }, indent=2) + "\n")

    print(f"\n==== GPU check summary ({mode}) ====")
    for s in steps:
        print(f"  {s['name']:<20} {_state(s):<18} {s['seconds']:>4d}s")
    for line in tests:
        print(f"  tests: {line}")
    for line in sanitizer:
        print(f"  sanitizer: {line}")
    for c in solver_checks:
        verdict = "met" if c["met_ms"] else ("-" if c["met_ms"] is None else "MISSED")
        print(f"  {c['shape']:<22} {c['method']:<28} {c['ms']:8.3f} ms (target {c['target_ms'] or '-'}: {verdict}), "
              f"x{c['x_scipy']:.1f} scipy, {_x(c['x_tla'])} tla, "
              f"{'exact' if c['exact'] else 'NOT EXACT'}")
    for c in matching_checks:
        print(f"  step matching B={c['batch']} {c['objects']} objects: {c['ms']:.2f} ms "
              f"(target {c['target_ms']} ms: {'met' if c['met'] else 'MISSED'})")
    print(f"  files: {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
