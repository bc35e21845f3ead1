"""The embeddings stage's plan and its streamed swap of one vector per chunk into the partition."""

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedding_assets.lib import lake
from embedding_assets.lib.chunking import text_hash
from embedding_assets.lib.lake import tables
from embedding_assets.lib.sinks.delta import DeltaSink
from embedding_assets.lib.stages import embed
from embedding_assets.lib.stages.common import utc_now


class FakeEngine(SimpleNamespace):
    pass


def _partition(root, batch, texts):
    """length_buckets rows for chunks with the given texts (identical texts share a hash)."""
    hashes = [text_hash(t) for t in texts]
    table = pa.table({
        "batch": [batch] * len(texts), "chunk_id": [f"c{i}" for i in range(len(texts))], "doc_id": [f"d{i % 3}" for i in range(len(texts))],
        "text_hash": hashes, "position": list(range(len(texts))), "bucket": [0] * len(texts), "n_tokens": [5] * len(texts),
        "input_ids": pa.array([[101, 7, 102]] * len(texts), pa.large_list(pa.int32())), "tokenizer": ["tok"] * len(texts),
    }, schema=tables.LENGTH_BUCKETS)
    lake.replace_partition(root, tables.BUCKETS, batch, table)
    return hashes


def _stage(root, batch, chunk_hashes, hashes, fingerprint, value, version=1):
    """A checkpoint part written the way the stage writes one: a row for every chunk (`c<i>` has
    text hash `chunk_hashes[i]`) whose text is in `hashes`."""
    rows = [i for i, h in enumerate(chunk_hashes) if h in set(hashes)]
    vectors = np.full((len(rows), 4), value, dtype=np.float32)
    sink = DeltaSink(root)
    writer = sink.checkpoint_writer(batch, tables.embeddings_schema(4))
    writer.write(pa.record_batch({
        "doc_id": [f"d{i % 3}" for i in rows], "chunk_id": [f"c{i}" for i in rows], "text_hash": [chunk_hashes[i] for i in rows],
        "embedding": tables.vectors_to_arrow(vectors, 4), "model": [fingerprint] * len(rows),
        "embedded_at": pa.array([utc_now()] * len(rows), tables.TS),
    }))
    assert writer.commit((f"test/{batch}/{fingerprint}", version)) == len(rows)


def test_swap_streams_one_vector_per_chunk_and_prefers_staged_vectors(tmp_path):
    root, batch = str(tmp_path), "b1"
    texts = [f"text {i % 40}" for i in range(100)]  # 40 distinct texts over 100 chunks
    hashes = _partition(root, batch, texts)
    distinct = sorted(set(hashes))
    engine = FakeEngine(fingerprint="m/fp32", dimension=4)
    _stage(root, batch, hashes, distinct[:30], "m/fp32", 1.0)
    _stage(root, batch, hashes, distinct[:5], "other-model", 9.0)  # another fingerprint is never used
    # Rows already in the partition under the same fingerprint: reused, but staged vectors win.
    existing = pa.table({
        "batch": [batch] * 12, "doc_id": ["old"] * 12, "chunk_id": [f"old{i}" for i in range(12)], "text_hash": distinct[28:40],
        "embedding": tables.vectors_to_arrow(np.full((12, 4), 2.0, dtype=np.float32), 4), "model": ["m/fp32"] * 12,
        "embedded_at": pa.array([utc_now()] * 12, tables.TS),
    }, schema=tables.embeddings_schema(4))
    lake.replace_partition(root, tables.EMBEDDINGS, batch, existing)

    plan, meta = embed.plan_embeddings(root, batch, "m/fp32", "tok")
    assert len(plan.to_embed) == 0 and plan.reusable == 40 and plan.stale_rows == 12 and not plan.up_to_date
    embed._swap_in(root, batch, engine, meta, slice_rows=7)

    out = lake.read_partition(root, tables.EMBEDDINGS, batch)
    assert sorted(out.column("chunk_id").to_pylist()) == sorted(f"c{i}" for i in range(100))  # stale rows gone
    first = tables.arrow_to_vectors(out.column("embedding"))[:, 0]
    by_hash = dict(zip(out.column("text_hash").to_pylist(), first.tolist()))
    assert {by_hash[h] for h in distinct[:30]} == {1.0} and {by_hash[h] for h in distinct[30:]} == {2.0}
    assert pc.unique(out.column("model")).to_pylist() == ["m/fp32"]
    plan, _ = embed.plan_embeddings(root, batch, "m/fp32", "tok")
    assert plan.stale_rows == 0 and plan.reusable == 40


def test_swap_refuses_before_writing_when_a_text_has_no_vector(tmp_path):
    root, batch = str(tmp_path), "b1"
    hashes = _partition(root, batch, [f"t{i}" for i in range(10)])
    _stage(root, batch, hashes, hashes[:9], "m/fp32", 1.0)
    _, meta = embed.plan_embeddings(root, batch, "m/fp32", "tok")
    # The table exists (checkpoint files stand in its folder) but has never been committed to.
    version = lake.open_table(root, tables.EMBEDDINGS).version()
    with pytest.raises(RuntimeError, match="1 texts of batch 'b1' have no vector"):
        embed._swap_in(root, batch, FakeEngine(fingerprint="m/fp32", dimension=4), meta)
    assert lake.open_table(root, tables.EMBEDDINGS).version() == version
    assert lake.read_partition(root, tables.EMBEDDINGS, batch).num_rows == 0
