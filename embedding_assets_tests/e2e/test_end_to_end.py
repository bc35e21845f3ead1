"""The whole chain through a real Dagster instance, real Delta tables and the real bundled model."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import dagster as dg

from embedding_assets.defs.embedding import resources as resources_module
from embedding_assets.definitions import ASSETS
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets_tests.conftest import materialize_assets, write_corpus

BATCH = "b1"


def _materialize(dirs, instance, selection=None, batch=BATCH):
    return materialize_assets(dirs, instance, batch, selection)


def _metadata(result, asset):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def instance(dirs):
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        yield instance


def test_chain_writes_contract_tables_and_matches_sentence_transformers(dirs, instance):
    write_corpus(os.path.join(dirs["landing"], BATCH))
    result = _materialize(dirs, instance)

    raw = lake.read_partition(dirs["lake"], "raw_documents", BATCH)
    assert {"batch", "doc_id", "source", "text", "content_hash"} <= set(raw.column_names)
    assert set(raw.column("doc_id").to_pylist()) == {
        "guide/json.txt", "notes.md", "page.html", "unicode.rst", "compressed.txt.gz", "records.jsonl#r1", "records.jsonl#r2",
    }
    rejected = lake.read_partition(dirs["lake"], "rejected_documents", BATCH)
    assert rejected.num_rows == 1 and rejected.column("source")[0].as_py() == "records.jsonl"
    assert "JSON" in rejected.column("reason")[0].as_py()
    assert _metadata(result, "raw_documents")["rejected"] == 1

    chunks = lake.read_partition(dirs["lake"], "chunks", BATCH)
    assert {"batch", "doc_id", "chunk_id", "chunk_index", "text", "n_tokens", "char_start", "char_end"} <= set(chunks.column_names)
    assert pc.max(chunks.column("n_tokens")).as_py() <= 256
    buckets = lake.read_partition(dirs["lake"], "length_buckets", BATCH)
    assert {"batch", "chunk_id", "bucket", "n_tokens", "input_ids"} <= set(buckets.column_names)
    assert buckets.num_rows == chunks.num_rows

    emb = lake.read_partition(dirs["lake"], "embeddings", BATCH)
    assert {"batch", "doc_id", "chunk_id", "embedding", "model", "embedded_at"} <= set(emb.column_names)
    assert emb.schema.field("embedding").type.value_type == pa.float32()
    assert emb.num_rows == chunks.num_rows and len(set(emb.column("chunk_id").to_pylist())) == emb.num_rows
    assert pc.unique(emb.column("model")).to_pylist() == [_metadata(result, "embeddings")["model"]]
    for check in result.get_asset_check_evaluations():
        assert check.passed, check.check_name

    # The vectors are sentence-transformers' own, on the same chunk texts.
    from sentence_transformers import SentenceTransformer

    from embedding_assets.lib.encoders import resolve_model

    texts = dict(zip(chunks.column("chunk_id").to_pylist(), chunks.column("text").to_pylist()))
    ids = emb.column("chunk_id").to_pylist()
    reference = SentenceTransformer(resolve_model("bundled"), device="cpu").encode([texts[i] for i in ids], convert_to_numpy=True)
    ours = tables.arrow_to_vectors(emb.column("embedding"))
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999

    docs = lake.read_partition(dirs["lake"], "document_embeddings", BATCH)
    assert docs.num_rows == raw.num_rows


def test_rerun_embeds_only_what_changed(dirs, instance):
    batch_dir = os.path.join(dirs["landing"], BATCH)
    write_corpus(batch_dir)
    first = _metadata(_materialize(dirs, instance), "embeddings")
    assert first["embedded_texts"] > 0 and first["commits"] > 1  # checkpointed after every batch
    files = lake.open_table(dirs["lake"], "embeddings").file_uris()
    assert len(files) == 1  # the periodic commits end as one compact file

    again = _metadata(_materialize(dirs, instance, selection=["embeddings"]), "embeddings")
    assert again["embedded_texts"] == 0 and again["skipped"] is True

    before = lake.read_partition(dirs["lake"], "embeddings", BATCH)
    with open(os.path.join(batch_dir, "notes.md"), "a", encoding="utf-8") as handle:
        handle.write("\nA brand new closing paragraph about incremental re-embedding.\n")
    os.remove(os.path.join(batch_dir, "page.html"))
    changed = _metadata(_materialize(dirs, instance), "embeddings")
    assert 1 <= changed["embedded_texts"] <= 2
    assert changed["reused_vectors"] > 0

    after = lake.read_partition(dirs["lake"], "embeddings", BATCH)
    chunks = lake.read_partition(dirs["lake"], "chunks", BATCH)
    assert sorted(after.column("chunk_id").to_pylist()) == sorted(chunks.column("chunk_id").to_pylist())
    assert "page.html" not in after.column("doc_id").to_pylist()
    kept = set(before.column("chunk_id").to_pylist()) & set(after.column("chunk_id").to_pylist())
    old_at = dict(zip(before.column("chunk_id").to_pylist(), before.column("embedded_at").to_pylist()))
    new_at = dict(zip(after.column("chunk_id").to_pylist(), after.column("embedded_at").to_pylist()))
    assert kept and all(old_at[c] == new_at[c] for c in kept)  # unchanged chunks were not re-embedded
    assert not lake.read_partition(dirs["lake"], tables.STAGING, BATCH).num_rows  # checkpoints cleared


def test_partitions_are_isolated_and_model_loads_once(dirs, instance):
    instance.add_dynamic_partitions("batches", ["b2"])
    write_corpus(os.path.join(dirs["landing"], BATCH))
    write_corpus(os.path.join(dirs["landing"], "b2"), extra={"only_b2.txt": "This document exists only in the second batch."})
    _materialize(dirs, instance)
    first = lake.read_partition(dirs["lake"], "embeddings", BATCH)
    _materialize(dirs, instance, batch="b2")
    assert lake.read_partition(dirs["lake"], "embeddings", BATCH).equals(first)
    assert "only_b2.txt" in lake.read_partition(dirs["lake"], "raw_documents", "b2").column("doc_id").to_pylist()
    assert len(resources_module._ENGINES) == 1


def test_batch_with_only_bad_documents_fails_clearly(dirs, instance):
    batch_dir = os.path.join(dirs["landing"], BATCH)
    os.makedirs(batch_dir)
    open(os.path.join(batch_dir, "empty.txt"), "w").close()
    with open(os.path.join(batch_dir, "binary.txt"), "wb") as handle:
        handle.write(b"\x00\x01\x02" * 100)
    result = dg.materialize(
        ASSETS,
        selection=["raw_documents"],
        partition_key=BATCH,
        instance=instance,
        resources={"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"]), "model": ModelResource()},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert "every document was rejected" in message and "empty.txt" in message
    rejected = lake.read_partition(dirs["lake"], "rejected_documents", BATCH)
    assert sorted(rejected.column("source").to_pylist()) == ["binary.txt", "empty.txt"]
