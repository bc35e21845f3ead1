"""The embeddings feed path: flat-buffer batching gives exactly the batches (and so the vectors) of the
per-row implementation it replaced, on random partitions in a real Delta lake."""

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.lib import lake
from embedding_assets.lib.batching import Batch, collate, plan_batches
from embedding_assets.lib.keys import KeyIndex, claim_new
from embedding_assets.lib.lake import tables
from embedding_assets.lib.stages import embed


def _reference_plan(lengths, token_budget, max_rows=1024, max_padding=0.05):
    """The row-by-row planner as it was before the vectorized one (kept verbatim as the reference)."""
    slices, start, longest, real = [], 0, 0, 0
    worth_a_batch = token_budget // 8
    for i, length in enumerate(list(lengths)):
        candidate = max(longest, length)
        rows = i - start + 1
        padded = candidate * rows
        too_padded = padded and 1 - (real + length) / padded > max_padding and longest * (rows - 1) >= worth_a_batch
        if i > start and (padded > token_budget or rows > max_rows or too_padded):
            slices.append((start, i))
            start, candidate, real = i, length, 0
        longest = candidate
        real += length
    if start < len(lengths):
        slices.append((start, len(lengths)))
    return slices


def _reference_collate(token_ids, rows, keys):
    width = max((len(t) for t in token_ids), default=0)
    ids = np.zeros((len(token_ids), width), dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for i, t in enumerate(token_ids):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
    return Batch(rows=rows, input_ids=ids, attention_mask=mask, keys=keys)


def _reference_pending(lake_root, batch, hashes, token_budget, window_rows):
    """The per-row `_pending_batches` before the flat-buffer rewrite (lists of arrays, Python keys)."""
    wanted = KeyIndex(hashes)
    taken = np.zeros(len(wanted), dtype=bool)
    pending_ids, pending_keys = [], []

    def flush(final):
        order = np.argsort([len(t) for t in pending_ids], kind="stable")
        ids = [pending_ids[i] for i in order]
        keys = np.array([pending_keys[i] for i in order], dtype=object)
        slices = _reference_plan([len(t) for t in ids], token_budget)
        keep_from = len(ids) if final or len(slices) < 2 else slices[-1][0]
        for start, end in slices:
            if start >= keep_from:
                break
            yield _reference_collate(ids[start:end], np.arange(start, end), keys[start:end])
        pending_ids[:] = ids[keep_from:]
        pending_keys[:] = list(keys[keep_from:])

    for record_batch in lake.scan_partition(lake_root, tables.BUCKETS, batch, columns=["text_hash", "input_ids"], batch_size=4096):
        picked, _ = claim_new(wanted, taken, record_batch.column("text_hash"))
        if not len(picked):
            continue
        column = record_batch.column("input_ids")
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
        pending_ids.extend(values[offsets[i]:offsets[i + 1]] for i in picked)
        pending_keys.extend(record_batch.column("text_hash").take(pa.array(picked)).to_pylist())
        if len(pending_ids) >= window_rows:
            yield from flush(False)
    if pending_ids:
        yield from flush(True)


def _random_partition(root, batch, rng, n, distinct):
    texts = rng.integers(0, distinct, size=n)  # chunks sharing a text share its hash and its ids
    lengths_of_text = rng.integers(1, 300, size=distinct)
    ids_of_text = [rng.integers(1000, 30000, size=int(k)).astype(np.int32) for k in lengths_of_text]
    order = np.argsort(lengths_of_text[texts], kind="stable")  # length order, as length_buckets writes it
    texts = texts[order]
    hashes = [f"{t:064x}" for t in texts]
    table = pa.table({
        "batch": [batch] * n, "chunk_id": [f"{i:032x}" for i in range(n)], "doc_id": [f"d{i % 7}" for i in range(n)],
        "text_hash": hashes, "position": np.arange(n), "bucket": np.zeros(n, np.int32), "n_tokens": lengths_of_text[texts].astype(np.int32),
        "input_ids": pa.array([ids_of_text[t] for t in texts], pa.large_list(pa.int32())), "tokenizer": ["tok"] * n,
    }, schema=tables.LENGTH_BUCKETS)
    lake.replace_partition(root, tables.BUCKETS, batch, table)
    return sorted(set(hashes))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flat_buffer_batches_equal_the_per_row_batches(tmp_path, seed):
    rng = np.random.default_rng(seed)
    root, batch = str(tmp_path), "b1"
    distinct = _random_partition(root, batch, rng, n=int(rng.integers(3000, 9000)), distinct=int(rng.integers(500, 4000)))
    wanted = pa.array([h for h in distinct if rng.random() < 0.8])  # some texts already have a vector
    budget = int(rng.choice([512, 2048, 8192]))
    window = int(rng.choice([300, 1000, 8192]))
    meta, _ = embed._read_chunk_meta(root, batch, "tok")
    pending = np.zeros(len(meta.texts), dtype=bool)
    pending[meta.texts.group(wanted)] = True
    # Batch keys are the texts' group numbers in the partition's text index; one window size throughout, as the reference has.
    new = list(embed._pending_batches(root, batch, meta, pending, budget, window_rows=window, first_window_rows=window))
    old = list(_reference_pending(root, batch, wanted, budget, window))
    assert len(new) == len(old) > 1
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.attention_mask, b.attention_mask)
        assert a.input_ids.dtype == b.input_ids.dtype == np.int64
        assert [k.decode() for k in meta.texts.keys(a.keys).tolist()] == list(b.keys)
    embedded = [k for b in new for k in meta.texts.keys(b.keys).tolist()]
    assert sorted(embedded) == sorted(h.encode() for h in wanted.to_pylist())  # each wanted text once


def test_a_short_first_window_changes_no_text_and_no_id(tmp_path):
    rng = np.random.default_rng(7)
    root, batch = str(tmp_path), "b1"
    distinct = _random_partition(root, batch, rng, n=5000, distinct=3000)
    meta, _ = embed._read_chunk_meta(root, batch, "tok")
    pending = np.ones(len(meta.texts), dtype=bool)
    early = list(embed._pending_batches(root, batch, meta, pending, 2048, window_rows=4096, first_window_rows=256))
    whole = list(embed._pending_batches(root, batch, meta, pending, 2048, window_rows=4096, first_window_rows=4096))
    assert len(early[0].rows) and sum(b.real_tokens for b in early) == sum(b.real_tokens for b in whole)

    def ids_by_text(batches):
        return {int(k): tuple(ids[mask.astype(bool)]) for b in batches for k, ids, mask in zip(b.keys, b.input_ids, b.attention_mask)}

    assert ids_by_text(early) == ids_by_text(whole) and len(ids_by_text(early)) == len(distinct)


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_plan_equals_the_row_by_row_plan(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        lengths = np.sort(rng.integers(1, int(rng.choice([8, 64, 512, 3000])), size=int(rng.integers(0, 3000))))
        budget = int(rng.choice([64, 1000, 8192, 32768]))
        max_rows = int(rng.choice([4, 100, 1024]))
        assert plan_batches(lengths, budget, max_rows=max_rows) == _reference_plan(lengths.tolist(), budget, max_rows=max_rows)


def test_flat_collate_equals_the_per_row_collate():
    rng = np.random.default_rng(3)
    arrays = [rng.integers(1, 99, size=int(k)) for k in rng.integers(0, 40, size=200)]
    a, b = collate(arrays), _reference_collate(arrays, np.arange(200), None)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.attention_mask, b.attention_mask)


def test_a_partition_rewritten_after_the_plan_is_read_by_key_not_by_row(tmp_path):
    """Rows are matched to texts by their position in the plan's read, checked against their key:
    length_buckets rewritten in another order in between gives the same texts and ids."""
    rng = np.random.default_rng(11)
    root, batch = str(tmp_path), "b1"
    _random_partition(root, batch, rng, n=3000, distinct=1200)
    meta, _ = embed._read_chunk_meta(root, batch, "tok")
    pending = np.ones(len(meta.texts), dtype=bool)
    before = list(embed._pending_batches(root, batch, meta, pending, 2048))
    table = lake.read_partition(root, tables.BUCKETS, batch)
    shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
    lake.replace_partition(root, tables.BUCKETS, batch, shuffled)
    after = list(embed._pending_batches(root, batch, meta, pending, 2048))

    def ids_by_text(batches):
        return {int(k): tuple(ids[mask.astype(bool)]) for b in batches for k, ids, mask in zip(b.keys, b.input_ids, b.attention_mask)}

    assert ids_by_text(after) == ids_by_text(before) and len(ids_by_text(before)) == len(meta.texts)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("group_elements", [50, 96 * 1024])  # many groups of batches, or one
def test_collating_many_slices_at_once_equals_collating_each(seed, group_elements, monkeypatch):
    from embedding_assets.lib import batching
    from embedding_assets.lib.batching import collate_flat, collate_slices

    monkeypatch.setattr(batching, "GROUP_ELEMENTS", group_elements)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    lengths = rng.integers(0, 40, size=n)  # any order, empty rows too
    values = rng.integers(1, 30000, size=int(lengths.sum()) + 50).astype(np.int32)
    starts = rng.integers(0, 50, size=n) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cuts = np.unique(np.concatenate(([0, n], rng.integers(0, n, size=int(rng.integers(0, 20))))))
    slices = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    keys = np.arange(n) * 7
    together = list(collate_slices(values, lengths, starts, slices, keys=keys))
    assert len(together) == len(slices)
    for batch, (a, b) in zip(together, slices):
        alone = collate_flat(values, lengths[a:b], rows=np.arange(a, b), keys=keys[a:b], starts=starts[a:b])
        np.testing.assert_array_equal(batch.rows, alone.rows)
        np.testing.assert_array_equal(batch.input_ids, alone.input_ids)
        np.testing.assert_array_equal(batch.attention_mask, alone.attention_mask)
        np.testing.assert_array_equal(batch.keys, alone.keys)
        assert batch.input_ids.dtype == batch.attention_mask.dtype == np.int64
