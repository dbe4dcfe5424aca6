"""examples.common.comparison: paired statistics against hand math, the table, progress, end to end."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from examples.common import comparison
from examples.common.comparison import format_report, paired_difference, plot_curves, run_jobs, summarize

# Student's t quantiles t(0.975, dof) from a printed table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2),
# to six decimals: independent of scipy.
T_975 = {1: 12.706205, 2: 4.302653, 4: 2.776445}


def test_the_paired_interval_is_the_t_interval_of_float64_math() -> None:
    diffs = [0.012, -0.004, 0.021, 0.007, 0.015]
    x = np.array(diffs, dtype=np.float64)
    mean, sd = x.mean(), x.std(ddof=1)
    half = T_975[4] * sd / math.sqrt(len(x))
    result = paired_difference(diffs)
    assert result["mean"] == pytest.approx(mean, abs=1e-15)
    assert result["sd"] == pytest.approx(sd, rel=1e-12)
    assert result["t"] == pytest.approx(T_975[4], abs=1e-6)
    assert result["low"] == pytest.approx(mean - half, abs=1e-8)
    assert result["high"] == pytest.approx(mean + half, abs=1e-8)
    assert result["ahead"] == 4 and result["n"] == 5 and result["values"] == diffs


def test_a_90_percent_interval_and_two_seeds() -> None:
    # Two seeds, differences 1 and 3: mean 2, sd sqrt(2), t(0.95, 1) = 6.313752 (table).
    result = paired_difference([1.0, 3.0], confidence=0.90)
    assert result["high"] - 2.0 == pytest.approx(6.313752 * math.sqrt(2) / math.sqrt(2), abs=1e-5)
    assert result["ahead"] == 2


def test_one_seed_has_a_mean_and_no_interval_and_bad_input_is_refused() -> None:
    result = paired_difference([-0.5])
    assert result["mean"] == -0.5 and result["low"] is None and result["high"] is None and result["ahead"] == 0
    with pytest.raises(ValueError, match="no differences"):
        paired_difference([])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], confidence=1.5)


def _curves() -> dict:
    # Three seeds, four epochs.
    return {
        "one2one": {0: [0.01, 0.04, 0.08, 0.10], 1: [0.02, 0.05, 0.07, 0.09], 2: [0.00, 0.03, 0.09, 0.11]},
        "branch o2o": {0: [0.03, 0.06, 0.09, 0.12], 1: [0.02, 0.05, 0.05, 0.08], 2: [0.04, 0.07, 0.10, 0.14]},
    }


def test_summarize_reads_early_and_the_mean_of_the_last_epochs() -> None:
    s = summarize(_curves(), early_epoch=2, end_epochs=3, hybrid="branch o2o", baseline="one2one")
    assert (s["epochs"], s["early_epoch"], s["end_epochs"], s["seeds"]) == (4, 2, 3, [0, 1, 2])
    one2one = s["lines"]["one2one"]
    assert one2one["early"] == pytest.approx({"mean": 0.04, "min": 0.03, "max": 0.05})
    # End per seed: mean of epochs 2-4. Seed 0: (0.04 + 0.08 + 0.10) / 3 = 0.073333...
    assert one2one["end_per_seed"][0] == pytest.approx(0.22 / 3)
    assert one2one["end"]["max"] == pytest.approx(0.23 / 3)  # seed 2
    # Paired end per seed: branch (0.27, 0.18, 0.31) / 3 - one2one (0.22, 0.21, 0.23) / 3.
    end = s["paired"]["end"]
    assert end["values"] == pytest.approx([0.05 / 3, -0.03 / 3, 0.08 / 3])
    assert end["ahead"] == 2
    early = s["paired"]["early"]
    assert early["values"] == pytest.approx([0.02, 0.0, 0.04]) and early["ahead"] == 2
    assert s["lines"]["branch o2o"]["per_epoch"][3] == pytest.approx({"mean": 0.34 / 3, "min": 0.08, "max": 0.14})


def test_summarize_without_a_pair_and_its_refusals() -> None:
    assert summarize(_curves(), early_epoch=1)["paired"] is None
    with pytest.raises(ValueError, match="same number of epochs"):
        summarize({"one2one": {0: [0.1, 0.2], 1: [0.1]}}, early_epoch=1)
    with pytest.raises(ValueError, match="early_epoch"):
        summarize(_curves(), early_epoch=5)
    with pytest.raises(ValueError, match="end_epochs"):
        summarize(_curves(), early_epoch=1, end_epochs=0)


def test_summarize_skips_epochs_that_were_not_evaluated_and_refuses_a_missing_read() -> None:
    curves = _curves()
    for line in curves.values():
        for curve in line.values():
            curve[0] = None  # epoch 1 not evaluated: the summary reads 2 (early) and 3-4 (end)
    s = summarize(curves, early_epoch=2, end_epochs=2, hybrid="branch o2o", baseline="one2one")
    assert s["lines"]["one2one"]["per_epoch"][0] is None
    assert s["lines"]["one2one"]["early"] == pytest.approx({"mean": 0.04, "min": 0.03, "max": 0.05})
    assert s["paired"]["end"]["values"] == pytest.approx([0.015, -0.015, 0.02])
    curves["one2one"][1][2] = None  # epoch 3 is read (the end)
    with pytest.raises(ValueError, match=r"'one2one' seed 1 was not evaluated after epochs \[3\]"):
        summarize(curves, early_epoch=2, end_epochs=2)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ["--eval-epochs", "6", "10", "11", "12"]),
    (["--epochs", "8", "--early-epoch", "7", "--end-epochs", "2"], ["--eval-epochs", "7", "8"]),
    (["--every-epoch"], ["--eval-every", "1"]),
])
def test_the_runs_evaluate_only_the_epochs_the_table_reads(argv: list, expected: list) -> None:
    from examples.detection.task import COMPARISON

    options = comparison.comparison_parser(COMPARISON).parse_args(argv)
    options.early_epoch = options.early_epoch or math.ceil(COMPARISON.early_fraction * options.epochs)
    options.end_epochs = options.end_epochs or 3
    train = comparison._train_argv(COMPARISON, options, "branch", 0)
    flag = expected[0]
    at = train.index(flag)
    assert train[at:at + len(expected)] == expected
    assert ("--eval-every" in train) == (flag == "--eval-every")


def test_the_table_shows_the_numbers_in_percent_and_says_what_end_means() -> None:
    s = summarize(_curves(), early_epoch=2, end_epochs=3, hybrid="branch o2o", baseline="one2one")
    text = format_report(s, metric="COCO segm AP", val_images=80)
    assert text.splitlines()[0] == ("COCO segm AP (%) on 80 validation images, 3 seeds [0, 1, 2]; end = the mean "
                                    "of each run's last 3 evaluated epochs")
    assert "end: epochs 2-4" in text and "95 % paired-t interval" in text
    rows = {line[:24].strip(): line[24:].split() for line in text.splitlines() if line[:24].strip()}
    assert rows["one2one"] == ["4.0", "[3.0,", "5.0]", "7.3", "[7.0,", "7.7]"]
    # Early differences +2, 0, +4 (%): mean 2, sd 2, half-width 4.302653 * 2 / sqrt 3 = 4.968.
    assert rows["branch o2o - one2one"][:3] == ["+2.0", "[-3.0,", "+7.0]"]
    assert rows["per seed"] == ["+2.0", "+0.0", "+4.0", "+1.7", "-1.0", "+2.7"]
    assert rows["seeds ahead"] == ["2", "of", "3", "2", "of", "3"]


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot_curves(summarize(_curves(), early_epoch=2), tmp_path / "ap.png", metric="COCO AP")
    assert (tmp_path / "ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sparse = _curves()
    for line in sparse.values():
        for curve in line.values():
            curve[0] = None  # not evaluated: no point
    plot_curves(summarize(sparse, early_epoch=2), tmp_path / "sparse.png", metric="COCO AP")
    assert (tmp_path / "sparse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ progress


def quiet_then_talk(seconds: float, lines: int) -> str:
    """A fake slow run in a worker: silent for ``seconds``, then ``lines`` progress reports."""
    time.sleep(seconds)
    for i in range(lines):
        comparison.report("fake seed 0", f"epoch {i + 1} done")
    return "done"


def fail() -> None:
    raise RuntimeError("the run broke")


@pytest.mark.slow
def test_a_line_comes_at_least_every_interval_while_a_run_is_silent() -> None:
    stamps: list[tuple[float, str]] = []
    interval = 0.5
    results = run_jobs({"fake seed 0": (quiet_then_talk, (3.0, 2)), "fake seed 1": (quiet_then_talk, (0.0, 0))},
                       workers=1, interval=interval, emit=lambda text: stamps.append((time.monotonic(), text)))
    assert results == {"fake seed 0": "done", "fake seed 1": "done"}
    texts = [text for _, text in stamps]
    assert any("still training: fake seed 0" in t for t in texts)
    # A job that has not reported yet is named too.
    assert any("fake seed 1 (no report yet)" in t for t in texts)
    assert [t.split("] ", 1)[1] for t in texts if "epoch" in t] == ["fake seed 0: epoch 1 done",
                                                                     "fake seed 0: epoch 2 done"]
    assert sum("finished" in t for t in texts) == 2
    gaps = [b - a for (a, _), (b, _) in zip(stamps, stamps[1:])]
    assert max(gaps) < interval + 0.5, gaps  # the loop polls every interval / 4


@pytest.mark.slow
def test_a_failing_run_fails_the_comparison() -> None:
    with pytest.raises(RuntimeError, match="the run broke"):
        run_jobs({"bad": (fail, ())}, workers=1, interval=1.0, emit=lambda text: None)


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_the_comparison_end_to_end_pairs_every_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("pycocotools")
    from examples.pose.main_job import main

    summary = main(["--seeds", "0", "1", "--epochs", "2", "--early-epoch", "1", "--end-epochs", "2",
                    "--workers", "2", "--train-images", "4", "--val-images", "3", "--max-figures", "3",
                    "--num-queries-one2one", "6", "--num-queries-one2many", "12", "--k", "2",
                    "--progress-every", "1", "--output-dir", str(tmp_path)])
    captured = capsys.readouterr()
    saved = json.loads((tmp_path / "pose.json").read_text())
    assert set(saved["curves"]) == {"one2one", "branch o2o"} and saved["seeds"] == [0, 1]
    # The printed table is the saved curves', recomputed independently of the summary object.
    curves = {name: {int(seed): values for seed, values in line.items()} for name, line in saved["curves"].items()}
    expected = format_report(summarize(curves, 1, end_epochs=2, hybrid="branch o2o", baseline="one2one"),
                             metric="COCO keypoint AP", val_images=3)
    assert expected in captured.out and "cannot show" in captured.out
    assert saved["paired"]["end"]["n"] == 2 and summary["end_epochs"] == 2
    # Per-epoch progress lines of every run, with the AP.
    for run in ("branch seed 0", "one2one seed 0", "branch seed 1", "one2one seed 1"):
        assert f"{run}: epoch 2 done: loss" in captured.err
    assert "done: loss" in captured.err and " AP " in captured.err
    # Each run's log is its own, from the same data.
    assert (tmp_path / "runs" / "branch-seed1" / "log.jsonl").is_file()
    assert (tmp_path / "pose_ap.png").is_file()
