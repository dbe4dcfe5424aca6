"""Smoke test of the solver benchmark script: it runs, and every method agrees with scipy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hybridmatch.solvers import available_backends

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "solvers.py"


def test_quick_benchmark_writes_every_method(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--shapes", "300x30", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(out.read_text())

    assert payload["machine"]["cpu_count"] >= 1
    assert {"torch", "scipy", "lap"} <= set(payload["machine"])
    records = payload["records"]
    methods = {r["method"] for r in records}
    expected = {"scipy loop", "scipy 2 threads", "lap.lapjv (padded)"}
    expected |= {f"hybridmatch {name}" for name in available_backends()}
    assert expected <= methods, f"missing methods: {expected - methods}"

    for record in records:
        assert record["shape"] == "300x30"
        if record["ms_median"] is None:  # skipped: only lap.lapjv may be, with a reason
            assert record["method"] == "lap.lapjv (padded)" and record["note"], record
            continue
        assert record["valid"], record
        assert record["rel_gap"] <= 1e-9, record
        assert record["ms_min"] <= record["ms_median"]
    baseline = next(r for r in records if r["method"] == "scipy loop")
    assert baseline["speedup_vs_scipy_loop"] == 1.0
