"""A damaged or missing Delta log stops every read and write with an error naming the table and the
version; nothing is created anew over it. Real Delta tables, damaged on disk."""

import os
import shutil

import pyarrow as pa
import pytest

from embedding_assets.lib import lake


def table_with_two_batches(root):
    for batch in ("A", "B"):
        lake.replace_partition(root, "t", batch, pa.table({"batch": [batch] * 2, "n": [1, 2]}))
    return os.path.join(root, "t", "_delta_log")


def commit(log, version):
    return os.path.join(log, f"{version:020d}.json")


def every_operation(root):
    """Each lake call a stage makes, with the rows it would write."""
    data = pa.table({"batch": ["A"], "n": [9]})
    return {
        "replace": lambda: lake.replace_partition(root, "t", "A", data),
        "replace streamed": lambda: lake.replace_partition(root, "t", "A", pa.RecordBatchReader.from_batches(data.schema, data.to_batches())),
        "append": lambda: lake.append(root, "t", data),
        "read": lambda: lake.read_partition(root, "t", "A"),
        "scan": lambda: list(lake.scan_partition(root, "t", "A")),
        "delete": lambda: lake.delete_partition(root, "t", "A"),
        "exists": lambda: lake.exists(root, "t"),
        "partitions": lambda: lake.partitions(root, "t"),
    }


def assert_refused_and_untouched(root, log, match):
    before = sorted(os.listdir(log)) if os.path.isdir(log) else None
    for what, operation in every_operation(root).items():
        with pytest.raises(lake.DamagedTable, match=match):
            operation()
    after = sorted(os.listdir(log)) if os.path.isdir(log) else None
    assert after == before  # no commit landed, no log was created


@pytest.mark.parametrize("damage, problem", [
    (lambda data: b"", "is empty"),
    (lambda data: data[: len(data) // 2], "is not valid JSON"),
    (lambda data: b'{"add": garbage\n', "is not valid JSON"),
])
def test_a_damaged_latest_commit_is_refused_with_table_and_version(tmp_path, damage, problem):
    root = str(tmp_path)
    log = table_with_two_batches(root)
    path = commit(log, 1)
    good = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(damage(good))
    assert_refused_and_untouched(root, log, rf"table t is damaged: its commit of version 1 \(.*00000000000000000001\.json\) {problem}")
    with open(path, "wb") as handle:  # the fix the message names: restore the file
        handle.write(good)
    assert lake.read_partition(root, "t", "B").num_rows == 2


def test_an_empty_commit_under_later_ones_is_refused(tmp_path):
    root = str(tmp_path)
    log = table_with_two_batches(root)
    lake.replace_partition(root, "t", "C", pa.table({"batch": ["C"], "n": [1]}))
    open(commit(log, 1), "wb").close()
    assert_refused_and_untouched(root, log, r"table t is damaged: its commit of version 1 .* is empty \(0 bytes\)")


def test_data_without_a_log_is_never_taken_for_a_missing_table(tmp_path):
    root = str(tmp_path)
    log = table_with_two_batches(root)
    shutil.move(log, str(tmp_path / "saved_log"))
    message = r"table t is damaged: .*t holds data \(batch=A, batch=B\) but no readable Delta log .* Restore _delta_log"
    assert_refused_and_untouched(root, log, message)
    assert not os.path.exists(log)
    os.makedirs(log)  # an empty log folder is no better
    assert_refused_and_untouched(root, log, message)
    os.rmdir(log)
    shutil.move(str(tmp_path / "saved_log"), log)
    assert lake.partitions(root, "t") == ["A", "B"]


def test_a_folder_without_data_or_log_is_still_a_table_to_create(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "t"))
    assert not lake.exists(root, "t")
    lake.replace_partition(root, "t", "A", pa.table({"batch": ["A"], "n": [1]}))
    assert lake.read_partition(root, "t", "A").num_rows == 1


# ---------------------------------------------------------------- on object storage (moto's S3 server)

from embedding_assets_tests.lib.storage.conftest import clean_env, s3, s3_endpoint  # noqa: E402,F401  (fixtures)


def test_damaged_and_missing_logs_on_s3_are_refused(s3):
    client, bucket = s3
    root = f"s3://{bucket}/lake"
    for batch in ("a=b", "B"):
        lake.replace_partition(root, "t", batch, pa.RecordBatchReader.from_batches(
            pa.schema([("batch", pa.string()), ("n", pa.int64())]), pa.table({"batch": [batch], "n": [1]}).to_batches()))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/t/")["Contents"]]
    assert any(k.startswith("lake/t/batch=a%3Db/") for k in keys)  # the folder delta-rs names
    latest = f"lake/t/_delta_log/{lake.open_table(root, 't').version():020d}.json"
    good = client.get_object(Bucket=bucket, Key=latest)["Body"].read()
    client.put_object(Bucket=bucket, Key=latest, Body=b"")
    with pytest.raises(lake.DamagedTable, match=r"table t is damaged: its commit of version 2 .* is empty"):
        lake.replace_partition(root, "t", "B", pa.table({"batch": ["B"], "n": [2]}))
    client.put_object(Bucket=bucket, Key=latest, Body=good)
    assert lake.read_partition(root, "t", "a=b").num_rows == 1
    for key in keys:
        if "/_delta_log/" in key:
            client.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(lake.DamagedTable, match=r"holds data \(batch=B, batch=a%3Db\) but no readable Delta log"):
        lake.replace_partition(root, "t", "B", pa.table({"batch": ["B"], "n": [2]}))


def test_only_commits_after_the_last_checkpoint_are_replayed_and_checked(tmp_path):
    root = str(tmp_path)
    log = table_with_two_batches(root)
    table = lake.open_table(root, "t")
    table.create_checkpoint()
    checkpoint = table.version()
    lake.replace_partition(root, "t", "C", pa.table({"batch": ["C"], "n": [1]}))
    lake.replace_partition(root, "t", "D", pa.table({"batch": ["D"], "n": [1]}))
    open(commit(log, checkpoint - 1), "wb").close()  # before the checkpoint: delta-rs never reads it again
    assert lake.partitions(root, "t") == ["A", "B", "C", "D"]
    open(commit(log, checkpoint + 1), "wb").close()  # after it, under the latest: refused
    assert_refused_and_untouched(root, log, rf"its commit of version {checkpoint + 1} .* is empty \(0 bytes\)")
