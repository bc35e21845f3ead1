"""Checkpoints in final form: a run that stops part-way resumes from the data files it recorded,
publishes them as they are, embeds nothing twice, and leaves no file behind. Real Delta tables;
the encoder is a tiny deterministic one (a text's vector is a function of its token ids), which
can be told to fail after some batches (the crash)."""

import os
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from embedding_assets.lib import lake
from embedding_assets.lib.encoders.engine import EncoderEngine
from embedding_assets.lib.lake import tables
from embedding_assets.lib.lake.writer import partition_folder
from embedding_assets.lib.sinks.delta import DeltaSink
from embedding_assets.lib.stages import embed

BATCH = "b1"


class TextIdBackend:
    """Vector = (text number, length, 1, 0) from the ids [101, 1000 + text, ..., 102]; records every
    text it embeds; raises after `fail_after` batches when set."""

    name, device, precision, dimension, pooling, recipe = "text-id", "cpu", "fp32", 4, None, None

    def __init__(self, fail_after=None):
        self.fail_after, self.batches, self.seen = fail_after, 0, []

    def encode(self, batch):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("simulated: the node went away")
        self.batches += 1
        text = batch.input_ids[:, 1] - 1000
        self.seen += text.tolist()
        lengths = batch.attention_mask.sum(axis=1)
        return np.stack([text, lengths, np.ones(len(text)), np.zeros(len(text))], axis=1).astype(np.float32)


def _engine(backend, fingerprint="t/fp32"):
    return EncoderEngine(model="t", backends=[backend], tokenizer=SimpleNamespace(fingerprint="tok"), fingerprint=fingerprint)


def _buckets(root, chunk_texts, batch=BATCH):
    """length_buckets with one chunk per entry: chunk `c` has text `chunk_texts[c]` (a number; equal
    numbers are one text shared by several chunks), of 3 + text % 5 tokens."""
    n = len(chunk_texts)
    ids = [[101, 1000 + t] + [7] * (t % 5) + [102] for t in chunk_texts]
    order = np.argsort([len(i) for i in ids], kind="stable")  # length order, as the stage writes it
    table = pa.table({
        "batch": [batch] * n, "chunk_id": [f"{c:032x}" for c in order], "doc_id": [f"d{c % 7}" for c in order],
        "text_hash": [f"{chunk_texts[c]:064x}" for c in order], "position": list(range(n)), "bucket": [0] * n,
        "n_tokens": [len(ids[c]) for c in order], "input_ids": pa.array([ids[c] for c in order], pa.large_list(pa.int32())),
        "tokenizer": ["tok"] * n,
    }, schema=tables.LENGTH_BUCKETS)
    lake.replace_partition(root, tables.BUCKETS, batch, table)


def _published(root, batch=BATCH) -> pa.Table:
    return lake.read_partition(root, tables.EMBEDDINGS, batch)


def _assert_one_row_per_chunk(root, chunk_texts, fingerprint="t/fp32", batch=BATCH):
    out = _published(root, batch)
    chunk_ids = out.column("chunk_id").to_pylist()
    assert sorted(chunk_ids) == sorted(f"{c:032x}" for c in range(len(chunk_texts)))  # every chunk once, no other
    vectors = tables.arrow_to_vectors(out.column("embedding"))
    texts = [chunk_texts[int(c, 16)] for c in chunk_ids]
    np.testing.assert_array_equal(vectors[:, 0], np.array(texts, dtype=np.float32))  # each chunk has its text's vector
    assert out.column("text_hash").to_pylist() == [f"{t:064x}" for t in texts]
    assert pc.unique(out.column("model")).to_pylist() == [fingerprint]


def _files_in_folder(root, batch=BATCH) -> set[str]:
    folder = partition_folder(batch)
    path = os.path.join(root, tables.EMBEDDINGS, folder)
    return {f"{folder}/{name}" for name in os.listdir(path) if name.endswith(".parquet")} if os.path.isdir(path) else set()


def _referenced(root, batch=BATCH) -> set[str]:
    actions = pa.table(lake.open_table(root, tables.EMBEDDINGS).get_add_actions(flatten=True))
    return {unquote(p) for p in actions.filter(pc.equal(actions.column("partition.batch"), batch)).column("path").to_pylist()}


def _crash(root, chunk_texts, fail_after=3, **kwargs):
    """A run that checkpoints after every batch and fails after `fail_after` batches."""
    backend = TextIdBackend(fail_after=fail_after)
    with pytest.raises(RuntimeError, match="node went away"):
        embed.embed_batch(root, BATCH, _engine(backend), token_budget=48, commit_seconds=0.0, log=lambda _: None, **kwargs)
    parts = DeltaSink(root).parts(BATCH)
    assert parts, "the crash should come after some checkpoints"
    staged = set()
    for part in parts:
        for rows in DeltaSink(root).scan_part(part, ["text_hash"]):
            staged.update(int(h, 16) for h in rows.column("text_hash").to_pylist())
    return backend, parts, staged


@pytest.fixture
def keep_every_part(monkeypatch):
    """Checkpoint files of any size are published as they are (small ones are otherwise rewritten)."""
    monkeypatch.setattr(embed, "SMALL_PART_BYTES", 0)


def test_a_resumed_run_embeds_nothing_twice_and_publishes_the_checkpoint_files_as_they_are(tmp_path, keep_every_part):
    root = str(tmp_path)
    chunk_texts = [c % 150 for c in range(200)]  # 150 texts, 50 of them shared by two chunks
    _buckets(root, chunk_texts)
    first, parts, staged = _crash(root, chunk_texts)
    assert not lake.read_partition(root, tables.EMBEDDINGS, BATCH).num_rows  # nothing published yet
    assert {p.key for p in parts} == _files_in_folder(root)  # a failed run leaves only recorded files

    second = TextIdBackend()
    result = embed.embed_batch(root, BATCH, _engine(second), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert result["resumed_from_checkpoint"] == len(staged)
    assert not set(second.seen) & staged and len(second.seen) == len(set(second.seen))  # nothing recorded is embedded again
    assert set(second.seen) | staged == set(chunk_texts)
    _assert_one_row_per_chunk(root, chunk_texts)
    # The first run's files are in the partition as they were written; the records are gone; no stray file.
    assert {p.key for p in parts} <= _referenced(root)
    assert _files_in_folder(root) == _referenced(root)
    assert DeltaSink(root).parts(BATCH) == [] and not lake.read_partition(root, tables.STAGING, BATCH).num_rows


def test_checkpoint_files_are_written_once_and_the_swap_rewrites_no_vector_of_them(tmp_path, keep_every_part, monkeypatch):
    root = str(tmp_path)
    chunk_texts = list(range(120))
    _buckets(root, chunk_texts)
    written = []
    real_write = embed.lake.writer.PartitionFiles.write

    def counting_write(self, record_batch):
        if self.name == tables.EMBEDDINGS:
            written.append(record_batch.num_rows)
        return real_write(self, record_batch)

    monkeypatch.setattr(embed.lake.writer.PartitionFiles, "write", counting_write)
    embed.embed_batch(root, BATCH, _engine(TextIdBackend()), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert sum(written) == len(chunk_texts)  # each row written once (the checkpoints); the swap wrote none
    _assert_one_row_per_chunk(root, chunk_texts)


@pytest.mark.parametrize("batch", ["b1", "a=b"])  # a=b: its folder is batch=a%3Db, its log path batch=a%253Db
def test_a_crash_after_the_publish_commit_is_tidied_by_the_next_run(tmp_path, keep_every_part, monkeypatch, batch):
    root = str(tmp_path)
    chunk_texts = [c % 40 for c in range(60)]
    _buckets(root, chunk_texts, batch)

    def crash(self, batch):
        raise OSError("simulated: killed after the publish commit")

    monkeypatch.setattr(DeltaSink, "finish", crash)
    with pytest.raises(OSError, match="after the publish commit"):
        embed.embed_batch(root, batch, _engine(TextIdBackend()), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    monkeypatch.undo()
    monkeypatch.setattr(embed, "SMALL_PART_BYTES", 0)
    _assert_one_row_per_chunk(root, chunk_texts, batch=batch)  # readers already see the complete set
    records = lake.read_partition(root, tables.STAGING, batch, columns=["path"]).column("path").to_pylist()
    assert records and set(records) <= _referenced(root, batch)  # recorded and published
    version = lake.open_table(root, tables.EMBEDDINGS).version()

    again = TextIdBackend()
    result = embed.embed_batch(root, batch, _engine(again), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert result["skipped"] is True and not again.seen
    assert lake.open_table(root, tables.EMBEDDINGS).version() == version  # nothing published again
    assert not lake.read_partition(root, tables.STAGING, batch).num_rows  # the records are gone
    assert set(records) <= _files_in_folder(root, batch) == _referenced(root, batch)  # and no published file was deleted
    _assert_one_row_per_chunk(root, chunk_texts, batch=batch)


def test_chunks_that_changed_between_the_crash_and_the_resume(tmp_path, keep_every_part):
    root = str(tmp_path)
    chunk_texts = [c % 100 for c in range(130)]
    _buckets(root, chunk_texts)
    first, parts, staged = _crash(root, chunk_texts, fail_after=4)
    # Upstream changes: the chunks of two checkpointed texts go, a new chunk shares a checkpointed
    # text, and new texts arrive. Chunk numbers stay the chunk ids, so the kept ones keep theirs.
    gone = sorted(staged)[:2]
    shared = sorted(staged)[2]
    changed = [t if t not in gone else 500 + t for t in chunk_texts] + [shared, 900, 901]
    _buckets(root, changed)

    second = TextIdBackend()
    result = embed.embed_batch(root, BATCH, _engine(second), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert not set(second.seen) & (staged - set(gone))  # checkpointed texts still current are not embedded again
    assert set(second.seen) == set(changed) - staged
    assert result["embedded_texts"] == len(set(changed) - staged)
    _assert_one_row_per_chunk(root, changed)
    # The part files holding the gone chunks were rewritten, not published; every file in the folder is published.
    assert _files_in_folder(root) == _referenced(root)


def test_another_fingerprints_checkpoints_are_not_used_and_are_removed(tmp_path):
    root = str(tmp_path)
    chunk_texts = list(range(30))
    _buckets(root, chunk_texts)
    _crash(root, chunk_texts, fail_after=2)  # checkpoints under t/fp32
    other = TextIdBackend()
    result = embed.embed_batch(root, BATCH, _engine(other, "t/other"), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert result["resumed_from_checkpoint"] == 0 and sorted(other.seen) == chunk_texts
    _assert_one_row_per_chunk(root, chunk_texts, fingerprint="t/other")
    assert _files_in_folder(root) == _referenced(root)  # the other fingerprint's files are deleted
    assert not lake.read_partition(root, tables.STAGING, BATCH).num_rows


def test_a_recorded_file_that_went_missing_is_embedded_again(tmp_path):
    root = str(tmp_path)
    chunk_texts = list(range(60))
    _buckets(root, chunk_texts)
    _, parts, staged = _crash(root, chunk_texts)
    lost = parts[0]
    lost_texts = {int(h, 16) for rows in DeltaSink(root).scan_part(lost, ["text_hash"]) for h in rows.column("text_hash").to_pylist()}
    os.remove(os.path.join(root, tables.EMBEDDINGS, lost.key))
    again = TextIdBackend()
    embed.embed_batch(root, BATCH, _engine(again), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert lost_texts <= set(again.seen) and not set(again.seen) & (staged - lost_texts)
    _assert_one_row_per_chunk(root, chunk_texts)


def test_vacuum_keeps_a_runs_recorded_files_and_published_ones_and_removes_old_orphans(tmp_path, keep_every_part):
    root = str(tmp_path)
    _buckets(root, list(range(40)), batch="done")
    embed.embed_batch(root, "done", _engine(TextIdBackend()), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    chunk_texts = list(range(60))
    _buckets(root, chunk_texts)
    _, parts, _ = _crash(root, chunk_texts)  # a run in progress (or to resume): recorded files, named by no log
    published = _referenced(root, "done")
    orphan = os.path.join(root, tables.EMBEDDINGS, f"batch={BATCH}", "part-00000-orphan-c000.snappy.parquet")
    with open(os.path.join(root, tables.EMBEDDINGS, parts[0].key), "rb") as source, open(orphan, "wb") as out:
        out.write(source.read())
    old = os.path.getmtime(orphan) - 3 * 3600
    os.utime(orphan, (old, old))  # a file a killed run wrote and never recorded, three hours ago

    lake.vacuum(root, tables.EMBEDDINGS, retention_hours=1)  # the lake's vacuum: tombstones only
    assert all(os.path.exists(os.path.join(root, tables.EMBEDDINGS, p.key)) for p in parts) and os.path.exists(orphan)
    DeltaTable(lake.table_uri(root, tables.EMBEDDINGS)).vacuum(retention_hours=1, enforce_retention_duration=False, dry_run=False, full=True)
    assert all(os.path.exists(os.path.join(root, tables.EMBEDDINGS, p.key)) for p in parts)  # younger than the retention
    assert not os.path.exists(orphan)  # older: removed
    assert published <= _files_in_folder(root, "done")  # published files are never vacuumed

    embed.embed_batch(root, BATCH, _engine(TextIdBackend()), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    _assert_one_row_per_chunk(root, chunk_texts)


def test_a_checkpoint_file_deleted_before_the_publish_is_never_committed(tmp_path, keep_every_part, monkeypatch):
    """Another process deleting a kept file between the swap's check and the commit (only two runs of
    one batch at once could): the publish refuses, the table stays as it was, a rerun repairs."""
    root = str(tmp_path)
    chunk_texts = list(range(80))
    _buckets(root, chunk_texts)
    real_publish = DeltaSink.publish

    def delete_then_publish(self, batch, keep, rows):
        os.remove(os.path.join(root, tables.EMBEDDINGS, keep[0].key))
        return real_publish(self, batch, keep, rows)

    monkeypatch.setattr(DeltaSink, "publish", delete_then_publish)
    with pytest.raises(RuntimeError, match="disappeared before the publish"):
        embed.embed_batch(root, BATCH, _engine(TextIdBackend()), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    assert lake.read_partition(root, tables.EMBEDDINGS, BATCH).num_rows == 0  # nothing committed
    monkeypatch.setattr(DeltaSink, "publish", real_publish)
    embed.embed_batch(root, BATCH, _engine(TextIdBackend()), token_budget=48, commit_seconds=0.0, log=lambda _: None)
    _assert_one_row_per_chunk(root, chunk_texts)
    assert _files_in_folder(root) == _referenced(root)
