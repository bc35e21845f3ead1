"""Landing areas: listing batches (local and on moto's S3), downloading one, and the sensor on S3."""

from __future__ import annotations

import os
import time

import pytest

from embedding_assets.lib.storage import batch_states, download_batch_with_reasons


def _touch(path, content=b"x", mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_batch_states_local(tmp_path):
    landing = tmp_path / "landing"
    _touch(landing / "b1" / "a.txt", mtime=1_000)
    _touch(landing / "b1" / "sub" / "b.md", mtime=3_000)
    _touch(landing / "b1" / "_READY", b"", mtime=2_000)
    _touch(landing / "b2" / "x.jsonl", mtime=5_000)
    _touch(landing / "b2" / ".upload.tmp", mtime=9_000)  # in-flight upload: not a file to read, but fresh
    _touch(landing / "b2" / "_skip" / "y.txt", mtime=4_000)
    (landing / "empty").mkdir()
    _touch(landing / "_staging" / "z.txt")
    _touch(landing / ".hidden" / "z.txt")
    _touch(landing / "loose.txt")  # a file at the top is not a batch
    found, invalid = batch_states(str(landing))
    batches = {b.name: b for b in found}
    assert set(batches) == {"b1", "b2", "empty"} and invalid == {}
    assert (batches["b1"].ready_marker, batches["b1"].n_files) == (True, 2)
    assert (batches["b2"].ready_marker, batches["b2"].n_files) == (False, 1)
    assert batches["empty"].n_files == 0 and not batches["empty"].ready_marker
    assert [b.name for b in batch_states(f"file://{landing}")[0]] == ["b1", "b2", "empty"]
    assert batch_states(str(tmp_path / "missing")) == ([], {})
    with pytest.raises(ValueError, match="object-storage"):
        download_batch_with_reasons(str(landing), "b1", str(tmp_path / "dest"), 100)


def _put(client, bucket, key, body=b"hello"):
    client.put_object(Bucket=bucket, Key=key, Body=body)


def test_batch_states_on_s3(s3):
    client, bucket = s3
    before = time.time() - 5
    _put(client, bucket, "landing/b1/a.txt")
    _put(client, bucket, "landing/b1/sub/c.md")
    _put(client, bucket, "landing/b1/_READY", b"")
    _put(client, bucket, "landing/b2/x.jsonl", b'{"id": "1", "text": "hi"}\n')
    _put(client, bucket, "landing/b2/.partial-upload")
    _put(client, bucket, "landing/_staging/y.txt")
    _put(client, bucket, "landing/top-level-file.txt")
    _put(client, bucket, "elsewhere/b9/z.txt")
    batches = {b.name: b for b in batch_states(f"s3://{bucket}/landing/")[0]}
    assert set(batches) == {"b1", "b2"}
    assert batches["b1"].ready_marker and batches["b1"].n_files == 2
    assert not batches["b2"].ready_marker and batches["b2"].n_files == 1
    assert all(before <= b.last_change <= time.time() + 5 for b in batches.values())
    assert batch_states(f"s3://{bucket}/nothing-here") == ([], {})
    assert {b.name for b in batch_states(f"s3://{bucket}")[0]} == {"landing", "elsewhere"}  # the bucket root works too


def test_download_batch_from_s3_then_read_it(s3, tmp_path):
    from embedding_assets.lib.readers import Document, read_batch

    client, bucket = s3
    _put(client, bucket, "landing/b1/a.txt", b"first document")
    _put(client, bucket, "landing/b1/nested/b.md", b"# second\n\ndocument")
    _put(client, bucket, "landing/b1/big.txt", b"y" * 500)
    _put(client, bucket, "landing/b1/_READY", b"")
    _put(client, bucket, "landing/b1/.hidden", b"never copied")
    _put(client, bucket, "landing/b10/other.txt", b"another batch with a common prefix")
    dest = tmp_path / "b1"
    reasons = download_batch_with_reasons(f"s3://{bucket}/landing", "b1", str(dest), max_file_bytes=100)
    skipped = [name for name, _reason in reasons]
    assert skipped == ["big.txt"]
    reasons = download_batch_with_reasons(f"s3://{bucket}/landing", "b1", str(tmp_path / "again"), 100)
    assert reasons == [("big.txt", "file is larger than the 100-byte limit (500 bytes)")]
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["a.txt", "nested/b.md"]  # no marker, no hidden file, no other batch, no temp file
    docs = [item for item in read_batch(str(dest)) if isinstance(item, Document)]
    assert sorted(d.source for d in docs) == ["a.txt", "nested/b.md"]
    with pytest.raises(ValueError, match="one folder name"):
        download_batch_with_reasons(f"s3://{bucket}/landing", "../b1", str(tmp_path / "x"), 100)


def test_sensor_and_whole_chain_on_object_storage(s3, clean_env, tmp_path):
    """Landing and lake both on (moto's) S3: the sensor finds the batch, the chain writes Delta there."""
    import dagster as dg

    from embedding_assets.definitions import ASSETS
    from embedding_assets.defs.embedding.resources import ModelResource
    from embedding_assets.defs.resources import LakeResource
    from embedding_assets.defs.ingest.sensors import landing_sensor
    from embedding_assets.lib import lake as delta

    client, bucket = s3
    landing, lake_root = f"s3://{bucket}/landing", f"s3://{bucket}/lake"
    _put(client, bucket, "landing/b1/cats.txt", b"Cats are small domesticated felines that purr.")
    _put(client, bucket, "landing/b1/notes.md", b"# Notes\n\nDelta tables keep every version.")
    _put(client, bucket, "landing/b1/records.jsonl", b'{"id": "r1", "text": "A record about rivers."}\n{broken\n')
    _put(client, bucket, "landing/b1/_READY", b"")
    clean_env.setenv("EMBEDDING_LANDING", landing)
    clean_env.setenv("EMBEDDING_SETTLE_SECONDS", "3600")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        def tick():
            return landing_sensor(dg.build_sensor_context(instance=instance, resources={"lake": LakeResource()}))

        result = tick()
        assert [r.partition_key for r in result.run_requests] == ["b1"]
        instance.add_dynamic_partitions("batches", ["b1"])
        materialized = dg.materialize(
            ASSETS, partition_key="b1", instance=instance,
            resources={"lake": LakeResource(landing=landing, lake=lake_root), "model": ModelResource()},
        )
        assert materialized.success
        # Ingested as it is: no second run; an object deleted from the prefix: one run.
        assert isinstance(tick(), dg.SkipReason)
        client.delete_object(Bucket=bucket, Key="landing/b1/notes.md")
        assert [r.partition_key for r in tick().run_requests] == ["b1"]
    raw = delta.read_partition(lake_root, "raw_documents", "b1")
    assert sorted(raw.column("doc_id").to_pylist()) == ["cats.txt", "notes.md", "records.jsonl#r1"]
    assert delta.read_partition(lake_root, "rejected_documents", "b1").column("record").to_pylist() == ["line 2"]
    embedded = delta.read_partition(lake_root, "embeddings", "b1")
    chunks = delta.read_partition(lake_root, "chunks", "b1")
    assert sorted(embedded.column("chunk_id").to_pylist()) == sorted(chunks.column("chunk_id").to_pylist())
