"""Bounded-memory building blocks: key lookups, the streamed partition writer, the streamed swap."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from embedding_assets.lib import lake, pipeline, schemas
from embedding_assets.lib.chunking import text_hash
from embedding_assets.lib.keys import KeyIndex, claim_new, first_in_batch, fixed_width


# ---------------------------------------------------------------- keys

def test_fixed_width_is_zero_copy_for_equal_lengths_and_exact_otherwise():
    hashes = pa.array([text_hash(t) for t in ("a", "b", "c")])
    column = fixed_width(hashes.slice(1))
    assert column.dtype == np.dtype("S64") and [k.decode() for k in column] == hashes.slice(1).to_pylist()
    assert np.shares_memory(column, np.frombuffer(hashes.buffers()[2], dtype=np.uint8))
    mixed = fixed_width(pa.chunked_array([["ab", "c"], ["", "déf"]]))
    assert [k.decode() for k in mixed] == ["ab", "c", "", "déf"]
    with pytest.raises(ValueError, match="null"):
        fixed_width(pa.array(["a", None]))


def test_key_index_finds_every_row_of_a_key_and_rejects_unknown_keys():
    keys = pa.chunked_array([["k2", "k1", "k2", "k3"], ["k1", "k2"]])
    index = KeyIndex(keys)
    assert len(index) == 3 and index.rows == 6
    groups = index.group(pa.array(["k2", "nope", "k1", "k2", "k22", "k"]))
    assert groups[1] == groups[4] == groups[5] == -1
    assert groups[0] == groups[3] and groups[0] != groups[2] and groups[0] >= 0
    rows, owner = index.rows_of(groups[[0, 2]])
    assert sorted(rows[owner == 0].tolist()) == [0, 2, 5]  # every row holding k2
    assert sorted(rows[owner == 1].tolist()) == [1, 4]
    assert index.group(np.array([b"k3"])).tolist() == [index.group(pa.array(["k3"]))[0]]
    # A query key longer than any indexed key is simply absent.
    assert index.group(pa.array(["k3-and-much-longer"])).tolist() == [-1]
    assert KeyIndex(pa.array([], pa.string())).group(pa.array(["x"])).tolist() == [-1]


def test_first_in_batch_keeps_one_of_each():
    assert first_in_batch(np.array([3, 1, 3, -1, 1, 2])).tolist() == [True, True, False, True, False, True]
    assert first_in_batch(np.array([], dtype=np.int64)).tolist() == []


# ---------------------------------------------------------------- the streamed writer

SCHEMA = pa.schema([("batch", pa.string()), ("key", pa.string()), ("n", pa.int64()), ("v", pa.list_(pa.float32(), 8))])


def rows(batch, start, count):
    vectors = np.arange(start * 8, (start + count) * 8, dtype=np.float32)
    return pa.record_batch([
        pa.array([batch] * count), pa.array([f"k{i:06d}" for i in range(start, start + count)]),
        pa.array(range(start, start + count), pa.int64()), pa.FixedSizeListArray.from_arrays(vectors, 8),
    ], schema=SCHEMA)


def stream(batches):
    return pa.RecordBatchReader.from_batches(SCHEMA, iter(batches))


def data_files(root, name, batch):
    folder = os.path.join(root, name, f"batch={batch}")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet"))


def test_streamed_replace_writes_bounded_row_groups_rolls_files_and_commits_once(tmp_path, monkeypatch):
    root = str(tmp_path)
    lake.replace_partition(root, "t", "other", pa.table(rows("other", 0, 3)))
    monkeypatch.setattr(lake, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(lake, "TARGET_FILE_BYTES", 6_000)
    version = lake.open_table(root, "t").version()
    lake.replace_partition(root, "t", "b", stream([rows("b", i, 70) for i in range(0, 700, 70)]))
    table = lake.open_table(root, "t")
    assert table.version() == version + 1  # one commit for the whole stream
    got = lake.read_partition(root, "t", "b")
    assert sorted(got.column("n").to_pylist()) == list(range(700))
    assert schemas.arrow_to_vectors(got.column("v"))[got.column("n").to_numpy().argsort()][5].tolist() == list(range(40, 48))
    files = data_files(root, "t", "b")
    assert len(files) > 1  # rolled over at the target size
    for path in files:
        meta = pq.ParquetFile(path).metadata
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))
        assert "batch" not in pq.read_schema(path).names  # the partition column lives in the path
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    mine = [a for a in actions if a["path"].startswith("batch=b/")]
    assert sum(a["num_records"] for a in mine) == 700 and len(mine) == len(files)
    assert min(a["min.key"] for a in mine) == "k000000" and max(a["max.key"] for a in mine) == "k000699"
    assert min(a["min.n"] for a in mine) == 0 and all(a["null_count.key"] == 0 for a in mine)
    assert lake.read_partition(root, "t", "other").num_rows == 3  # other partitions untouched

    # Replacing again leaves only the new rows; an empty stream empties the partition.
    lake.replace_partition(root, "t", "b", stream([rows("b", 1000, 5)]))
    assert sorted(lake.read_partition(root, "t", "b").column("n").to_pylist()) == list(range(1000, 1005))
    lake.replace_partition(root, "t", "b", stream([]))
    assert lake.read_partition(root, "t", "b").num_rows == 0


def test_streamed_replace_that_fails_midway_changes_nothing_and_leaves_no_files(tmp_path, monkeypatch):
    root = str(tmp_path)
    monkeypatch.setattr(lake, "ROW_GROUP_ROWS", 50)
    monkeypatch.setattr(lake, "TARGET_FILE_BYTES", 3_000)
    lake.replace_partition(root, "t", "b", pa.table(rows("b", 0, 10)))
    before = data_files(root, "t", "b")
    version = lake.open_table(root, "t").version()

    def failing():
        yield rows("b", 100, 200)
        yield rows("b", 300, 200)
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        lake.replace_partition(root, "t", "b", stream(failing()))
    assert data_files(root, "t", "b") == before and lake.open_table(root, "t").version() == version
    assert sorted(lake.read_partition(root, "t", "b").column("n").to_pylist()) == list(range(10))

    with pytest.raises(ValueError, match="partition"):
        lake.replace_partition(root, "t", "b", stream([rows("b", 0, 5), rows("elsewhere", 5, 5)]))
    assert data_files(root, "t", "b") == before


def test_append_groups_rows_by_partition(tmp_path):
    root = str(tmp_path)
    mixed = pa.Table.from_batches([rows("x", 0, 4), rows("y", 4, 3)])
    lake.append(root, "t", mixed)
    lake.append(root, "t", pa.table(rows("x", 10, 2)))
    assert sorted(lake.read_partition(root, "t", "x").column("n").to_pylist()) == [0, 1, 2, 3, 10, 11]
    assert lake.read_partition(root, "t", "y").num_rows == 3
    with pytest.raises(ValueError, match="one partition"):
        lake.append(root, "t", mixed, app_transaction=("app", 1))


# ---------------------------------------------------------------- the swap

class FakeEngine(SimpleNamespace):
    pass


def _partition(root, batch, texts):
    """length_buckets rows for chunks with the given texts (identical texts share a hash)."""
    hashes = [text_hash(t) for t in texts]
    table = pa.table({
        "batch": [batch] * len(texts), "chunk_id": [f"c{i}" for i in range(len(texts))], "doc_id": [f"d{i % 3}" for i in range(len(texts))],
        "text_hash": hashes, "position": list(range(len(texts))), "bucket": [0] * len(texts), "n_tokens": [5] * len(texts),
        "input_ids": pa.array([[101, 7, 102]] * len(texts), pa.large_list(pa.int32())), "tokenizer": ["tok"] * len(texts),
    }, schema=schemas.LENGTH_BUCKETS)
    lake.replace_partition(root, pipeline.BUCKETS, batch, table)
    return hashes


def _stage(root, batch, hashes, fingerprint, value):
    vectors = np.full((len(hashes), 4), value, dtype=np.float32)
    table = pa.table({
        "batch": [batch] * len(hashes), "text_hash": hashes, "embedding": schemas.vectors_to_arrow(vectors, 4),
        "model": [fingerprint] * len(hashes), "embedded_at": pa.array([pipeline._now()] * len(hashes), schemas.TS),
    }, schema=schemas.staging_schema(4))
    lake.append(root, pipeline.STAGING, table)


def test_swap_streams_one_vector_per_chunk_and_prefers_staged_vectors(tmp_path):
    root, batch = str(tmp_path), "b1"
    texts = [f"text {i % 40}" for i in range(100)]  # 40 distinct texts over 100 chunks
    hashes = _partition(root, batch, texts)
    distinct = sorted(set(hashes))
    engine = FakeEngine(fingerprint="m/fp32", dimension=4)
    _stage(root, batch, distinct[:30], "m/fp32", 1.0)
    _stage(root, batch, distinct[:5], "other-model", 9.0)  # another fingerprint is never used
    # Rows already in the partition under the same fingerprint: reused, but staged vectors win.
    existing = pa.table({
        "batch": [batch] * 12, "doc_id": ["old"] * 12, "chunk_id": [f"old{i}" for i in range(12)], "text_hash": distinct[28:40],
        "embedding": schemas.vectors_to_arrow(np.full((12, 4), 2.0, dtype=np.float32), 4), "model": ["m/fp32"] * 12,
        "embedded_at": pa.array([pipeline._now()] * 12, schemas.TS),
    }, schema=schemas.embeddings_schema(4))
    lake.replace_partition(root, pipeline.EMBEDDINGS, batch, existing)

    plan, meta = pipeline.plan_embeddings(root, batch, "m/fp32", "tok")
    assert len(plan.to_embed) == 0 and plan.reusable == 40 and plan.stale_rows == 12 and not plan.up_to_date
    pipeline._swap_in(root, batch, engine, meta, slice_rows=7)

    out = lake.read_partition(root, pipeline.EMBEDDINGS, batch)
    assert sorted(out.column("chunk_id").to_pylist()) == sorted(f"c{i}" for i in range(100))  # stale rows gone
    first = schemas.arrow_to_vectors(out.column("embedding"))[:, 0]
    by_hash = dict(zip(out.column("text_hash").to_pylist(), first.tolist()))
    assert {by_hash[h] for h in distinct[:30]} == {1.0} and {by_hash[h] for h in distinct[30:]} == {2.0}
    assert pc.unique(out.column("model")).to_pylist() == ["m/fp32"]
    plan, _ = pipeline.plan_embeddings(root, batch, "m/fp32", "tok")
    assert plan.stale_rows == 0 and plan.reusable == 40


def test_swap_refuses_before_writing_when_a_text_has_no_vector(tmp_path):
    root, batch = str(tmp_path), "b1"
    hashes = _partition(root, batch, [f"t{i}" for i in range(10)])
    _stage(root, batch, hashes[:9], "m/fp32", 1.0)
    _, meta = pipeline.plan_embeddings(root, batch, "m/fp32", "tok")
    with pytest.raises(RuntimeError, match="1 texts of batch 'b1' have no vector"):
        pipeline._swap_in(root, batch, FakeEngine(fingerprint="m/fp32", dimension=4), meta)
    assert not lake.exists(root, pipeline.EMBEDDINGS)


def test_streaming_allocator_settings_apply_once_and_yield_to_the_environment():
    code = (
        "import os, pyarrow as pa\n"
        "from embedding_assets.lib import lake\n"
        "from embedding_assets.lib.allocators import configure_for_streaming\n"
        "print(os.environ['_RJEM_MALLOC_CONF'], configure_for_streaming(), configure_for_streaming())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "_RJEM_MALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["dirty_decay_ms:250,muzzy_decay_ms:0", "system", "system"]
    env.update(ARROW_DEFAULT_MEMORY_POOL="mimalloc", _RJEM_MALLOC_CONF="dirty_decay_ms:5")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == ["dirty_decay_ms:5", "mimalloc", "mimalloc"]


def test_claim_new_takes_each_key_once_across_batches():
    index = KeyIndex(pa.array(["a", "b", "c", "b"]))
    claimed = np.zeros(len(index), dtype=bool)
    picked, groups = claim_new(index, claimed, pa.array(["b", "x", "b", "a"]))
    assert picked.tolist() == [0, 3] and len(set(groups.tolist())) == 2
    picked, _ = claim_new(index, claimed, pa.array(["a", "c", "c"]))
    assert picked.tolist() == [1] and claimed.all()
