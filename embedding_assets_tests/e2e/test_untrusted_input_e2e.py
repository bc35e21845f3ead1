"""Issue 13's input-side cases as real runs: Dagster materializes the real chain (bundled model, real
Delta tables) over landed batches built here.

- #3, #6, #7, #12a in one batch: colliding-looking doc_ids stay two documents with two vectors, a
  document over EMBEDDING_MAX_DOCUMENT_CHARS, a JSON line too long for one, a parquet dictionary
  bomb and a file that changes while read are rejected with their reasons, and the run is green.
- #4: a batch folder that is a symbolic link out of the landing area fails the step, nothing read.
- #11 (ingest half): a batch whose files were all deleted empties raw_documents and
  rejected_documents and the step succeeds saying so; one whose files are all rejected leaves
  raw_documents as it was and fails.
- #12b: an object store whose error echoes the access key id (moto, authentication on): the key id
  is nowhere in the run's event log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dagster as dg

from embedding_assets.definitions import ASSETS
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets.lib.readers import batch as batch_walk

BATCH = "untrusted"
CAP = 4 << 20


def _write(path: str, data: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def _materialize(dirs, instance, selection=None, lake_root=None, raise_on_error=True):
    return dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=BATCH,
        instance=instance,
        resources={
            "lake": LakeResource(landing=dirs["landing"], lake=lake_root or dirs["lake"], max_file_bytes=CAP, commit_seconds=0.0, max_reject_fraction=1.0),
            "model": ModelResource(),
        },
        raise_on_error=raise_on_error,
    )


def _metadata(result, key: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _failure(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(failure.event_specific_data.error)


@pytest.fixture
def instance(dirs):
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        yield instance


def test_hostile_documents_are_rejected_and_lookalike_ids_stay_apart(dirs, instance, monkeypatch):
    batch_dir = os.path.join(dirs["landing"], BATCH)
    monkeypatch.setenv("EMBEDDING_MAX_DOCUMENT_CHARS", "2000")
    # #7: before, both records had the doc_id 'a.jsonl#b.jsonl#1' and one vector was their mix.
    _write(f"{batch_dir}/a.jsonl", json.dumps({"id": "b.jsonl#1", "text": "Cats sleep most of the day in the warm sun."}) + "\n")
    _write(f"{batch_dir}/a.jsonl#b.jsonl", json.dumps({"id": 1, "text": "Compilers translate source code into machine instructions."}) + "\n")
    _write(f"{batch_dir}/good.txt", "Vector search finds documents by meaning rather than by exact words.")
    # #3: a document over the per-document cap, and a JSON line too long to hold one.
    _write(f"{batch_dir}/long.txt", "word " * 1000)
    _write(f"{batch_dir}/records.jsonl", "\n".join([
        json.dumps({"id": "ok", "text": "A short record about rivers."}),
        json.dumps({"id": "huge", "text": "x" * 100_000}),
        json.dumps({"id": "over", "text": "y" * 3_000}),
    ]) + "\n")
    # #6: 1,000 rows repeating four 100 KB dictionary values: a 400 KB file decoding to 100 MB.
    values = ["".join(np.random.default_rng(i).choice(list("abcdefgh "), 100_000)) for i in range(4)]
    bomb = pa.table({"id": list(range(1000)), "text": pa.array([values[i % 4] for i in range(1000)]).dictionary_encode()})
    os.makedirs(batch_dir, exist_ok=True)
    pq.write_table(bomb, f"{batch_dir}/bomb.parquet", dictionary_pagesize_limit=8 << 20)
    # #12a: a file rewritten in place each time it is read.
    torn = f"{batch_dir}/torn.txt"
    _write(torn, "first version of a file being written " * 100)
    real_read = batch_walk._read_content

    def read_then_rewrite(raw, cap, compressed):
        data = real_read(raw, cap, compressed)
        if os.path.samestat(os.fstat(raw.fileno()), os.stat(torn)):
            with open(torn, "ab") as handle:
                handle.write(b" more")
        return data

    monkeypatch.setattr(batch_walk, "_read_content", read_then_rewrite)

    result = _materialize(dirs, instance)
    assert result.success
    root = dirs["lake"]
    raw = lake.read_partition(root, tables.RAW, BATCH)
    assert sorted(raw.column("doc_id").to_pylist()) == ["a.jsonl#b.jsonl#1", "a.jsonl%23b.jsonl#1", "good.txt", "records.jsonl#ok"]
    rejected = lake.read_partition(root, tables.REJECTED, BATCH)
    reasons = {(s, r): why for s, r, why in zip(*(rejected.column(c).to_pylist() for c in ("source", "record", "reason")))}
    assert set(reasons) == {
        ("long.txt", None), ("records.jsonl", "line 2"), ("records.jsonl", "over"), ("bomb.parquet", None), ("torn.txt", None),
    }
    assert reasons[("long.txt", None)].startswith("document is 5,000 characters, over the 2,000-character cap per document")
    assert reasons[("records.jsonl", "line 2")].startswith("record is 100,026 bytes on one line, over the 77,536-byte limit")
    assert reasons[("records.jsonl", "over")].startswith("document is 3,000 characters, over the 2,000-character cap")
    assert reasons[("bomb.parquet", None)].startswith("decoded size of columns 'id' and 'text' exceeds the 4 MiB cap")
    assert reasons[("torn.txt", None)].startswith("file changed while it was read")
    assert _metadata(result, "raw_documents")["max_document_chars"] == 2000

    documents = lake.read_partition(root, tables.DOCUMENTS, BATCH)
    assert sorted(documents.column("doc_id").to_pylist()) == sorted(raw.column("doc_id").to_pylist())
    vectors = dict(zip(documents.column("doc_id").to_pylist(), tables.arrow_to_vectors(documents.column("embedding"))))
    assert float(np.dot(vectors["a.jsonl#b.jsonl#1"], vectors["a.jsonl%23b.jsonl#1"])) < 0.9  # two meanings, two vectors
    for check in result.get_asset_check_evaluations():  # mostly hostile on purpose: the reject threshold is 1
        assert check.passed, check.check_name


def test_a_batch_folder_that_links_out_of_the_landing_area_fails_the_step(dirs, instance, tmp_path):
    outside = tmp_path / "outside"
    _write(str(outside / "secret.txt"), "a file outside the landing area")
    os.symlink(outside, os.path.join(dirs["landing"], BATCH), target_is_directory=True)
    result = _materialize(dirs, instance, selection=["raw_documents"], raise_on_error=False)
    assert not result.success
    assert "batch folder is a symbolic link" in _failure(result)
    assert not lake.exists(dirs["lake"], tables.RAW)


def test_emptied_and_all_rejected_batches_end_consistent_at_ingest(dirs, instance):
    batch_dir = os.path.join(dirs["landing"], BATCH)
    _write(f"{batch_dir}/a.txt", "Delta tables keep every version of the data.")
    _write(f"{batch_dir}/empty.txt", "")
    assert _materialize(dirs, instance, selection=["raw_documents"]).success
    before = lake.read_partition(dirs["lake"], tables.RAW, BATCH)

    # every file rejected: raw_documents keeps its rows, rejected_documents says why, the step fails
    _write(f"{batch_dir}/a.txt", "")
    result = _materialize(dirs, instance, selection=["raw_documents"], raise_on_error=False)
    assert not result.success and "raw_documents is unchanged" in _failure(result)
    assert lake.read_partition(dirs["lake"], tables.RAW, BATCH).equals(before)
    assert sorted(lake.read_partition(dirs["lake"], tables.REJECTED, BATCH).column("source").to_pylist()) == ["a.txt", "empty.txt"]

    # every file deleted (only the marker left): both partitions emptied, the step succeeds
    for name in ("a.txt", "empty.txt"):
        os.unlink(f"{batch_dir}/{name}")
    _write(f"{batch_dir}/_READY", "")
    result = _materialize(dirs, instance, selection=["raw_documents"])
    assert _metadata(result, "raw_documents")["empty"] is True
    assert lake.read_partition(dirs["lake"], tables.RAW, BATCH).num_rows == 0
    assert lake.read_partition(dirs["lake"], tables.REJECTED, BATCH).num_rows == 0


def test_storage_errors_leave_no_credential_in_the_event_log(dirs, instance, monkeypatch):
    pytest.importorskip("moto.server")
    from embedding_assets_tests.lib.storage.conftest import _ALL_CLOUD_VARS
    from embedding_assets_tests.lib.storage.test_ingest_redaction import _ECHO_MOTO

    child = subprocess.Popen([sys.executable, "-c", _ECHO_MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = child.stdout.readline().strip()
        if not port.isdigit():
            pytest.skip(f"moto's S3 server did not start: {child.stderr.read()[-500:]}")
        for name in _ALL_CLOUD_VARS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAECHOEDKEYID00003")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-very-secret-value-456")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        _write(os.path.join(dirs["landing"], BATCH, "a.txt"), "hello")
        _write(os.path.join(dirs["landing"], BATCH, "empty.txt"), "")
        result = _materialize(dirs, instance, selection=["raw_documents"], lake_root="s3://bucket/lake", raise_on_error=False)
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert not result.success
    assert "InvalidAccessKeyId" in _failure(result)
    records = instance.all_logs(result.run_id)
    text = "\n".join(json.dumps(dg.serialize_value(r)) if hasattr(dg, "serialize_value") else repr(r) for r in records)
    assert "InvalidAccessKeyId" in text
    assert "AKIAECHOEDKEYID00003" not in text and "a-very-secret-value-456" not in text
