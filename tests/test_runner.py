"""examples.common.runner for every task: exact resume, one refusal rule, the shared CLI and set-up."""

from __future__ import annotations

import argparse
import doctest
import importlib
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pycocotools")

from examples.common import runner  # noqa: E402
from examples.common.checkpoint import save_checkpoint  # noqa: E402
from examples.common.distributed import DistInfo  # noqa: E402
from examples.common.runner import RESUME_KEYS, check_resumable, run, task_parser  # noqa: E402
from examples.detection.task import TASK as DETECTION  # noqa: E402
from examples.pose.task import TASK as POSE  # noqa: E402
from examples.segmentation.task import TASK as SEGMENTATION  # noqa: E402

# Per task: the tiny settings of a 2-epoch run and the scheme whose resume is checked (the
# epoch scheme switches phase after epoch 0, so its resume must restore the scheme's state).
TINY = {
    "detection": (DETECTION, ["--synthetic-train-images", "6", "--synthetic-val-images", "3", "--synthetic-size", "64",
                              "--synthetic-max-objects", "3", "--num-queries-one2one", "6",
                              "--num-queries-one2many", "12", "--k", "2"], "epoch"),
    "pose": (POSE, ["--synthetic-train-images", "6", "--synthetic-val-images", "3", "--synthetic-max-figures", "3",
                    "--num-queries-one2one", "6", "--num-queries-one2many", "20", "--k", "2"], "branch"),
    "segmentation": (SEGMENTATION, ["--synthetic-train-images", "6", "--synthetic-val-images", "3",
                                    "--synthetic-max-objects", "4", "--num-points", "32", "--image-size", "32",
                                    "--num-queries-one2one", "6", "--num-queries-one2many", "12", "--k", "2"],
                     "branch"),
}


def _args(name: str, data: Path, out: Path, *extra: str) -> argparse.Namespace:
    task, tiny, scheme = TINY[name]
    return task_parser(task).parse_args(["--data-path", str(data), "--output-dir", str(out), "--epochs", "2",
                                         "--batch-size", "2", "--scheme", scheme, "--device", "cpu", "--quiet",
                                         *tiny, *extra])


def _log(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:  # wall times are the only numbers allowed to differ
        record.pop("train_time_s"), record.pop("eval_time_s", None)
    return records


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_task_resumes_exactly_and_refuses_another_scheme_or_setting(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = TINY[name][0]
    data = tmp_path / "data"
    straight = run(task, _args(name, data, tmp_path / "a"))
    run(task, _args(name, data, tmp_path / "b", "--stop-after", "1"))
    checkpoint = tmp_path / "b" / "checkpoint.pth"
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 0
    resumed = run(task, _args(name, data, tmp_path / "b", "--resume", str(checkpoint)))

    # The same weights, bit for bit, and the same log as the uninterrupted run.
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=False)
    b = torch.load(checkpoint, weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"]), name
    assert a["states"] == b["states"] and a["lr_scheduler"] == b["lr_scheduler"]
    assert _log(tmp_path / "a" / "log.jsonl") == _log(tmp_path / "b" / "log.jsonl")
    assert [r["train"] for r in resumed] == [r["train"] for r in straight]
    assert task.metric in resumed[-1]

    # One rule for every task: another scheme, or another setting, is refused before loading.
    with pytest.raises(ValueError, match=r"--scheme \w+ there, one2one here"):
        run(task, _args(name, data, tmp_path / "c", "--resume", str(checkpoint), "--scheme", "one2one"))
    with pytest.raises(ValueError, match="--k 2 there, 3 here"):
        run(task, _args(name, data, tmp_path / "c", "--resume", str(checkpoint), "--k", "3"))


def test_check_resumable_names_every_differing_setting() -> None:
    saved = {"args": {"scheme": "branch", "k": 6, "num_queries_one2one": 30, "lr": 1e-4},
             "states": {"scheme": {"epoch": 3}}}
    same = argparse.Namespace(scheme="branch", k=6, num_queries_one2one=30, lr=2e-4)  # lr may change
    check_resumable(saved, same, RESUME_KEYS)
    other = argparse.Namespace(scheme="epoch", k=4, num_queries_one2one=30, lr=1e-4)
    with pytest.raises(ValueError) as error:
        check_resumable(saved, other, RESUME_KEYS, "ckpt.pth")
    message = str(error.value)
    assert message.startswith("ckpt.pth was written by a run with other settings")
    assert "--scheme branch there, epoch here" in message and "--k 6 there, 4 here" in message
    assert "lr" not in message.replace("--output-dir", "")


def test_a_checkpoint_without_arguments_is_still_told_apart_by_its_scheme_state() -> None:
    hybrid = {"args": {}, "states": {"scheme": {"epoch": 1}}}
    plain = {"args": {}, "states": {"scheme": None}}
    with pytest.raises(ValueError, match="a hybrid scheme there, none here"):
        check_resumable(hybrid, argparse.Namespace(scheme="one2one"), RESUME_KEYS)
    with pytest.raises(ValueError, match="a hybrid scheme there, one here"):
        check_resumable(plain, argparse.Namespace(scheme="layer"), RESUME_KEYS)
    check_resumable(plain, argparse.Namespace(scheme="one2one"), RESUME_KEYS)


def test_a_refused_checkpoint_leaves_the_model_untouched(tmp_path: Path) -> None:
    from examples.common.checkpoint import load_checkpoint

    info = DistInfo(0, 1, 0, torch.device("cpu"))
    saved_model, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "c.pth", model=saved_model, optimizer=None, epoch=0, info=info,
                    args={"scheme": "branch", "k": 6}, states={"scheme": None})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="--k 6 there, 2 here"):
        load_checkpoint(tmp_path / "c.pth", model=model, check=lambda state: check_resumable(
            state, argparse.Namespace(scheme="branch", k=2), RESUME_KEYS))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("task", [DETECTION, POSE, SEGMENTATION], ids=lambda t: t.name)
def test_every_task_shares_the_command_line_and_keeps_its_defaults(task) -> None:
    args = task_parser(task).parse_args([])
    for key, value in task.defaults.items():
        assert getattr(args, key) == value
    # The arguments every task has, with one meaning.
    for option in ("scheme", "k", "lambda_one2many", "num_queries_one2one", "train_limit", "data_seed", "resume"):
        assert hasattr(args, option), (task.name, option)
    assert args.scheme == "branch" and task.prog == f"examples.{task.name}.train"


def test_a_default_for_an_unknown_argument_is_refused() -> None:
    class Broken(runner.Task):
        name = "broken"
        defaults = {"no_such_option": 1}

    with pytest.raises(ValueError, match="no_such_option"):
        task_parser(Broken())


@pytest.mark.parametrize("module", ["detection", "pose", "segmentation"])
def test_the_train_commands_still_parse(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    train = importlib.import_module(f"examples.{module}.train")
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    assert done.value.code == 0 and f"examples.{module}.train" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["runner", "criterion", "coco", "data", "shapes", "comparison"])
def test_docstring_examples_of_the_shared_modules(name: str) -> None:
    module = importlib.import_module(f"examples.common.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
