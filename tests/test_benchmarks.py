"""Smoke test of the solver benchmark script: it runs, and every method agrees with scipy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridmatch.solvers import available_backends

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "solvers.py"
# A Python whose `lap` is lapx: the Makefile's venv or a developer's; absent in CI.
_LAPX_CANDIDATES = [SCRIPT.parents[1] / ".venv-lapx" / "bin" / "python", Path("/tmp/lapxvenv/bin/python")]
LAPX_PYTHON = next((p for p in _LAPX_CANDIDATES if p.exists()), _LAPX_CANDIDATES[-1])
LAPX_METHOD = "lapx lapjvh_batch (2 threads)"


def _run(tmp_path: Path, *extra: str, env: dict | None = None) -> dict:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), *extra],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Best-peer summary" in done.stdout
    return json.loads(out.read_text())


def _check_records(records: list[dict], shapes: set[str]) -> None:
    for record in records:
        assert record["shape"] in shapes
        if record["ms_median"] is None:  # skipped: only these may be, with a reason
            assert record["method"] in {"lap.lapjv (padded)", LAPX_METHOD} or record["method"].startswith(
                "hybridmatch lap"), record
            assert record["note"], record
            continue
        assert record["valid"], record
        assert record["rel_gap"] <= 1e-9, record
        assert record["ms_min"] <= record["ms_median"]


def test_quick_benchmark_writes_every_method(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDMATCH_LAPX_PYTHON"}
    payload = _run(tmp_path, "--shapes", "300x30", env=env)

    assert payload["machine"]["cpu_count"] >= 1
    assert {"torch", "scipy", "lap", "lapx", "threads"} <= set(payload["machine"])
    assert payload["settings"]["threads"] == 2
    records = payload["records"]
    methods = {r["method"] for r in records}
    expected = {"scipy loop", "scipy 2 threads", LAPX_METHOD, "lap.lapjv (padded)"}
    expected |= {f"hybridmatch {name}" for name in available_backends() if name != "cuda"}
    assert expected <= methods, f"missing methods: {expected - methods}"
    _check_records(records, {"300x30"})
    # 300x30 is small enough for hybridmatch's lap backend to be timed by default.
    assert all(r["ms_median"] is not None for r in records if r["method"] == "hybridmatch lap")
    baseline = next(r for r in records if r["method"] == "scipy loop")
    assert baseline["speedup_vs_scipy_loop"] == 1.0

    summary = payload["summary"]
    assert summary["peers"] == ["scipy 2 threads", LAPX_METHOD]
    if "native" in available_backends():
        (row,) = summary["rows"]
        assert row["shape"] == "300x30" and row["method"] == "hybridmatch native"
        assert row["best_peer"] in summary["peers"]
        assert row["x_best_peer"] > 0 and row["x_scipy_loop"] > 0
        assert row["targets"] == [] and row["target_met"] is None  # 300x30 carries no target
    assert "gpu" in payload and ("note" in payload["gpu"])


@pytest.mark.skipif(not LAPX_PYTHON.exists(), reason="no lapx venv (.venv-lapx or /tmp/lapxvenv)")
def test_lapx_worker_peer(tmp_path: Path) -> None:
    # The worker runs under the lapx interpreter and must import neither torch nor hybridmatch.
    info = subprocess.run([str(LAPX_PYTHON), str(SCRIPT), "--lapx-worker", "--info"],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["modules"] == []

    # A repeated shape with N > M exercises the rectangular path and the capacity rows.
    payload = _run(tmp_path, "--shapes", "300x30", "60x10x3", "--lapx-python", str(LAPX_PYTHON))
    assert payload["machine"]["lapx"]
    records = payload["records"]
    _check_records(records, {"300x30", "60x30 (10 GT x3)"})
    lapx = [r for r in records if r["method"] == LAPX_METHOD]
    assert len(lapx) == 2 and all(r["same_total"] for r in lapx), lapx

    if "native" in available_backends():
        rows = payload["summary"]["rows"]
        assert [(r["shape"], r["method"]) for r in rows] == [
            ("300x30", "hybridmatch native"),
            ("60x30 (10 GT x3)", "hybridmatch native"),
            ("60x30 (10 GT x3)", "hybridmatch native capacity=3"),
        ]
        assert all(r["best_peer"] in {"scipy 2 threads", LAPX_METHOD} and not r["note"] for r in rows)
        assert rows[2]["x_materialised"] > 0
        assert [t["target"] for t in rows[2]["targets"]] == ["faster than materialised"]


STEP_SCRIPT = SCRIPT.with_name("matching_step.py")


def test_matching_step_benchmark_runs_and_its_peer_is_right(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    done = subprocess.run(
        [sys.executable, str(STEP_SCRIPT), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = json.loads(out.read_text())["records"]
    assert record["hybridmatch_ms"] > 0 and record["official_ms"] > 0 and record["call_300_ms"] > 0
    assert record["per_layer_ms"] > 0
    assert "| 1 | 2 | 7 |" in done.stdout
    # The official-style peer solves the same problem: DETR's indices, equal to HungarianMatcher's.
    sys.path.insert(0, str(STEP_SCRIPT.parent))
    try:
        import matching_step
    finally:
        sys.path.remove(str(STEP_SCRIPT.parent))
    from hybridmatch import HungarianMatcher

    outputs, targets = matching_step.make_inputs(3, batch=2, num_queries=50, objects=5)
    for (pred, tgt), (pred_want, tgt_want) in zip(matching_step.official_style_match(outputs, targets), HungarianMatcher()(outputs, targets)):
        assert torch.equal(pred, pred_want) and torch.equal(tgt, tgt_want)


def test_matching_step_measures_memory_only_at_the_batches_asked(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    done = subprocess.run(
        [sys.executable, str(STEP_SCRIPT), "--threads", "1", "--batches", "2", "--objects", "7", "--repeat", "1",
         "--no-split", "--no-official", "--memory-batches", "16", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = json.loads(out.read_text())["records"]
    assert record["batch"] == 2 and "peak_extra_mib" not in record  # batch 2 is not in --memory-batches 16
