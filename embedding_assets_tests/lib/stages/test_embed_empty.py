"""An emptied batch: when length_buckets holds no rows for it, the embeddings step empties the
embeddings partition (and its checkpoints) and succeeds; a length_buckets table that was never
written still raises. Real Delta tables; the encoder is a tiny deterministic one (no model needed
for what is tested: which rows exist)."""

from types import SimpleNamespace

import os

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.lib import lake
from embedding_assets.lib.encoders.engine import EncoderEngine
from embedding_assets.lib.lake import tables
from embedding_assets.lib.sinks.delta import DeltaSink
from embedding_assets.lib.stages import embed


class FirstTokenBackend:
    name, device, precision, dimension, pooling, recipe = "first-token", "cpu", "fp32", 4, None, None

    def encode(self, batch):
        return np.repeat(batch.input_ids[:, :1].astype(np.float32), 4, axis=1)


def _engine():
    return EncoderEngine(model="t", backends=[FirstTokenBackend()], tokenizer=SimpleNamespace(fingerprint="tok"), fingerprint="t/fp32")


def _buckets(root, batch, n):
    table = pa.table({
        "batch": [batch] * n, "chunk_id": [f"{i:032x}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)],
        "text_hash": [f"{i:064x}" for i in range(n)], "position": list(range(n)), "bucket": [0] * n, "n_tokens": [3] * n,
        "input_ids": pa.array([[101, 1000 + i, 102] for i in range(n)], pa.large_list(pa.int32())), "tokenizer": ["tok"] * n,
    }, schema=tables.LENGTH_BUCKETS)
    lake.replace_partition(root, tables.BUCKETS, batch, table)


def _rows(root, name, batch):
    table = lake.read_partition(root, name, batch, columns=["batch"])
    return 0 if table is None else table.num_rows


def test_an_emptied_batch_empties_its_embeddings_partition_and_succeeds(tmp_path):
    root = str(tmp_path)
    _buckets(root, "b1", 20)
    _buckets(root, "b2", 5)
    engine = _engine()
    assert embed.embed_batch(root, "b1", engine, log=lambda _: None)["embedded_texts"] == 20
    embed.embed_batch(root, "b2", engine, log=lambda _: None)
    # A checkpoint left by an interrupted run of the batch, then the batch is emptied upstream.
    writer = DeltaSink(root).checkpoint_writer("b1", tables.embeddings_schema(4))
    writer.write(pa.record_batch({
        "doc_id": ["d"], "chunk_id": ["c"], "text_hash": ["f" * 64], "embedding": tables.vectors_to_arrow(np.ones((1, 4), np.float32), 4),
        "model": ["t/fp32"], "embedded_at": pa.array([None], tables.TS),
    }))
    writer.commit(("test", 1))
    [part] = DeltaSink(root).parts("b1")
    lake.replace_partition(root, tables.BUCKETS, "b1", tables.LENGTH_BUCKETS.empty_table())
    assert _rows(root, tables.BUCKETS, "b1") == 0

    result = embed.embed_batch(root, "b1", engine, log=lambda _: None)
    assert result["emptied"] is True and result["chunks"] == 0 and result["embedded_texts"] == 0
    assert result["removed_rows"] == 20
    assert _rows(root, tables.EMBEDDINGS, "b1") == 0 and _rows(root, tables.STAGING, "b1") == 0
    assert not os.path.exists(os.path.join(root, tables.EMBEDDINGS, part.key))  # the unpublished checkpoint file is gone
    assert _rows(root, tables.EMBEDDINGS, "b2") == 5  # other batches untouched
    again = embed.embed_batch(root, "b1", engine, log=lambda _: None)  # idempotent
    assert again["emptied"] is True and _rows(root, tables.EMBEDDINGS, "b1") == 0


def test_a_batch_with_rows_is_not_reported_emptied(tmp_path):
    root = str(tmp_path)
    _buckets(root, "b1", 3)
    result = embed.embed_batch(root, "b1", _engine(), log=lambda _: None)
    assert result["emptied"] is False and result["embedded_texts"] == 3


def test_a_length_buckets_table_never_written_still_raises(tmp_path):
    with pytest.raises(RuntimeError, match="length_buckets does not exist .* materialize length_buckets for batch 'b1' first"):
        embed.embed_batch(str(tmp_path), "b1", _engine(), log=lambda _: None)
