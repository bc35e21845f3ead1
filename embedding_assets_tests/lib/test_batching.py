"""Tests for embedding_assets.lib.batching: token-budget batch plans, collation and padding math."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding_assets.lib.batching import (
    DEFAULT_TOKEN_BUDGET,
    MAX_ROWS_PER_BATCH,
    Batch,
    collate,
    iter_batches,
    padded_fraction,
    plan_batches,
)

SETTINGS = settings(max_examples=60, deadline=None)


def padded_size(lengths, start: int, end: int) -> int:
    return (end - start) * int(max(lengths[start:end]))


def check_plan(lengths, slices, budget: int, max_rows: int) -> None:
    """Contiguous, non-empty, in order, covering every row; within budget and row cap."""
    lengths = list(lengths)
    if not lengths:
        assert slices == []
        return
    assert slices[0][0] == 0 and slices[-1][1] == len(lengths)
    for (a, b), (c, _) in zip(slices, slices[1:]):
        assert b == c, "slices must be contiguous"
    for a, b in slices:
        assert 0 <= a < b <= len(lengths), "slices must be non-empty"
        assert b - a <= max_rows
        if b - a > 1:
            assert padded_size(lengths, a, b) <= budget, f"batch {a}:{b} pads to {padded_size(lengths, a, b)} > {budget}"
    covered = [i for a, b in slices for i in range(a, b)]
    assert covered == list(range(len(lengths)))


# ---------------------------------------------------------------------------------------------
# plan_batches


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 600), max_size=3000).map(sorted),
    budget=st.integers(1, 20_000),
    max_rows=st.integers(1, 2000),
    as_array=st.booleans(),
)
def test_plan_over_sorted_lengths_is_contiguous_and_within_budget(lengths, budget, max_rows, as_array):
    slices = plan_batches(np.array(lengths, dtype=np.int64) if as_array else lengths, budget, max_rows=max_rows)
    check_plan(lengths, slices, budget, max_rows)


@SETTINGS
@given(lengths=st.lists(st.integers(0, 600), max_size=2000), budget=st.integers(1, 20_000), max_rows=st.integers(1, 300))
def test_plan_over_unsorted_lengths_still_keeps_order_and_budget(lengths, budget, max_rows):
    # The planner never reorders: rows are written back in place, so order is kept even unsorted.
    check_plan(lengths, plan_batches(lengths, budget, max_rows=max_rows), budget, max_rows)


@SETTINGS
@given(lengths=st.lists(st.integers(1, 600), min_size=1, max_size=3000).map(sorted), budget=st.integers(1, 20_000), max_rows=st.integers(1, 2000))
def test_plan_batches_are_as_large_as_budget_and_rows_allow_when_padding_is_ignored(lengths, budget, max_rows):
    """With the padding rule switched off, every batch but the last stops only because the next
    row would break the budget or the row cap (no batch is needlessly small)."""
    slices = plan_batches(lengths, budget, max_rows=max_rows, max_padding=1.0)
    check_plan(lengths, slices, budget, max_rows)
    for a, b in slices[:-1]:
        grown = padded_size(lengths, a, b + 1)
        assert grown > budget or b + 1 - a > max_rows, f"batch {a}:{b} could have taken row {b}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_padding_over_a_realistic_sorted_distribution_is_small(seed):
    rng = np.random.default_rng(seed)
    lengths = np.sort(np.clip(np.round(rng.lognormal(np.log(40), 0.9, 20_000)), 5, 256).astype(np.int64))
    assert lengths.min() == 5 and lengths.max() == 256
    slices = plan_batches(lengths, DEFAULT_TOKEN_BUDGET)
    check_plan(lengths, slices, DEFAULT_TOKEN_BUDGET, MAX_ROWS_PER_BATCH)
    real = int(lengths.sum())
    padded = sum(padded_size(lengths, a, b) for a, b in slices)
    assert padded_fraction(real, padded) <= 0.05
    # And the batches stay big: the device is kept busy with far fewer calls than rows.
    assert len(slices) < len(lengths) / 50
    assert np.mean([padded_size(lengths, a, b) for a, b in slices]) > DEFAULT_TOKEN_BUDGET / 2


def test_padding_rule_splits_big_batches_that_would_pad_too_much():
    # 200 rows of 10 then one of 40: the 40 would pad the batch by ~75% (far over 5%), and the
    # batch is past an eighth of the budget, so it ends before the long row.
    lengths = [10] * 200 + [40]
    assert plan_batches(lengths, 10_000) == [(0, 200), (200, 201)]
    # Without the rule the long row joins (201 * 40 = 8040 <= 10000).
    assert plan_batches(lengths, 10_000, max_padding=1.0) == [(0, 201)]
    # A small batch (under an eighth of the budget) is not split for padding.
    assert plan_batches([10] * 5 + [40], 10_000) == [(0, 6)]


def test_rows_longer_than_the_budget_get_batches_of_their_own():
    lengths = [3, 4, 5000, 6000, 7]
    slices = plan_batches(lengths, 100)
    assert slices == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert plan_batches([5000], 100) == [(0, 1)]


def test_row_cap_and_edge_cases():
    assert plan_batches([], 8192) == []
    assert plan_batches(np.array([], dtype=np.int64), 8192) == []
    assert plan_batches([1] * 10, 8192, max_rows=3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert plan_batches([1] * 2500, 10**9) == [(0, 1024), (1024, 2048), (2048, 2500)]
    assert plan_batches([0, 0, 0], 1) == [(0, 3)]
    assert plan_batches([2, 2, 2, 2], 8) == [(0, 4)]  # exactly on budget fits
    assert plan_batches([2, 2, 2, 2, 2], 8) == [(0, 4), (4, 5)]


# ---------------------------------------------------------------------------------------------
# collate and iter_batches

token_arrays = st.lists(
    st.lists(st.integers(1, 30_000), max_size=40).map(lambda ids: np.array(ids, dtype=np.int64)),
    min_size=1,
    max_size=30,
)


@SETTINGS
@given(arrays=token_arrays, pad_id=st.sampled_from([0, 1, -1, 103]))
def test_collate_pads_with_pad_id_and_masks_real_tokens(arrays, pad_id):
    batch = collate(arrays, pad_id=pad_id)
    width = max(len(a) for a in arrays)
    assert batch.input_ids.shape == batch.attention_mask.shape == (len(arrays), width)
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
    for i, a in enumerate(arrays):
        assert np.array_equal(batch.input_ids[i, : len(a)], a)
        assert np.all(batch.input_ids[i, len(a) :] == pad_id)
        assert np.all(batch.attention_mask[i, : len(a)] == 1)
        assert np.all(batch.attention_mask[i, len(a) :] == 0)
    assert set(np.unique(batch.attention_mask)) <= {0, 1}
    assert batch.real_tokens == sum(len(a) for a in arrays)
    assert batch.padded_tokens == len(arrays) * width
    assert np.array_equal(batch.rows, np.arange(len(arrays)))
    assert batch.keys is None


def test_collate_mask_does_not_depend_on_token_values():
    # A real token equal to the pad id is still real: the mask comes from lengths, not values.
    batch = collate([np.array([0, 0, 5]), np.array([0])], pad_id=0)
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.input_ids.tolist() == [[0, 0, 5], [0, 0, 0]]


def test_collate_carries_rows_and_keys():
    arrays = [np.array([101, 7, 102]), np.array([101, 102])]
    rows = np.array([40, 41])
    keys = np.array(["hash-a", "hash-b"])
    batch = collate(arrays, rows=rows, keys=keys)
    assert isinstance(batch, Batch)
    assert batch.rows.tolist() == [40, 41]
    assert batch.keys is not None and batch.keys.tolist() == ["hash-a", "hash-b"]
    # Keys follow their rows through a split of the batch.
    for i in range(len(arrays)):
        part = collate(arrays[i : i + 1], rows=batch.rows[i : i + 1], keys=batch.keys[i : i + 1])
        assert part.keys.tolist() == [keys[i]] and part.rows.tolist() == [rows[i]]
        assert part.input_ids[0].tolist() == arrays[i].tolist()


def test_collate_of_empty_rows():
    batch = collate([np.array([], dtype=np.int64), np.array([], dtype=np.int64)])
    assert batch.input_ids.shape == (2, 0)
    assert batch.real_tokens == 0 and batch.padded_tokens == 0
    empty = collate([])
    assert empty.input_ids.shape == (0, 0) and empty.rows.tolist() == []


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 300), max_size=400).map(sorted),
    budget=st.integers(1, 5000),
    seed=st.integers(0, 2**32 - 1),
)
def test_iter_batches_rows_map_back_to_inputs(lengths, budget, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(1, 30_000, size=n, dtype=np.int64) for n in lengths]
    seen: list[int] = []
    for batch in iter_batches(arrays, budget):
        assert len(batch.rows) >= 1
        assert batch.padded_tokens <= budget or len(batch.rows) == 1
        assert len(batch.rows) <= MAX_ROWS_PER_BATCH
        for k, row in enumerate(batch.rows.tolist()):
            n = len(arrays[row])
            assert np.array_equal(batch.input_ids[k, :n], arrays[row])
            assert int(batch.attention_mask[k].sum()) == n
            assert np.all(batch.input_ids[k, n:] == 0)
        seen.extend(batch.rows.tolist())
    assert seen == list(range(len(arrays)))


def test_iter_batches_over_nothing():
    assert list(iter_batches([], 8192)) == []


# ---------------------------------------------------------------------------------------------
# padded_fraction


def test_padded_fraction_math():
    assert padded_fraction(0, 0) == 0.0
    assert padded_fraction(100, 100) == 0.0
    assert padded_fraction(75, 100) == pytest.approx(0.25)
    assert padded_fraction(0, 10) == 1.0
    assert padded_fraction(1, 3) == pytest.approx(2 / 3)


@SETTINGS
@given(arrays=token_arrays)
def test_padded_fraction_of_a_batch_is_its_share_of_pad_positions(arrays):
    batch = collate(arrays)
    fraction = padded_fraction(batch.real_tokens, batch.padded_tokens)
    if batch.padded_tokens == 0:
        assert fraction == 0.0
    else:
        assert 0.0 <= fraction < 1.0 or batch.real_tokens == 0
        assert fraction == pytest.approx(float((batch.attention_mask == 0).sum()) / batch.padded_tokens)
