"""A batch name with a trailing newline (`a\\n`, which `$` in a regex would let through) is refused
everywhere: the landing sensor and `sync` skip its folder, every stage and every lake call refuses it
before touching a table, and a Dagster run of it fails without writing. Real folders, a real Dagster
instance, real Delta tables and the bundled model.
"""

import os

import dagster as dg
import pyarrow as pa
import pytest

from embedding_assets.definitions import ASSETS
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.ingest.sensors import landing_sensor, sync_partitions
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake, stages
from embedding_assets.lib.lake import tables
from embedding_assets_tests.conftest import materialize_assets, write_corpus

BAD = "a\n"
REFUSED = r"batch name 'a\\n' is not allowed"


def lake_files(root):
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names if "_locks" not in folder)


def test_the_sensor_and_sync_skip_a_folder_named_with_a_trailing_newline(dirs):
    write_corpus(os.path.join(dirs["landing"], BAD))
    write_corpus(os.path.join(dirs["landing"], "a"))
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        result = landing_sensor(dg.build_sensor_context(instance=instance, resources={"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"])}))
        assert [r.partition_key for r in result.run_requests] == ["a"]
        assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [["a"]]
        added, _, invalid = sync_partitions(instance, dirs["landing"])
        assert added == ["a"] and BAD in invalid
        assert instance.get_dynamic_partitions("batches") == ["a"]


def test_every_stage_and_lake_call_refuses_the_name_and_writes_nothing(dirs):
    write_corpus(os.path.join(dirs["landing"], BAD))
    write_corpus(os.path.join(dirs["landing"], "a"))
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", ["a"])
        materialize_assets(dirs, instance, "a")  # every table exists, with batch "a" in it
    root = dirs["lake"]
    before = lake_files(root)
    engine = ModelResource().engine()
    tokenizer = engine.tokenizer
    calls = {
        "ingest": lambda: stages.ingest_batch(dirs["landing"], root, BAD, 2**20, log=print),
        "chunks": lambda: stages.chunk_batch(root, BAD, tokenizer, None, 32, log=print),
        "buckets": lambda: stages.bucket_batch(root, BAD, tokenizer, log=print),
        "embeddings": lambda: stages.embed_batch(root, BAD, engine, commit_seconds=0.0, log=print),
        "documents": lambda: stages.document_vectors(root, BAD, log=print),
        "read": lambda: lake.read_partition(root, tables.RAW, BAD),
        "scan": lambda: list(lake.scan_partition(root, tables.EMBEDDINGS, BAD)),
        "replace": lambda: lake.replace_partition(root, tables.RAW, BAD, pa.table({"batch": [BAD]})),
        "append": lambda: lake.append(root, tables.STAGING, pa.table({"batch": [BAD]})),
        "delete": lambda: lake.delete_partition(root, tables.STAGING, BAD),
        "lock": lambda: lake.partition_lock(root, tables.EMBEDDINGS, BAD).__enter__(),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=REFUSED):
            call()
    assert lake_files(root) == before
    assert all(BAD not in lake.partitions(root, name) for name in (tables.RAW, tables.CHUNKS, tables.BUCKETS, tables.EMBEDDINGS, tables.DOCUMENTS))


def test_a_dagster_run_of_the_name_fails_before_writing(dirs):
    write_corpus(os.path.join(dirs["landing"], BAD))
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        try:
            instance.add_dynamic_partitions("batches", [BAD])
        except Exception as exc:  # Dagster itself may refuse the key: refused all the same
            assert "a\n" in str(exc) or "partition" in str(exc).lower()
            return
        resources = {"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"], commit_seconds=0.0), "model": ModelResource()}
        result = dg.materialize(ASSETS, partition_key=BAD, instance=instance, resources=resources, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["ingest"]  # the step that writes raw_documents and rejected_documents
    assert "is not allowed" in str(failures[0].event_specific_data.error)
    assert lake_files(dirs["lake"]) == []
