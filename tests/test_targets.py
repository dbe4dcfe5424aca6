"""Tests of hybridmatch.targets: padding, GT replication (H-DETR one-to-many) and provenance."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybridmatch.errors import HybridMatchWarning, InvalidTargetError, ShapeError
from hybridmatch.targets import (
    PADDING_BOX,
    PADDING_LABEL,
    PaddedTargets,
    original_target_index,
    pad_targets,
    repeat_padded_targets,
    repeat_targets,
    repeated_index,
    split_repeated_index,
)

from .conftest import cpu_and_cuda

NUM_JOINTS = 3
MASK_SIZE = (2, 3)


def make_image(
    num_objects: int,
    *,
    seed: int = 0,
    extras: bool = False,
    image_id: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """One DETR target dict with ``num_objects`` objects and the usual per-image keys."""
    gen = torch.Generator().manual_seed(seed)
    target: dict[str, Any] = {
        "labels": torch.randint(0, 91, (num_objects,), generator=gen),
        "boxes": torch.rand(num_objects, 4, generator=gen),
        "image_id": torch.tensor([image_id]),
        # Shape (2,): equal to M when num_objects == 2, the ambiguity detection must resist.
        "size": torch.tensor([480, 640]),
        "orig_size": torch.tensor([480, 640]),
    }
    if extras:
        target["area"] = torch.rand(num_objects, generator=gen)
        target["iscrowd"] = torch.zeros(num_objects, dtype=torch.int64)
        target["keypoints"] = torch.rand(num_objects, NUM_JOINTS, 3, generator=gen)
        target["masks"] = torch.rand(num_objects, *MASK_SIZE, generator=gen) > 0.5
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}


@st.composite
def batches(draw: st.DrawFn, max_images: int = 5, max_objects: int = 6) -> list[dict[str, Any]]:
    num_images = draw(st.integers(0, max_images))
    extras = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    counts = draw(st.lists(st.integers(0, max_objects), min_size=num_images, max_size=num_images))
    return [
        make_image(m, seed=seed + i, extras=extras, image_id=i) for i, m in enumerate(counts)
    ]


def per_object(target: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The per-object keys of a ``make_image`` dict (known by construction, not detected)."""
    keys = ("labels", "boxes", "area", "iscrowd", "keypoints", "masks")
    return {k: target[k] for k in keys if k in target}


def reference_repeat(target: dict[str, Any], k: int) -> dict[str, Any]:
    """H-DETR's one-to-many targets, written as its training code does."""
    out = dict(target)
    out["labels"] = target["labels"].repeat(k)
    out["boxes"] = target["boxes"].repeat(k, 1)
    if "area" in target:
        out["area"] = target["area"].repeat(k)
        out["iscrowd"] = target["iscrowd"].repeat(k)
        out["keypoints"] = target["keypoints"].repeat(k, 1, 1)
        out["masks"] = target["masks"].repeat(k, 1, 1)
    return out


def assert_padded_matches(padded: PaddedTargets, targets: list[dict[str, Any]]) -> None:
    """Check every slot of ``padded`` against the targets with plain loops."""
    b_size = len(targets)
    m_max = max((len(t["labels"]) for t in targets), default=0)
    assert padded.labels.shape == (b_size, m_max)
    assert padded.boxes.shape == (b_size, m_max, 4)
    assert padded.valid.shape == (b_size, m_max)
    assert padded.labels.dtype == torch.int64 and padded.valid.dtype == torch.bool
    assert padded.batch_size == b_size and padded.max_targets == m_max
    assert padded.num_targets_list == [len(t["labels"]) for t in targets]
    assert padded.num_targets.tolist() == padded.num_targets_list
    assert padded.num_targets.device == padded.labels.device
    for b, target in enumerate(targets):
        m = len(target["labels"])
        for j in range(m_max):
            if j < m:
                assert padded.valid[b, j]
                assert padded.labels[b, j] == target["labels"][j]
                assert torch.equal(padded.boxes[b, j], target["boxes"][j])
                for key, value in padded.extras.items():
                    assert torch.equal(value[b, j], target[key][j].to(value.dtype))
            else:
                assert not padded.valid[b, j]
                assert padded.labels[b, j] == PADDING_LABEL
                assert padded.boxes[b, j].tolist() == list(PADDING_BOX)
                for value in padded.extras.values():
                    assert not value[b, j].any()


# ---------------------------------------------------------------------------------------------
# pad_targets / unpad


@given(batches())
def test_pad_matches_slot_by_slot_reference(targets: list[dict[str, Any]]) -> None:
    padded = pad_targets(targets)
    assert_padded_matches(padded, targets)
    expected_extras = set(per_object(targets[0])) - {"labels", "boxes"} if targets else set()
    assert set(padded.extras) == expected_extras


@given(batches())
def test_pad_unpad_round_trip(targets: list[dict[str, Any]]) -> None:
    unpadded = pad_targets(targets).unpad()
    assert len(unpadded) == len(targets)
    for got, target in zip(unpadded, targets):
        expected = per_object(target)
        assert set(got) == set(expected)  # per-image keys are dropped, not padded
        for key, value in expected.items():
            assert got[key].dtype == value.dtype
            assert torch.equal(got[key], value), key


def test_pad_extras_trailing_shapes_and_zero_padding() -> None:
    # Two images with 1 and 3 objects: image 0 has two padded slots.
    targets = [make_image(1, seed=1, extras=True), make_image(3, seed=2, extras=True)]
    padded = pad_targets(targets)
    assert padded.extras["keypoints"].shape == (2, 3, NUM_JOINTS, 3)
    assert padded.extras["masks"].shape == (2, 3, *MASK_SIZE)
    assert padded.extras["masks"].dtype == torch.bool
    assert not padded.extras["masks"][0, 1:].any()
    assert padded.valid.tolist() == [[True, False, False], [True, True, True]]


def test_empty_batch() -> None:
    padded = pad_targets([])
    assert padded.labels.shape == (0, 0) and padded.boxes.shape == (0, 0, 4)
    assert padded.valid.shape == (0, 0) and padded.num_targets.shape == (0,)
    assert padded.num_targets_list == [] and padded.extras == {}
    assert padded.unpad() == []
    assert repeat_targets([], 3) == []
    assert repeat_padded_targets(padded, 3).labels.shape == (0, 0)


def test_all_images_empty() -> None:
    targets = [make_image(0, extras=True), make_image(0, extras=True)]
    padded = pad_targets(targets)
    assert padded.labels.shape == (2, 0) and padded.boxes.shape == (2, 0, 4)
    assert padded.extras["masks"].shape == (2, 0, *MASK_SIZE)
    assert padded.num_targets_list == [0, 0]
    repeated = repeat_padded_targets(padded, 6)
    assert repeated.labels.shape == (2, 0) and repeated.num_targets_list == [0, 0]
    for image in repeat_targets(targets, 6):
        assert image["labels"].shape == (0,) and image["boxes"].shape == (0, 4)
        assert image["masks"].shape == (0, *MASK_SIZE)


def test_boxes_dtype_is_promoted_and_labels_cast() -> None:
    targets = [make_image(2), make_image(1)]
    targets[0]["boxes"] = targets[0]["boxes"].half()
    targets[1]["labels"] = targets[1]["labels"].to(torch.int32)
    padded = pad_targets(targets)
    assert padded.boxes.dtype == torch.float32 and padded.labels.dtype == torch.int64


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_device_argument_and_to(device: str) -> None:
    padded = pad_targets([make_image(2, extras=True), make_image(0, extras=True)], device=device)
    for tensor in (padded.labels, padded.boxes, padded.valid, padded.num_targets):
        assert tensor.device.type == device
    assert all(v.device.type == device for v in padded.extras.values())
    back = padded.to("cpu")
    assert back.device.type == "cpu" and back.extras["masks"].device.type == "cpu"
    assert torch.equal(back.boxes, padded.boxes.cpu())
    assert back.num_targets_list == [2, 0]


@pytest.mark.cuda
def test_repeat_padded_on_cuda_matches_cpu() -> None:
    targets = [make_image(m, seed=m, extras=True) for m in (3, 0, 5)]
    on_cpu = repeat_padded_targets(pad_targets(targets), 4)
    on_cuda = repeat_padded_targets(pad_targets(targets, device="cuda"), 4)
    assert torch.equal(on_cuda.labels.cpu(), on_cpu.labels)
    assert torch.equal(on_cuda.boxes.cpu(), on_cpu.boxes)


# ---------------------------------------------------------------------------------------------
# Per-object key detection


def test_size_of_a_two_object_image_is_not_padded() -> None:
    # Every image has M = 2 and size/orig_size/image_id-like keys of shape (2,).
    targets = [make_image(2, seed=1), make_image(2, seed=2)]
    for t in targets:
        t["orig_target_sizes"] = torch.tensor([10, 20])
        t["image_size"] = torch.tensor([10, 20])
    padded = pad_targets(targets)
    assert padded.extras == {}
    for original, repeated in zip(targets, repeat_targets(targets, 3)):
        for key in ("size", "orig_size", "image_id", "orig_target_sizes", "image_size"):
            assert repeated[key] is original[key]
        assert repeated["labels"].shape == (6,)


def test_unknown_per_image_key_not_padded_when_length_differs_from_m() -> None:
    # "crop" has length 4 in images with 2 and 3 objects: per-image.
    targets = [make_image(2), make_image(3)]
    for t in targets:
        t["crop"] = torch.tensor([0, 0, 10, 10])
        t["file_name"] = "a.jpg"
    assert pad_targets(targets).extras == {}
    repeated = repeat_targets(targets, 2)
    assert repeated[0]["crop"] is targets[0]["crop"]
    assert repeated[1]["file_name"] == "a.jpg"


def test_custom_per_object_key_is_detected() -> None:
    targets = [make_image(2), make_image(3)]
    for t in targets:
        t["track_id"] = torch.arange(len(t["labels"]))
    padded = pad_targets(targets)
    assert padded.extras["track_id"].tolist() == [[0, 1, 0], [0, 1, 2]]
    assert repeat_targets(targets, 2)[0]["track_id"].tolist() == [0, 1, 0, 1]


def test_explicit_per_object_keys_override_detection() -> None:
    # All images have M = 4, so "crop" (length 4) looks per-object; the override says it is not.
    targets = [make_image(4, seed=1, extras=True), make_image(4, seed=2, extras=True)]
    for t in targets:
        t["crop"] = torch.tensor([0, 0, 10, 10])
    assert "crop" in pad_targets(targets).extras
    padded = pad_targets(targets, per_object_keys=["area"])
    assert set(padded.extras) == {"area"}
    repeated = repeat_targets(targets, 2, per_object_keys=["area"])
    assert repeated[0]["crop"] is targets[0]["crop"]
    assert repeated[0]["keypoints"] is targets[0]["keypoints"]  # not listed: kept as is
    assert repeated[0]["area"].shape == (8,)


def test_explicit_per_object_key_may_be_a_known_per_image_name() -> None:
    targets = [make_image(2), make_image(2)]
    padded = pad_targets(targets, per_object_keys=["size"])
    assert padded.extras["size"].tolist() == [[480, 640], [480, 640]]


def test_key_missing_from_some_images_is_per_image_with_a_warning() -> None:
    targets = [make_image(2), make_image(3)]
    targets[0]["area"] = torch.rand(2)
    with pytest.warns(HybridMatchWarning, match="'area'.*missing from some images"):
        padded = pad_targets(targets)
    assert padded.extras == {}


def test_detection_does_not_warn_for_ordinary_batches() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pad_targets([make_image(2, extras=True), make_image(5, extras=True)])


# ---------------------------------------------------------------------------------------------
# Validation errors: each names the image index and the key.


def _bad_batch(image: dict[str, Any]) -> list[dict[str, Any]]:
    return [make_image(2), image]


@pytest.mark.parametrize("function", [pad_targets, lambda t: repeat_targets(t, 2)])
@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda t: t.pop("labels"), r"targets\[1\] has no 'labels'"),
        (lambda t: t.pop("boxes"), r"targets\[1\] has no 'boxes'"),
        (lambda t: t.update(labels=t["labels"].float()), r"targets\[1\]\['labels'\].*float32.*int"),
        (lambda t: t.update(labels=t["labels"][:, None]), r"targets\[1\]\['labels'\].*1-D"),
        (lambda t: t.update(labels=[1, 2, 3]), r"targets\[1\]\['labels'\] must be a Tensor"),
        (
            lambda t: t.update(boxes=torch.rand(3, 5)),
            r"targets\[1\]\['boxes'\].*\(3, 5\).*\(M_i, 4\)",
        ),
        (lambda t: t.update(boxes=torch.rand(3)), r"targets\[1\]\['boxes'\].*\(3,\).*\(M_i, 4\)"),
        (
            lambda t: t.update(boxes=torch.ones(3, 4, dtype=torch.int64)),
            r"targets\[1\]\['boxes'\].*int64.*floating",
        ),
        (lambda t: t.update(boxes=torch.rand(4, 4)), r"targets\[1\] has 3 labels but 4 boxes"),
    ],
)
def test_malformed_core_keys(function: Any, mutate: Any, pattern: str) -> None:
    image = make_image(3)
    mutate(image)
    with pytest.raises(InvalidTargetError, match=pattern):
        function(_bad_batch(image))


def test_empty_float_labels_get_a_hint() -> None:
    image = {"labels": torch.tensor([]), "boxes": torch.zeros(0, 4)}
    with pytest.raises(InvalidTargetError, match=r"targets\[0\]\['labels'\].*dtype=torch.int64"):
        pad_targets([image])


def test_targets_must_be_a_list_of_dicts() -> None:
    with pytest.raises(InvalidTargetError, match=r"list of per-image dicts.*\[target\]"):
        pad_targets(make_image(2))  # type: ignore[arg-type]
    with pytest.raises(InvalidTargetError, match=r"targets\[1\] must be a dict"):
        pad_targets([make_image(2), "image"])  # type: ignore[list-item]


@pytest.mark.parametrize("function", [pad_targets, lambda t, **kw: repeat_targets(t, 2, **kw)])
def test_explicit_key_with_wrong_length(function: Any) -> None:
    targets = [make_image(2, extras=True), make_image(3, extras=True)]
    targets[1]["area"] = torch.rand(5)
    pattern = r"targets\[1\]\['area'\].*\(5,\).*M_i = len\(labels\) = 3"
    with pytest.raises(InvalidTargetError, match=pattern):
        function(targets, per_object_keys=["area"])


def test_explicit_key_missing_or_not_a_tensor() -> None:
    targets = [make_image(2, extras=True), make_image(3)]
    with pytest.raises(InvalidTargetError, match=r"'area' but targets\[1\] has no 'area'"):
        pad_targets(targets, per_object_keys=["area"])
    targets[1]["area"] = [1.0, 2.0, 3.0]
    with pytest.raises(InvalidTargetError, match=r"targets\[1\]\['area'\].*list"):
        pad_targets(targets, per_object_keys=["area"])


def test_per_object_keys_as_a_bare_string_is_rejected() -> None:
    with pytest.raises(InvalidTargetError, match=r"per_object_keys=\['area'\]"):
        pad_targets([make_image(2, extras=True)], per_object_keys="area")


def test_inconsistent_trailing_shape_across_images() -> None:
    targets = [make_image(2, extras=True), make_image(3, extras=True)]
    targets[1]["masks"] = torch.zeros(3, 5, 5, dtype=torch.bool)
    pattern = r"targets\[1\]\['masks'\].*\(3, 5, 5\).*targets\[0\]\['masks'\]"
    with pytest.raises(InvalidTargetError, match=pattern):
        pad_targets(targets)
    # repeat_targets works image by image and does not need equal mask sizes.
    assert repeat_targets(targets, 2)[1]["masks"].shape == (6, 5, 5)


def test_inconsistent_devices() -> None:
    targets = [make_image(2), make_image(3)]
    targets[1]["boxes"] = targets[1]["boxes"].to("meta")
    pattern = r"targets\[1\]\['boxes'\] is on meta.*targets\[0\]\['labels'\].*device="
    with pytest.raises(InvalidTargetError, match=pattern):
        pad_targets(targets)


def test_padded_targets_checks_its_shapes() -> None:
    good = pad_targets([make_image(2), make_image(1)])
    with pytest.raises(ShapeError, match=r"boxes must have shape \(2, 2, 4\)"):
        PaddedTargets(good.labels, good.boxes[:, :1], good.valid, good.num_targets, [2, 1])
    with pytest.raises(ShapeError, match="num_targets_list"):
        PaddedTargets(good.labels, good.boxes, good.valid, good.num_targets, [2])
    with pytest.raises(ShapeError, match="num_targets_list"):
        PaddedTargets(good.labels, good.boxes, good.valid, good.num_targets, [3, 1])


# ---------------------------------------------------------------------------------------------
# repeat_targets


@given(batches(), st.integers(1, 4))
def test_repeat_targets_equals_hdetr_repeat(targets: list[dict[str, Any]], k: int) -> None:
    repeated = repeat_targets(targets, k)
    assert len(repeated) == len(targets)
    for got, original in zip(repeated, targets):
        expected = reference_repeat(original, k)
        assert set(got) == set(expected)
        for key, value in expected.items():
            if key in per_object(original):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] is original[key], key  # per-image: the same object
        assert got is not original


@given(batches(), st.integers(1, 4))
def test_repeated_index_maps_back_to_the_original_object(
    targets: list[dict[str, Any]], k: int
) -> None:
    for original, repeated in zip(targets, repeat_targets(targets, k)):
        m = len(original["labels"])
        for r in range(k * m):
            j = int(original_target_index(torch.tensor(r), m))
            assert 0 <= j < m
            for key in per_object(original):
                assert torch.equal(repeated[key][r], original[key][j]), key


def test_repeat_targets_order_is_gt_major() -> None:
    # Objects g0, g1, g2 repeated twice: [g0, g1, g2, g0, g1, g2], not [g0, g0, g1, ...].
    target = {"labels": torch.tensor([5, 6, 7]), "boxes": torch.arange(12.0).reshape(3, 4)}
    out = repeat_targets([target], 2)[0]
    assert out["labels"].tolist() == [5, 6, 7, 5, 6, 7]
    assert out["boxes"][:, 0].tolist() == [0.0, 4.0, 8.0, 0.0, 4.0, 8.0]


def test_repeat_targets_does_not_modify_the_input() -> None:
    targets = [make_image(3, extras=True)]
    before = {k: v.clone() for k, v in targets[0].items()}
    repeat_targets(targets, 3)
    assert set(targets[0]) == set(before)
    assert all(torch.equal(targets[0][k], v) for k, v in before.items())


def test_keypoints_flat_layout() -> None:
    target = make_image(2)
    target["keypoints"] = torch.rand(2, NUM_JOINTS * 3)
    out = repeat_targets([target], 3)[0]
    assert torch.equal(out["keypoints"], target["keypoints"].repeat(3, 1))


@pytest.mark.parametrize(
    "function", [repeat_targets, lambda t, k: repeat_padded_targets(pad_targets(t), k)]
)
@pytest.mark.parametrize(
    ("k", "pattern"),
    [
        (0, "0"),
        (-2, "-2"),
        (True, r"True \(bool\)"),
        (2.0, r"2.0 \(float\)"),
        ("6", r"'6' \(str\)"),
    ],
)
def test_k_validation(function: Any, k: Any, pattern: str) -> None:
    message = rf"k \(the number of copies.*int >= 1, got {pattern}"
    with pytest.raises(InvalidTargetError, match=message):
        function([make_image(2)], k)


def test_k_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        repeat_targets([make_image(2)], 0)


# ---------------------------------------------------------------------------------------------
# repeat_padded_targets


@given(batches(), st.integers(1, 4))
def test_repeat_padded_equals_pad_of_repeat(targets: list[dict[str, Any]], k: int) -> None:
    got = repeat_padded_targets(pad_targets(targets), k)
    expected = pad_targets(repeat_targets(targets, k))
    m_max = max((len(t["labels"]) for t in targets), default=0)
    assert got.max_targets == k * m_max
    assert got.num_targets_list == [k * len(t["labels"]) for t in targets]
    assert got.num_targets.tolist() == got.num_targets_list
    # pad_targets(repeat) pads to k * M_max too, so the two agree tensor for tensor.
    assert torch.equal(got.labels, expected.labels)
    assert torch.equal(got.boxes, expected.boxes)
    assert torch.equal(got.valid, expected.valid)
    assert set(got.extras) == set(expected.extras)
    for key in got.extras:
        assert torch.equal(got.extras[key], expected.extras[key]), key
    assert_padded_matches(got, repeat_targets(targets, k))


# ---------------------------------------------------------------------------------------------
# original_target_index


def test_original_index_known_answers() -> None:
    # M = 3: replicated 0..8 -> 0 1 2 0 1 2 0 1 2; -1 stays unmatched.
    index = torch.tensor([0, 1, 2, 3, 4, 5, 8, -1])
    assert original_target_index(index, 3).tolist() == [0, 1, 2, 0, 1, 2, 2, -1]
    assert original_target_index(index.to(torch.int32), 3).dtype == torch.int64


@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
    st.integers(1, 4),
    st.integers(0, 6),
    st.randoms(use_true_random=False),
)
def test_original_index_per_image_counts(
    counts: list[int], k: int, num_queries: int, rng: Any
) -> None:
    # A (B, N) query -> replicated-target index, -1 where unmatched.
    rows = [
        [rng.randrange(k * m) if m > 0 and rng.random() < 0.7 else -1 for _ in range(num_queries)]
        for m in counts
    ]
    index = torch.tensor(rows, dtype=torch.int64).reshape(len(counts), num_queries)
    expected = [[r % m if r >= 0 else -1 for r in row] for row, m in zip(rows, counts)]
    assert original_target_index(index, torch.tensor(counts)).tolist() == expected
    assert original_target_index(index, counts).tolist() == expected


def test_original_index_empty_image() -> None:
    assert original_target_index(torch.tensor([-1, -1]), 0).tolist() == [-1, -1]
    assert original_target_index(torch.zeros(0, dtype=torch.int64), 0).shape == (0,)
    with pytest.raises(InvalidTargetError, match="num_targets is 0"):
        original_target_index(torch.tensor([-1, 0]), 0)
    pattern = r"replicated_index\[1, 0\] = 2 but image 1 has num_targets = 0"
    with pytest.raises(InvalidTargetError, match=pattern):
        original_target_index(torch.tensor([[0, -1], [2, -1]]), torch.tensor([2, 0]))


def test_original_index_argument_errors() -> None:
    with pytest.raises(ShapeError, match="integer tensor"):
        original_target_index(torch.tensor([0.0]), 3)
    with pytest.raises(ShapeError, match=r"shape \(3,\).*\(2, 4\)"):
        original_target_index(torch.zeros(2, 4, dtype=torch.int64), torch.tensor([1, 2, 3]))
    with pytest.raises(InvalidTargetError, match=">= 0"):
        original_target_index(torch.tensor([0]), -1)


@given(st.integers(1, 6), st.integers(1, 5))
def test_the_gt_major_rule_is_the_layout_repeat_targets_builds(m: int, k: int) -> None:
    # Object j carries label j, so the tiled labels say which object each slot holds;
    # slot r*M + j is copy r of object j, counted by hand from the front.
    tiled = repeat_targets([{"labels": torch.arange(m), "boxes": torch.rand(m, 4)}], k)[0]["labels"]
    seen = [0] * m
    for slot, obj in enumerate(tiled.tolist()):
        copy = seen[obj]
        seen[obj] += 1
        assert repeated_index(copy, obj, m) == slot
        assert split_repeated_index(slot, m) == (copy, obj)
    index = torch.arange(k * m)
    assert torch.equal(split_repeated_index(index, m)[1], tiled)  # tensors too


def test_repeat_targets_with_hugging_face_label_key() -> None:
    target = {"class_labels": torch.tensor([3, 1]), "boxes": torch.rand(2, 4), "size": torch.tensor([8, 8])}
    out = repeat_targets([target], 2, label_key="class_labels")[0]
    assert out["class_labels"].tolist() == [3, 1, 3, 1] and "labels" not in out
    assert out["boxes"].shape == (4, 4) and out["size"] is target["size"]
    with pytest.raises(InvalidTargetError, match="'class_labels'"):
        repeat_targets([{"boxes": torch.rand(2, 4)}], 2, label_key="class_labels")
