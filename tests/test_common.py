"""examples.common on its own: checkpoints and exact resume, logs, run folder, CLI, the step, the
shared criterion loop, weights and scheme factory, the COCO and data helpers."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from examples.common import (
    RunDir,
    all_reduce_mean,
    append_jsonl,
    check_training_args,
    fit,
    init_distributed,
    load_checkpoint,
    read_jsonl,
    save_checkpoint,
    seed_everything,
    train_step,
    training_parser,
)
from examples.common.data import make_loader
from examples.common.distributed import DistInfo

# ------------------------------------------------------------------ a tiny task


class Counter:
    """A named state: counts epochs, as a hybrid scheme tracks its phase."""

    def __init__(self) -> None:
        self.epoch = 0

    def step(self) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]


def _loss_fn(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = batch
    # Random "augmentation" from the global stream: resuming must restore the RNG to match.
    x = x + 0.1 * torch.randn_like(x)
    mse = ((model(x) - y) ** 2).mean()
    return mse, {"mse": mse}


def _setup(seed: int = 0):
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    data = TensorDataset(torch.linspace(-1, 1, 24).reshape(8, 3), torch.arange(8.0).reshape(8, 1))
    loader = DataLoader(data, batch_size=3, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=seed))
    return model, optimizer, scheduler, loader, Counter()


def _fit(run_dir: RunDir, epochs: int, **resume) -> tuple[list, torch.nn.Module, Counter]:
    torch.set_num_threads(1)
    model, optimizer, scheduler, loader, counter = _setup()
    info = init_distributed("cpu")
    start, history = 0, []
    if resume.pop("resume", False):
        state = load_checkpoint(run_dir.checkpoint, model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                states={"counter": counter}, info=info)
        start, history = state["epoch"] + 1, state["history"]
    history = fit(model=model, loss_fn=_loss_fn, loader=loader, optimizer=optimizer, lr_scheduler=scheduler,
                  info=info, run_dir=run_dir, epochs=epochs, clip_max_norm=1.0, states={"counter": counter},
                  on_epoch_end=lambda epoch: counter.step(), start_epoch=start, history=history,
                  evaluate=lambda epoch: {"score": float(model[0].weight.detach().sum())}, eval_every=2,
                  record_extra={"task": "toy"}, progress=False, **resume)
    return history, model, counter


def test_resume_after_a_stop_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    straight_dir = RunDir(tmp_path / "straight").create()
    straight, model_a, counter_a = _fit(straight_dir, 4)

    broken_dir = RunDir(tmp_path / "broken").create()
    _fit(broken_dir, 4, stop_after=2)
    assert torch.load(broken_dir.checkpoint, weights_only=False)["epoch"] == 1
    resumed, model_b, counter_b = _fit(broken_dir, 4, resume=True)

    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name  # bit-identical: same data order, same noise, same steps
    assert counter_a.epoch == counter_b.epoch == 4
    strip = [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in straight]
    assert [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in resumed] == strip
    # The log: one record per epoch in both, evaluation every 2 epochs and at the end.
    logged = broken_dir.records()
    assert [r["epoch"] for r in logged] == [0, 1, 2, 3]
    assert ["score" in r for r in logged] == [False, True, False, True]
    assert all(r["task"] == "toy" and math.isfinite(r["train"]["mse"]) for r in logged)
    assert [r["lr"] for r in logged] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])  # StepLR(2)


def test_load_checkpoint_names_a_missing_state(tmp_path: Path) -> None:
    model, optimizer, _, _, _ = _setup()
    path = tmp_path / "c.pth"
    save_checkpoint(path, model=model, optimizer=optimizer, epoch=0, info=init_distributed("cpu"))
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    with pytest.raises(KeyError, match="'scheme'"):
        load_checkpoint(path, model=model, states={"scheme": Counter()})
    load_checkpoint(path, model=model, states={"scheme": None})  # None: nothing asked for


def test_train_step_clips_to_the_norm_and_reports_the_norm_before() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    batch = (torch.randn(5, 4), torch.randn(5, 2) * 100)

    def loss_fn(m, b):
        loss = ((m(b[0]) - b[1]) ** 2).sum()
        return loss, {"sq": loss}

    reference = torch.nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    loss_fn(reference, batch)[0].backward()
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in reference.parameters()))

    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    record = train_step(model, loss_fn, batch, sgd, clip_max_norm=0.5)
    assert record["grad_norm"] == pytest.approx(norm, rel=1e-5)
    step = math.sqrt(sum(float(((a - p.detach()).double() ** 2).sum()) for a, p in zip(before, model.parameters())))
    assert step == pytest.approx(0.5, rel=1e-4)  # lr 1: the step is the clipped gradient
    assert record["loss"] == pytest.approx(record["sq"])


def test_train_step_stops_on_a_non_finite_loss() -> None:
    model = torch.nn.Linear(2, 1)

    def loss_fn(m, b):
        value = m(b).sum() * float("nan")
        return value, {"bad": value}

    with pytest.raises(FloatingPointError, match="bad"):
        train_step(model, loss_fn, torch.ones(1, 2), None)


def test_all_reduce_mean_alone_is_the_identity() -> None:
    assert all_reduce_mean({"a": 1.5, "b": -2.0}, init_distributed("cpu")) == {"a": 1.5, "b": -2.0}


# ------------------------------------------------------------------ logs and the run folder


def test_json_lines_round_trip_and_a_cut_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    records = [{"epoch": 0, "train": {"loss": 1.25}}, {"epoch": 1, "coco": {"AP": 0.5}}]
    for record in records:
        append_jsonl(path, record)
    assert path.read_text().count("\n") == 2
    assert read_jsonl(path) == records
    with open(path, "a") as log:
        log.write('{"epoch": 2, "tra')
    with pytest.raises(ValueError, match=r"log.jsonl:3 "):
        read_jsonl(path)


def test_run_dir_writes_args_and_starts_a_fresh_log(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    assert run_dir.records() == []
    run_dir.create(argparse.Namespace(lr=0.1, output_dir=tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "args.json").read_text()) == {"lr": 0.1, "output_dir": str(tmp_path / "run")}
    run_dir.append({"epoch": 0})
    run_dir.create()  # a resumed run keeps its log
    assert run_dir.records() == [{"epoch": 0}]
    run_dir.create(fresh_log=True)
    assert run_dir.records() == [] and run_dir.checkpoint.name == "checkpoint.pth"


# ------------------------------------------------------------------ command line


def test_training_parser_takes_new_defaults_and_task_arguments() -> None:
    parser = training_parser("prog", "a task", epochs=50, output_dir=Path("out"))
    parser.add_argument("--num-keypoints", type=int, default=17)
    args = parser.parse_args(["--lr", "1e-3", "--resume", "ck.pth"])
    assert (args.epochs, args.lr, args.output_dir, args.resume, args.num_keypoints) == (
        50, 1e-3, Path("out"), Path("ck.pth"), 17)
    check_training_args(parser, args)
    with pytest.raises(ValueError, match="epoch"):
        training_parser("prog", "a task", epoch=3)  # a typo of a shared argument


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--clip-max-norm", "-1"], "--clip-max-norm"),
    (["--stop-after", "0"], "--stop-after"),
    (["--eval-every", "-1"], "--eval-every"),
])
def test_check_training_args_rejects_impossible_values(argv, message, capsys) -> None:
    parser = training_parser("prog", "a task")
    with pytest.raises(SystemExit):
        check_training_args(parser, parser.parse_args(argv))
    assert message in capsys.readouterr().err


def test_cli_docstring_example() -> None:
    import doctest

    from examples.common import cli

    result = doctest.testmod(cli)
    assert result.attempted > 0 and result.failed == 0


def test_eval_epochs_picks_the_evaluated_epochs_and_always_the_last(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model, optimizer, scheduler, loader, _ = _setup()
    run_dir = RunDir(tmp_path / "run").create()
    history = fit(model=model, loss_fn=_loss_fn, loader=loader, optimizer=optimizer, lr_scheduler=scheduler,
                  info=init_distributed("cpu"), run_dir=run_dir, epochs=5, eval_every=2, eval_epochs=[1, 3],
                  evaluate=lambda epoch: {"score": 1.0}, progress=False)
    # 1-based epochs 1 and 3, then the last (5); eval_every=2 (epochs 2 and 4) is overridden.
    assert ["score" in r for r in history] == [True, False, True, False, True]


def test_eval_epochs_outside_the_schedule_is_refused() -> None:
    parser = training_parser("t", "t")
    for bad in (["--epochs", "4", "--eval-epochs", "0"], ["--epochs", "4", "--eval-epochs", "2", "5"]):
        with pytest.raises(SystemExit):
            check_training_args(parser, parser.parse_args(bad))


# ------------------------------------------------------------------ the shared criterion loop and helpers


def test_the_criterion_loop_charges_every_layer_and_the_encoder_with_its_own_matcher() -> None:
    import hybridmatch
    from examples.common.criterion import SetCriterion

    seen: list[tuple[str, ...]] = []
    encoder_calls: list[list[int]] = []

    class Recording(SetCriterion):
        output_keys = ("pred_logits", "pred_boxes", "pred_extra")

        def layer_losses(self, outputs, targets, num_boxes):
            seen.append(tuple(sorted(outputs)))
            return {"loss_x": torch.tensor(float(len(seen))) / num_boxes}

    def encoder_matcher(outputs, targets):
        encoder_calls.append([int(v) for t in targets for v in t["labels"]])
        return hybridmatch.HungarianMatcher()(outputs, targets)

    def layer(n: int = 3) -> dict:
        return {"pred_logits": torch.zeros(1, n, 2), "pred_boxes": torch.full((1, n, 4), 0.5)}

    outputs = {**layer(), "pred_extra": torch.zeros(1, 3), "not_a_layer_output": 1,
               "aux_outputs": [layer(), layer()], "enc_outputs": layer()}
    targets = [{"labels": torch.tensor([1, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)}]
    losses = Recording(2, hybridmatch.HungarianMatcher(), encoder_matcher=encoder_matcher)(outputs, targets)
    # Final layer first (only its output_keys), then aux 0 and 1; num_boxes = 2 objects.
    assert seen[0] == ("pred_boxes", "pred_extra", "pred_logits") and len(seen) == 3
    assert {k: float(v) for k, v in losses.items() if k.startswith("loss_x")} == {
        "loss_x": 0.5, "loss_x_0": 1.0, "loss_x_1": 1.5}
    # The encoder: its own matcher, on class-agnostic targets (every label 0), class and box losses.
    assert encoder_calls == [[0, 0]]
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)


def test_hybrid_weights_are_the_official_weight_dict_of_each_scheme() -> None:
    import hybridmatch
    from examples.common.criterion import hybrid_weights, layer_weight_dict

    base = {"loss_ce": 2.0, "loss_bbox": 5.0}
    weights = layer_weight_dict(base, 2, encoder={"loss_ce": 1.0})
    assert weights == {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_ce_0": 2.0, "loss_bbox_0": 5.0, "loss_ce_enc": 1.0}
    branch = hybrid_weights(weights, hybridmatch.HybridBranch(2, 4, k=2, weight=0.5))
    # H-DETR: every decoder key gets a _one2many copy with the same weight (lambda is in the
    # loss already); the encoder has no one-to-many loss, so no key for it.
    assert branch == {**weights, "loss_ce_one2many": 2.0, "loss_bbox_one2many": 5.0, "loss_ce_0_one2many": 2.0,
                      "loss_bbox_0_one2many": 5.0}
    assert hybrid_weights(weights, hybridmatch.HybridLayer(2, 1, num_queries=4)) == weights
    assert hybrid_weights(weights, None) == weights


def test_the_scheme_factory_checks_the_query_counts() -> None:
    from examples.common.criterion import build_scheme

    with pytest.raises(ValueError, match="num_queries_one2many > 0"):
        build_scheme("branch", num_queries_one2one=4, num_queries_one2many=0, num_decoder_layers=2)
    with pytest.raises(ValueError, match="one group of queries"):
        build_scheme("epoch", num_queries_one2one=4, num_queries_one2many=8, num_decoder_layers=2)
    with pytest.raises(ValueError, match="without one-to-many queries"):
        build_scheme("one2one", num_queries_one2one=4, num_queries_one2many=8, num_decoder_layers=2)
    with pytest.raises(ValueError, match="scheme must be one of"):
        build_scheme("hybrid", num_queries_one2one=4, num_queries_one2many=8, num_decoder_layers=2)
    layer = build_scheme("layer", num_queries_one2one=4, num_queries_one2many=0, num_decoder_layers=2)
    assert layer.k == 10 and layer.num_one2many_layers == 1  # default K, and at least one layer


def test_coco_helpers_see_through_a_subset_and_are_the_identity_alone() -> None:
    from examples.common.coco import coco_api, gather_results, label_to_category, on_main_rank

    class Data(torch.utils.data.Dataset):
        coco = object()
        label_to_category = {0: 3, 1: 7}

        def __len__(self) -> int:
            return 4

    data = Data()
    subset = torch.utils.data.Subset(data, range(2))
    assert coco_api(subset) is Data.coco and label_to_category(subset) == {0: 3, 1: 7}
    with pytest.raises(TypeError, match="label_to_category"):
        label_to_category([1, 2])
    results = [{"image_id": 1}]
    assert gather_results(results, [1]) == (results, [1])
    assert on_main_rank(lambda: 42, 0) == 42


def test_coco_splits_knows_both_layouts_and_names_a_missing_file(tmp_path: Path) -> None:
    from examples.common.data import coco_splits
    from examples.common.distributed import DistInfo

    info = DistInfo(0, 1, 0, torch.device("cpu"))
    made: list[str] = []

    def make_split(split: str) -> None:
        made.append(split)
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text("{}")

    paths = coco_splits("synthetic", tmp_path, info, prefix="instances", make_split=make_split)
    assert made == ["train", "val"]
    assert paths["val"] == (tmp_path / "val", tmp_path / "annotations" / "instances_val.json")
    with pytest.raises(FileNotFoundError, match=r"person_keypoints_train2017\.json \(--data coco"):
        coco_splits("coco", tmp_path, info, prefix="person_keypoints")


def test_an_evaluation_loader_leaves_the_global_generator_alone() -> None:
    # Training augmentations draw from torch's global generator; a validation pass in between
    # must not move it, or how often a run evaluates would change what it trains on.
    data = TensorDataset(torch.arange(6.0))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    evaluation = make_loader(data, 2, info, train=False, seed=0, collate_fn=list)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for _ in range(2):
        assert len(list(evaluation)) == 3
    assert torch.equal(torch.rand(3), expected)
    training = make_loader(data, 2, info, train=True, seed=0, collate_fn=list)
    torch.manual_seed(123)
    list(training)
    assert not torch.equal(torch.rand(3), expected)  # the check can fail: a training iterator draws
