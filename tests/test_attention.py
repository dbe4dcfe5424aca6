"""Tests of hybridmatch.attention: query-group self-attention masks and their conversions.

Isolation is checked by running attention, not only by reading the mask: change the
queries a group must not see (their queries, keys and values) and assert the group's
outputs stay the same, under every form the mask can take (bool for MultiheadAttention,
additive float, SDPA's flipped bool, per-head expansions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridmatch.attention import (
    ONE2MANY,
    ONE2ONE,
    QueryGroup,
    check_attention_mask,
    denoising_hybrid_mask,
    expand_mask,
    group_attention_mask,
    group_detr_mask,
    group_slices,
    hybrid_attention_mask,
    mask_padded_queries,
    to_additive_mask,
    to_sdpa_mask,
)
from hybridmatch.errors import ShapeError

from .conftest import cpu_and_cuda

EMBED_DIM = 8
NUM_HEADS = 2
BATCH = 2
# Blocked entries get exactly zero weight, so outputs agree to rounding only.
ATOL = 1e-10

# Every way a mask reaches an attention call.
BACKENDS = ["mha_bool", "mha_additive", "mha_expanded", "sdpa", "sdpa_expanded"]

sizes = st.integers(min_value=1, max_value=5)
# Tests that run attention draw fewer examples, to stay fast; the mask-only property
# tests keep the profile's count.
attention_settings = settings(max_examples=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # The attention calls here are tiny: extra threads only cost synchronisation (and a
    # lot of it on a busy CI machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def m(rows: Sequence[str]) -> torch.Tensor:
    """A literal 0/1 matrix, one string per row ("0" = allowed, "1" = blocked)."""
    return torch.tensor([[c == "1" for c in row.replace(" ", "")] for row in rows])


# --------------------------------------------------------------------------------------------
# Running attention.

_MHA_CACHE: dict[str, torch.nn.MultiheadAttention] = {}


def _mha() -> torch.nn.MultiheadAttention:
    if "mha" not in _MHA_CACHE:
        torch.manual_seed(0)
        module = torch.nn.MultiheadAttention(EMBED_DIM, NUM_HEADS, batch_first=True)
        _MHA_CACHE["mha"] = module.double().eval()
    return _MHA_CACHE["mha"]


def _projections() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return tuple(  # type: ignore[return-value]
        torch.randn(EMBED_DIM, EMBED_DIM, generator=gen, dtype=torch.float64) for _ in range(3)
    )


def attend(x: torch.Tensor, mask: torch.Tensor | None, backend: str) -> torch.Tensor:
    """Self-attention over ``x`` (B, T, E) float64 with a blocked-convention mask."""
    batch, total, _ = x.shape
    if backend.startswith("mha"):
        if mask is None:
            form = None
        elif backend == "mha_bool":
            form = expand_mask(mask, num_heads=NUM_HEADS) if mask.dim() == 3 else mask
        elif backend == "mha_additive":
            additive = to_additive_mask(mask, torch.float64)
            form = expand_mask(additive, num_heads=NUM_HEADS) if mask.dim() == 3 else additive
        else:
            form = expand_mask(mask, batch, NUM_HEADS)
        with torch.no_grad():
            out, _ = _mha()(x, x, x, attn_mask=form, need_weights=False)
        return out
    wq, wk, wv = _projections()
    head_dim = EMBED_DIM // NUM_HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, total, NUM_HEADS, head_dim).transpose(1, 2)

    if mask is None:
        form = None
    elif backend == "sdpa":
        form = to_sdpa_mask(mask)
        form = form.unsqueeze(1) if form.dim() == 3 else form
    else:
        form = expand_mask(to_sdpa_mask(mask), batch, NUM_HEADS, layout="sdpa")
    return F.scaled_dot_product_attention(heads(x @ wq), heads(x @ wk), heads(x @ wv), attn_mask=form)


def _queries(total: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(total)
    return torch.randn(BATCH, total, EMBED_DIM, generator=gen, dtype=torch.float64)


def _query_dim(out: torch.Tensor) -> int:
    return 1 if out.dim() == 3 else 2  # MHA: (B, T, E); SDPA: (B, H, T, d)


def outputs_after_change(
    mask: torch.Tensor | None, total: int, changed: Sequence[int], backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs before and after replacing the queries ``changed`` (query, key and value)."""
    x = _queries(total)
    y = x.clone()
    y[:, list(changed)] = 10.0 * torch.randn(BATCH, len(changed), EMBED_DIM, dtype=torch.float64)
    return attend(x, mask, backend), attend(y, mask, backend)


def assert_unaffected(
    mask: torch.Tensor | None,
    watched: Sequence[int],
    changed: Sequence[int],
    backend: str,
) -> None:
    """Outputs at ``watched`` do not move when the queries ``changed`` are replaced."""
    total = mask.shape[-1] if mask is not None else max([*watched, *changed]) + 1
    before, after = outputs_after_change(mask, total, changed, backend)
    dim = _query_dim(before)
    index = torch.tensor(list(watched), dtype=torch.long)
    torch.testing.assert_close(
        before.index_select(dim, index), after.index_select(dim, index), atol=ATOL, rtol=0
    )


def assert_affected(
    mask: torch.Tensor | None, watched: Sequence[int], changed: Sequence[int], backend: str
) -> None:
    """Outputs at ``watched`` do move: the harness can see a leak (a control)."""
    total = mask.shape[-1] if mask is not None else max([*watched, *changed]) + 1
    before, after = outputs_after_change(mask, total, changed, backend)
    dim = _query_dim(before)
    index = torch.tensor(list(watched), dtype=torch.long)
    assert not torch.allclose(before.index_select(dim, index), after.index_select(dim, index))


# --------------------------------------------------------------------------------------------
# H-DETR hybrid branch: one-to-one and one-to-many never see each other.


@pytest.mark.parametrize("backend", BACKENDS)
@attention_settings
@given(num_one2one=sizes, num_one2many=sizes)
def test_one2one_and_one2many_isolated_when_running_attention(
    backend: str, num_one2one: int, num_one2many: int
) -> None:
    mask = hybrid_attention_mask(num_one2one, num_one2many)
    one2one = range(num_one2one)
    one2many = range(num_one2one, num_one2one + num_one2many)
    assert_unaffected(mask, one2one, one2many, backend)
    assert_unaffected(mask, one2many, one2one, backend)
    # Control: each group does read its own queries, and without a mask the groups mix.
    assert_affected(mask, one2one, one2one, backend)
    assert_affected(None, one2one, one2many, backend)


def test_hybrid_mask_literal() -> None:
    # 2 one-to-one + 3 one-to-many: two diagonal blocks.
    expected = m([
        "00 111",
        "00 111",
        "11 000",
        "11 000",
        "11 000",
    ])
    assert torch.equal(hybrid_attention_mask(2, 3), expected)


def test_hybrid_mask_without_one2many_blocks_nothing() -> None:
    # Inference: the one-to-one queries alone need no mask; an all-False one is equivalent.
    assert torch.equal(hybrid_attention_mask(4, 0), torch.zeros(4, 4, dtype=torch.bool))
    assert hybrid_attention_mask(0, 0).shape == (0, 0)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_builders_build_on_the_requested_device(device: str) -> None:
    for mask in (
        hybrid_attention_mask(2, 3, device=device),
        group_detr_mask(2, 2, device=device),
        denoising_hybrid_mask(2, 2, 2, 3, device=device),
    ):
        assert mask.device.type == device
        assert mask.dtype == torch.bool
    valid = torch.tensor([True, False], device=device)
    assert denoising_hybrid_mask(1, 2, 2, dn_valid=valid).device.type == device


# --------------------------------------------------------------------------------------------
# Denoising layouts.


def test_denoising_hybrid_mask_literal() -> None:
    # 2 dn groups of 2 | o2o 2 | o2m 3. dn sees itself and o2o; dn groups blind to each
    # other; matching groups see only themselves.
    expected = m([
        "00 11 00 111",
        "00 11 00 111",
        "11 00 00 111",
        "11 00 00 111",
        "11 11 00 111",
        "11 11 00 111",
        "11 11 11 000",
        "11 11 11 000",
        "11 11 11 000",
    ])
    assert torch.equal(denoising_hybrid_mask(2, 2, num_one2one=2, num_one2many=3), expected)


def test_denoising_may_see_one2many_when_asked() -> None:
    expected = m([
        "00 11 00 000",
        "00 11 00 000",
        "11 00 00 000",
        "11 00 00 000",
        "11 11 00 111",
        "11 11 00 111",
        "11 11 11 000",
        "11 11 11 000",
        "11 11 11 000",
    ])
    mask = denoising_hybrid_mask(2, 2, 2, 3, denoising_sees=(ONE2ONE, ONE2MANY))
    assert torch.equal(mask, expected)
    # Seeing nothing but itself is also a choice.
    alone = denoising_hybrid_mask(2, 2, 2, 3, denoising_sees=())
    assert torch.equal(alone[:4, 4:], torch.ones(4, 5, dtype=torch.bool))


def test_dino_layout_literal() -> None:
    # DINO without the hybrid branch: [dn0 (2) | dn1 (2) | matching (3)].
    expected = m([
        "00 11 000",
        "00 11 000",
        "11 00 000",
        "11 00 000",
        "11 11 000",
        "11 11 000",
        "11 11 000",
    ])
    assert torch.equal(denoising_hybrid_mask(2, 2, num_one2one=3), expected)


@pytest.mark.parametrize("backend", ["mha_bool", "mha_additive", "sdpa"])
@attention_settings
@given(num_dn_groups=st.integers(2, 3), dn_group_size=sizes, num_one2one=sizes, num_one2many=sizes)
def test_denoising_rules_when_running_attention(
    backend: str, num_dn_groups: int, dn_group_size: int, num_one2one: int, num_one2many: int
) -> None:
    mask = denoising_hybrid_mask(num_dn_groups, dn_group_size, num_one2one, num_one2many)
    slices = group_slices(
        [QueryGroup(f"dn{g}", dn_group_size, "denoising") for g in range(num_dn_groups)]
        + [QueryGroup(ONE2ONE, num_one2one), QueryGroup(ONE2MANY, num_one2many)]
    )
    indices = {name: list(range(s.start, s.stop)) for name, s in slices.items()}
    denoising = [i for g in range(num_dn_groups) for i in indices[f"dn{g}"]]
    matching = indices[ONE2ONE] + indices[ONE2MANY]
    # Matching queries never see denoising ones.
    assert_unaffected(mask, matching, denoising, backend)
    # Denoising groups never see each other.
    assert_unaffected(mask, indices["dn0"], indices["dn1"], backend)
    assert_unaffected(mask, indices["dn1"], indices["dn0"], backend)
    # Denoising does not see the one-to-many group (it is absent at inference) ...
    assert_unaffected(mask, denoising, indices[ONE2MANY], backend)
    # ... but does see the one-to-one group.
    assert_affected(mask, indices["dn0"], indices[ONE2ONE], backend)
    # The hybrid rule holds with denoising present.
    assert_unaffected(mask, indices[ONE2ONE], indices[ONE2MANY], backend)
    assert_unaffected(mask, indices[ONE2MANY], indices[ONE2ONE], backend)


def test_padded_denoising_slots_literal() -> None:
    # 2 dn groups of 2, the second slot of group 0 is padding | o2o 2. Nobody reads the
    # padding slot; it reads only itself.
    valid = torch.tensor([True, False, True, True])
    expected = m([
        "01 11 00",
        "10 11 11",
        "11 00 00",
        "11 00 00",
        "11 11 00",
        "11 11 00",
    ])
    assert torch.equal(denoising_hybrid_mask(2, 2, 2, dn_valid=valid), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_is_invisible_per_image(backend: str) -> None:
    # Image 0 has padding at slot 1, image 1 at slot 3 (DINO pads per image).
    valid = torch.tensor([[True, False, True, True], [True, True, True, False]])
    mask = denoising_hybrid_mask(2, 2, 2, 1, dn_valid=valid)
    assert mask.shape == (2, 7, 7)
    for image in range(2):
        assert torch.equal(mask[image], denoising_hybrid_mask(2, 2, 2, 1, dn_valid=valid[image]))
    # Replacing each image's padding slot moves none of that image's real outputs.
    x = _queries(7)
    y = x.clone()
    y[0, 1] = 5.0
    y[1, 3] = 5.0
    before, after = attend(x, mask, backend), attend(y, mask, backend)
    dim = _query_dim(before)
    for image, padding in ((0, 1), (1, 3)):
        real = torch.tensor([i for i in range(7) if i != padding])
        torch.testing.assert_close(
            before[image].index_select(dim - 1, real),
            after[image].index_select(dim - 1, real),
            atol=ATOL,
            rtol=0,
        )
    assert torch.isfinite(before).all()


def test_mask_padded_queries_broadcasts_shared_masks() -> None:
    mask = group_detr_mask(1, 3)
    valid = torch.tensor([[True, True, False], [False, True, True]])
    per_image = mask_padded_queries(mask, valid)
    assert per_image.shape == (2, 3, 3)
    # Image 1: query 0 is padding; it sees only itself and nobody sees it.
    assert torch.equal(per_image[1], m(["011", "100", "100"]))
    again = mask_padded_queries(per_image, valid)
    assert torch.equal(again, per_image)


# --------------------------------------------------------------------------------------------
# Group DETR and general layouts.


def test_group_detr_mask_literal() -> None:
    expected = m([
        "00 11 11",
        "00 11 11",
        "11 00 11",
        "11 00 11",
        "11 11 00",
        "11 11 00",
    ])
    assert torch.equal(group_detr_mask(3, 2), expected)


@pytest.mark.parametrize("backend", ["mha_bool", "sdpa_expanded"])
@attention_settings
@given(num_groups=st.integers(2, 4), group_size=sizes, data=st.data())
def test_group_detr_groups_isolated(
    backend: str, num_groups: int, group_size: int, data: st.DataObject
) -> None:
    mask = group_detr_mask(num_groups, group_size)
    changed_group = data.draw(st.integers(0, num_groups - 1), label="changed_group")
    changed = range(changed_group * group_size, (changed_group + 1) * group_size)
    others = [i for i in range(num_groups * group_size) if i not in changed]
    assert_unaffected(mask, others, changed, backend)


layouts = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(["denoising", "matching"])),
    min_size=0,
    max_size=6,
).map(lambda specs: [QueryGroup(f"g{i}", size, kind) for i, (size, kind) in enumerate(specs)])


def _expected_visibility(groups: list[QueryGroup], sees: set[str]) -> torch.Tensor:
    """The rules, query pair by query pair: True = blocked."""
    owner = [group for group in groups for _ in range(group.size)]
    total = len(owner)
    expected = torch.ones(total, total, dtype=torch.bool)
    for i, row in enumerate(owner):
        for j, col in enumerate(owner):
            same = row.name == col.name
            dn_to_seen = row.kind == "denoising" and col.kind == "matching" and col.name in sees
            expected[i, j] = not (same or dn_to_seen)
    return expected


@given(groups=layouts, data=st.data())
def test_group_attention_mask_follows_the_rules(groups: list[QueryGroup], data: st.DataObject) -> None:
    matching = [group.name for group in groups if group.kind == "matching"]
    sees = data.draw(st.none() | st.lists(st.sampled_from(matching), unique=True) if matching else st.none())
    mask = group_attention_mask(groups, denoising_sees=sees)
    expected = _expected_visibility(groups, set(matching if sees is None else sees))
    assert torch.equal(mask, expected)


@given(groups=layouts, data=st.data())
def test_no_layout_has_a_fully_blocked_row(groups: list[QueryGroup], data: st.DataObject) -> None:
    matching = [group.name for group in groups if group.kind == "matching"]
    sees = data.draw(st.none() | st.lists(st.sampled_from(matching), unique=True) if matching else st.none())
    total = sum(group.size for group in groups)
    mask = group_attention_mask(groups, denoising_sees=sees)
    assert not mask.all(dim=-1).any()
    check_attention_mask(mask, total)
    check_attention_mask(to_additive_mask(mask), total)


@given(
    num_dn_groups=st.integers(0, 3),
    dn_group_size=st.integers(0, 4),
    num_one2one=st.integers(0, 4),
    num_one2many=st.integers(0, 4),
    data=st.data(),
)
def test_no_denoising_hybrid_layout_has_a_fully_blocked_row(
    num_dn_groups: int, dn_group_size: int, num_one2one: int, num_one2many: int, data: st.DataObject
) -> None:
    num_dn = num_dn_groups * dn_group_size
    valid = data.draw(st.none() | st.lists(st.booleans(), min_size=num_dn, max_size=num_dn))
    dn_valid = None if valid is None else torch.tensor(valid, dtype=torch.bool)
    mask = denoising_hybrid_mask(
        num_dn_groups, dn_group_size, num_one2one, num_one2many, dn_valid=dn_valid
    )
    total = num_dn + num_one2one + num_one2many
    assert mask.shape == (total, total)
    assert not mask.all(dim=-1).any()
    check_attention_mask(mask, total)


def test_group_slices_in_layout_order() -> None:
    groups = [QueryGroup("dn0", 4, "denoising"), QueryGroup(ONE2ONE, 3), QueryGroup(ONE2MANY, 5)]
    assert group_slices(groups) == {
        "dn0": slice(0, 4),
        ONE2ONE: slice(4, 7),
        ONE2MANY: slice(7, 12),
    }


# --------------------------------------------------------------------------------------------
# Conversions and expansion.


def test_to_additive_mask_values_and_dtype() -> None:
    mask = hybrid_attention_mask(1, 2)
    additive = to_additive_mask(mask)
    assert additive.dtype == torch.float32
    assert torch.equal(additive == float("-inf"), mask)
    assert torch.equal(additive == 0, ~mask)
    half = to_additive_mask(mask, torch.float16)
    assert half.dtype == torch.float16 and torch.isneginf(half[0, 1])


def test_to_sdpa_mask_flips_the_convention() -> None:
    mask = hybrid_attention_mask(1, 2)
    assert torch.equal(to_sdpa_mask(mask), m(["100", "011", "011"]))
    assert torch.equal(to_sdpa_mask(to_sdpa_mask(mask)), mask)


def test_converters_reject_non_bool_masks() -> None:
    additive = to_additive_mask(hybrid_attention_mask(1, 1))
    with pytest.raises(ShapeError, match="must be bool"):
        to_sdpa_mask(additive)
    with pytest.raises(ShapeError, match="must be bool"):
        to_additive_mask(additive)
    with pytest.raises(ShapeError, match="floating"):
        to_additive_mask(hybrid_attention_mask(1, 1), torch.int64)


def test_expand_mask_shapes() -> None:
    mask = hybrid_attention_mask(2, 3)
    assert expand_mask(mask, 3, 4).shape == (12, 5, 5)
    assert expand_mask(mask, 3, 4, layout="sdpa").shape == (3, 4, 5, 5)
    assert expand_mask(mask, num_heads=4, layout="sdpa").shape == (1, 4, 5, 5)
    assert expand_mask(mask, layout="sdpa").shape == (1, 1, 5, 5)
    per_image = torch.stack([mask, ~mask | torch.eye(5, dtype=torch.bool)])
    assert expand_mask(per_image, num_heads=4).shape == (8, 5, 5)
    assert expand_mask(per_image, layout="sdpa").shape == (2, 1, 5, 5)
    assert expand_mask(to_additive_mask(mask), 2, 2).dtype == torch.float32


def test_expanded_mask_is_image_major_as_multihead_attention_reads_it() -> None:
    # Two images with different masks: the batched call must equal one call per image.
    valid = torch.tensor([[True, False, True, True], [True, True, False, True]])
    per_image = denoising_hybrid_mask(2, 2, 2, 1, dn_valid=valid)
    x = _queries(7)
    mha = _mha()
    with torch.no_grad():
        batched, _ = mha(x, x, x, attn_mask=expand_mask(per_image, num_heads=NUM_HEADS))
        for image in range(2):
            alone, _ = mha(x[image : image + 1], x[image : image + 1], x[image : image + 1],
                           attn_mask=per_image[image])
            torch.testing.assert_close(batched[image : image + 1], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["mha_expanded", "sdpa", "sdpa_expanded", "mha_additive"])
def test_every_mask_form_gives_the_same_attention(backend: str) -> None:
    mask = denoising_hybrid_mask(2, 2, 2, 3)
    x = _queries(9)
    reference = attend(x, mask, "mha_bool" if backend.startswith("mha") else "sdpa")
    torch.testing.assert_close(attend(x, mask, backend), reference, atol=ATOL, rtol=0)


def test_expand_mask_argument_errors() -> None:
    mask = hybrid_attention_mask(1, 1)
    with pytest.raises(ShapeError, match="num_heads"):
        expand_mask(mask, batch_size=2)
    with pytest.raises(ShapeError, match="batch_size"):
        expand_mask(mask, num_heads=2)
    with pytest.raises(ShapeError, match="B = 2 but batch_size = 3"):
        expand_mask(torch.stack([mask, mask]), 3, 2)
    with pytest.raises(ShapeError, match="layout"):
        expand_mask(mask, 1, 1, layout="bhtt")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="num_heads must be an int >= 1"):
        expand_mask(mask, 1, 0)


# --------------------------------------------------------------------------------------------
# Size checks against the live query count.


def test_check_attention_mask_training_mask_in_eval() -> None:
    mask = hybrid_attention_mask(300, 1500)
    with pytest.raises(ShapeError, match=r"built for 1800 queries but the decoder got 300") as info:
        check_attention_mask(mask, 300)
    assert "300 one-to-one + 1500 one-to-many" in str(info.value)
    assert "build it for the one-to-one queries only" in str(info.value)
    check_attention_mask(mask, 1800)


def test_check_attention_mask_too_small_and_named() -> None:
    with pytest.raises(ShapeError, match=r"self_attn_mask is built for 4 queries but the decoder got 9"):
        check_attention_mask(group_detr_mask(2, 2), 9, name="self_attn_mask")


def test_check_attention_mask_fully_blocked_rows() -> None:
    mask = hybrid_attention_mask(2, 2)
    mask[1] = True
    with pytest.raises(ShapeError, match=r"attn_mask\[1\] blocks every key"):
        check_attention_mask(mask, 4)
    with pytest.raises(ShapeError, match="blocks every key"):
        check_attention_mask(to_additive_mask(mask), 4)
    with pytest.raises(ShapeError, match="blocks every key"):
        check_attention_mask(expand_mask(mask, 2, 2), 4)


def test_check_attention_mask_bad_tensors() -> None:
    with pytest.raises(ShapeError, match="NaN"):
        check_attention_mask(torch.full((2, 2), float("nan")), 2)
    with pytest.raises(ShapeError, match=r"shape \(T, T\)"):
        check_attention_mask(torch.zeros(2, 3, dtype=torch.bool), 2)
    with pytest.raises(ShapeError, match="bool or floating"):
        check_attention_mask(torch.zeros(2, 2, dtype=torch.uint8), 2)
    with pytest.raises(ShapeError, match="num_queries"):
        check_attention_mask(torch.zeros(2, 2, dtype=torch.bool), -1)
    check_attention_mask(hybrid_attention_mask(0, 0), 0)


# --------------------------------------------------------------------------------------------
# Input validation.


@pytest.mark.parametrize("bad", [True, -1, 2.0, "3", None])
def test_sizes_must_be_non_negative_ints(bad: object) -> None:
    with pytest.raises(ShapeError, match=r"num_one2one must be an int in \[0, "):
        hybrid_attention_mask(bad, 3)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"num_one2many must be an int in \[0, "):
        hybrid_attention_mask(3, bad)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="group_size"):
        group_detr_mask(2, bad)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="num_dn_groups"):
        denoising_hybrid_mask(bad, 2, 3)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"QueryGroup\('q'\).size"):
        QueryGroup("q", bad)  # type: ignore[arg-type]


def test_layout_errors_name_the_problem() -> None:
    with pytest.raises(ShapeError, match="kind"):
        QueryGroup("q", 2, "denoise")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="used twice"):
        group_attention_mask([QueryGroup("a", 1), QueryGroup("a", 2)])
    groups = [QueryGroup("dn0", 2, "denoising"), QueryGroup("matching", 2)]
    with pytest.raises(ShapeError, match="'one2one', which is not a matching group"):
        group_attention_mask(groups, denoising_sees=(ONE2ONE,))
    with pytest.raises(ShapeError, match="not a matching group"):
        group_attention_mask(groups, denoising_sees="dn0")
    assert torch.equal(
        group_attention_mask(groups, denoising_sees="matching"), group_attention_mask(groups)
    )
    with pytest.raises(ShapeError, match="denoising_sees may name"):
        denoising_hybrid_mask(2, 2, 3, denoising_sees=("o2o",))


def test_dn_valid_errors() -> None:
    with pytest.raises(ShapeError, match=r"dn_valid must have shape \(4,\)"):
        denoising_hybrid_mask(2, 2, 3, dn_valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="dn_valid must be a bool tensor"):
        denoising_hybrid_mask(2, 2, 3, dn_valid=torch.ones(4))
    with pytest.raises(ShapeError, match="2 images but valid has 3"):
        mask_padded_queries(torch.zeros(2, 2, 2, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool))
