"""The landing sensor against a real instance: no redundant runs, every kind of change, skip reasons, a small cursor.

raw_documents is really materialized (the instance then holds the landing fingerprint as its data
version), and the sensor is evaluated as the daemon would, with `build_sensor_context`.
"""

import json
import os
import shutil

import pytest

import dagster as dg

from embedding_assets.defs.ingest import sensors
from embedding_assets.defs.ingest.sensors import landing_sensor
from embedding_assets.defs.resources import LakeResource
from embedding_assets_tests.conftest import materialize_assets, write_corpus

OLD = 1_000_000_000  # 2001-09-09: an mtime long before any ingest


def _tick(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource()})
    result = landing_sensor(context)
    cursor = result.cursor if isinstance(result, dg.SensorResult) else context.cursor
    return result, cursor


def _requested(result) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests) if isinstance(result, dg.SensorResult) else []


def _ingest(dirs, instance, batch):
    """What a run of the batch does first: materialize raw_documents (records the fingerprint)."""
    materialize_assets(dirs, instance, batch, selection=["raw_documents", "rejected_documents"])


@pytest.fixture
def instance(dirs):
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        yield instance


def test_an_ingested_batch_is_not_requested_again(dirs, instance):
    write_corpus(os.path.join(dirs["landing"], "demo"))
    instance.add_dynamic_partitions("batches", ["demo"])
    _ingest(dirs, instance, "demo")
    # The first tick ever (empty cursor), as after `make demo`: nothing to run.
    result, cursor = _tick(instance)
    assert isinstance(result, dg.SkipReason), _requested(result)
    assert "1 up to date" in result.skip_message
    # Materializing it again anyway keeps it up to date (same fingerprint, same data version).
    _ingest(dirs, instance, "demo")
    again, _ = _tick(instance, cursor)
    assert isinstance(again, dg.SkipReason)


@pytest.mark.parametrize("change", ["delete", "add_with_old_mtime", "rewrite_keeping_mtime", "rename", "delete_all"])
def test_every_change_to_an_ingested_batch_requests_one_run(dirs, instance, change):
    batch_dir = os.path.join(dirs["landing"], "b1")
    write_corpus(batch_dir)
    instance.add_dynamic_partitions("batches", ["b1"])
    _ingest(dirs, instance, "b1")
    result, cursor = _tick(instance)
    assert isinstance(result, dg.SkipReason)

    notes = os.path.join(batch_dir, "notes.md")
    if change == "delete":
        os.remove(notes)
    elif change == "add_with_old_mtime":  # cp -p, mv, rsync -a, tar x: the new file looks old
        moved = os.path.join(dirs["landing"], "incoming.txt")
        with open(moved, "w") as handle:
            handle.write("A document moved in with an old modification time.")
        os.utime(moved, (OLD, OLD))
        shutil.move(moved, os.path.join(batch_dir, "moved_in.txt"))
        assert os.stat(os.path.join(batch_dir, "moved_in.txt")).st_mtime == OLD
    elif change == "rewrite_keeping_mtime":  # same size, same mtime, different text
        before = os.stat(notes)
        text = open(notes, encoding="utf-8").read()
        with open(notes, "w", encoding="utf-8") as handle:
            handle.write(text.replace("Delta", "DELTA"))
        os.utime(notes, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(notes)
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    elif change == "rename":
        os.rename(notes, os.path.join(batch_dir, "renamed.md"))
    elif change == "delete_all":  # the emptied batch: its rows must go downstream
        for entry in os.listdir(batch_dir):
            path = os.path.join(batch_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    changed, cursor = _tick(instance, cursor)
    assert _requested(changed) == ["b1"], getattr(changed, "skip_message", None)
    assert not changed.dynamic_partitions_requests  # already a partition
    [request] = changed.run_requests
    assert request.run_key.startswith("b1@") and request.tags[sensors.FINGERPRINT_TAG] in request.run_key
    # The next tick, while that run has not ingested yet: no second run for the same state.
    waiting, _ = _tick(instance, cursor)
    assert isinstance(waiting, dg.SkipReason) and "not yet ingested: b1" in waiting.skip_message
    if change != "delete_all":
        _ingest(dirs, instance, "b1")
        done, _ = _tick(instance, cursor)
        assert isinstance(done, dg.SkipReason) and "1 up to date" in done.skip_message


def test_skip_reasons_name_each_waiting_or_invalid_folder_and_log_bad_names_once(dirs, instance, monkeypatch):
    from dagster._core.definitions.instigation_logger import InstigationLogger

    warned: list[str] = []
    monkeypatch.setattr(InstigationLogger, "warning", lambda self, msg, *a, **k: warned.append(str(msg)))
    monkeypatch.setenv("EMBEDDING_SETTLE_SECONDS", "3600")
    write_corpus(os.path.join(dirs["landing"], "fresh"))
    os.makedirs(os.path.join(dirs["landing"], "empty"))
    os.makedirs(os.path.join(dirs["landing"], "bad name!"))
    open(os.path.join(dirs["landing"], "bad name!", "x.txt"), "w").write("text")
    os.makedirs(os.path.join(dirs["landing"], "trailing\n"))
    outside = os.path.join(os.path.dirname(dirs["landing"]), "outside")
    write_corpus(outside)
    os.symlink(outside, os.path.join(dirs["landing"], "linked"))

    first, cursor = _tick(instance)
    assert isinstance(first, dg.SkipReason)
    message = first.skip_message
    assert "still settling" in message and "fresh (" in message and "_READY" in message
    assert "no readable files yet: empty" in message
    assert "'bad name!' (not a valid batch name" in message
    assert "'trailing\\n' (not a valid batch name" in message
    assert "'linked' (a link" in message
    assert len([w for w in warned if "is skipped" in w]) == 3, warned

    warned.clear()
    second, cursor_after = _tick(instance, cursor)
    assert isinstance(second, dg.SkipReason) and "'bad name!'" in second.skip_message  # still named
    assert not warned  # but logged only once
    assert cursor_after == cursor


def test_cursor_stays_small_whatever_the_number_of_batches(dirs, instance, monkeypatch):
    for i in range(6):
        write_corpus(os.path.join(dirs["landing"], f"b{i}"))
    monkeypatch.setattr(sensors, "MAX_PENDING", 4)
    result, cursor = _tick(instance)
    assert len(result.run_requests) == 6
    state = json.loads(cursor)
    assert len(state["pending"]) == 4  # bounded; run keys still stop duplicate runs for the rest
    instance.add_dynamic_partitions("batches", [f"b{i}" for i in range(6)])
    for i in range(6):
        _ingest(dirs, instance, f"b{i}")
    after, cursor = _tick(instance, cursor)
    assert isinstance(after, dg.SkipReason) and "6 up to date" in after.skip_message
    assert json.loads(cursor)["pending"] == {}  # what ran is read from the instance, not kept here
    assert len(cursor) < 100


def test_a_deleted_file_runs_the_batch_and_its_rows_leave_every_table(dirs, instance):
    from embedding_assets.lib import lake

    batch_dir = os.path.join(dirs["landing"], "b1")
    write_corpus(batch_dir)
    instance.add_dynamic_partitions("batches", ["b1"])
    materialize_assets(dirs, instance, "b1")
    tables = ["raw_documents", "chunks", "length_buckets", "embeddings", "document_embeddings"]
    for table in tables:
        assert "notes.md" in lake.read_partition(dirs["lake"], table, "b1", columns=["doc_id"]).column("doc_id").to_pylist()
    assert isinstance(_tick(instance)[0], dg.SkipReason)

    os.remove(os.path.join(batch_dir, "notes.md"))
    result, _ = _tick(instance)
    assert _requested(result) == ["b1"]
    materialize_assets(dirs, instance, "b1")  # what the requested run does
    for table in tables:
        doc_ids = lake.read_partition(dirs["lake"], table, "b1", columns=["doc_id"]).column("doc_id").to_pylist()
        assert doc_ids and "notes.md" not in doc_ids, table
    assert isinstance(_tick(instance)[0], dg.SkipReason)


def test_a_batch_whose_files_are_all_deleted_ends_with_every_table_empty(dirs, instance):
    """Issue: an emptied batch left searchable vectors. Now the sensor runs it and every partition empties in order."""
    from embedding_assets.lib import lake

    batch_dir = os.path.join(dirs["landing"], "b1")
    write_corpus(batch_dir)
    instance.add_dynamic_partitions("batches", ["b1"])
    materialize_assets(dirs, instance, "b1")
    tables = ["raw_documents", "rejected_documents", "chunks", "length_buckets", "embeddings", "document_embeddings"]
    assert all(lake.read_partition(dirs["lake"], t, "b1").num_rows for t in tables)

    for folder, _, names in os.walk(batch_dir):
        for name in names:
            os.remove(os.path.join(folder, name))
    result, _ = _tick(instance)
    assert _requested(result) == ["b1"]
    run = materialize_assets(dirs, instance, "b1")  # what the requested run does
    for table in tables:
        assert lake.read_partition(dirs["lake"], table, "b1").num_rows == 0, table
    assert all(check.passed for check in run.get_asset_check_evaluations())
    assert isinstance(_tick(instance)[0], dg.SkipReason)
