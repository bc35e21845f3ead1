"""Incremental re-embedding: an unchanged partition costs no embedding and no commit; a changed
document re-embeds only its chunks whose text changed, and its vanished chunks leave in the same
commit that brings the new ones. (benchmarks/incremental.py measures the time these save.)"""

import os

import dagster as dg
import pyarrow.compute as pc
import pytest

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets_tests.conftest import materialize_assets

BATCH = "inc"
TOPICS = ("rivers", "mountains", "harbors", "gardens", "engines", "markets", "letters", "planets", "winters", "windows")


def short_doc(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return f"Note {i} on {topic}. The {topic} of region {i} were surveyed in year {1900 + i}, and the report lists {i * 3} findings."


def long_doc(tail: str) -> str:
    """Four paragraphs of ~150 tokens each: several chunks, the last one holding `tail`."""
    paragraphs = [
        " ".join(f"Paragraph {p} sentence {s} describes how partition {p * 10 + s} keeps its vectors in one table." for s in range(11))
        for p in range(3)
    ]
    return "\n\n".join(paragraphs + [tail])


@pytest.fixture
def instance(dirs):
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        yield instance


def _materialize(dirs, instance, selection=None):
    result = materialize_assets(dirs, instance, BATCH, selection)
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("embeddings")]
    for check in result.get_asset_check_evaluations():
        assert check.passed, check.check_name
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _write(batch_dir: str, name: str, text: str) -> None:
    with open(os.path.join(batch_dir, name), "w", encoding="utf-8") as handle:
        handle.write(text)


def _versions(lake_root: str) -> tuple[int, int]:
    return lake.open_table(lake_root, tables.EMBEDDINGS).version(), lake.open_table(lake_root, tables.STAGING).version()


def _chunks(lake_root: str, doc_id: str | None = None):
    table = lake.read_partition(lake_root, tables.CHUNKS, BATCH, columns=["doc_id", "chunk_id", "text_hash"])
    return table if doc_id is None else table.filter(pc.equal(table.column("doc_id"), doc_id))


def test_unchanged_rerun_embeds_nothing_and_a_changed_document_only_its_changed_chunks(dirs, instance):
    batch_dir = os.path.join(dirs["landing"], BATCH)
    os.makedirs(batch_dir)
    for i in range(24):
        _write(batch_dir, f"note{i:02d}.txt", short_doc(i))
    _write(batch_dir, "long.md", long_doc("The closing paragraph says the survey is complete."))
    first = _materialize(dirs, instance)
    assert first["embedded_texts"] == first["distinct_texts"] > 24
    versions = _versions(dirs["lake"])
    before = lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH)

    # Unchanged: the whole chain again (every upstream partition rewritten with the same content), then the step alone.
    for selection in (None, ["embeddings"]):
        again = _materialize(dirs, instance, selection)
        assert again["embedded_texts"] == 0 and again["skipped"] is True and again["resumed_from_checkpoint"] == 0
        assert _versions(dirs["lake"]) == versions  # no new commit on the embeddings or staging table
    assert lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH).equals(before)

    # One document changes its last paragraph.
    old_long = _chunks(dirs["lake"], "long.md")
    assert old_long.num_rows >= 3
    old_hashes = set(_chunks(dirs["lake"]).column("text_hash").to_pylist())
    embeddings_version = versions[0]

    _write(batch_dir, "long.md", long_doc("The closing paragraph was rewritten: two regions still need a second visit."))
    changed = _materialize(dirs, instance)

    new_long = _chunks(dirs["lake"], "long.md")
    new_texts = set(new_long.column("text_hash").to_pylist()) - old_hashes
    assert 1 <= len(new_texts) < new_long.num_rows  # only the tail of the document changed
    assert changed["embedded_texts"] == len(new_texts)  # exactly those chunks, nothing else
    assert changed["reused_vectors"] == changed["distinct_texts"] - len(new_texts)

    # One commit swapped the partition: new chunks in, vanished ones out, the rest untouched.
    assert lake.open_table(dirs["lake"], tables.EMBEDDINGS).version() == embeddings_version + 1
    after = lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH)
    assert sorted(after.column("chunk_id").to_pylist()) == sorted(_chunks(dirs["lake"]).column("chunk_id").to_pylist())
    gone = set(old_long.column("chunk_id").to_pylist()) - set(new_long.column("chunk_id").to_pylist())
    assert gone and not gone & set(after.column("chunk_id").to_pylist())
    old_at = dict(zip(before.column("chunk_id").to_pylist(), before.column("embedded_at").to_pylist()))
    kept = [(c, t) for c, t in zip(after.column("chunk_id").to_pylist(), after.column("embedded_at").to_pylist()) if c in old_at]
    assert len(kept) == after.num_rows - len(new_texts) and all(old_at[c] == t for c, t in kept)
