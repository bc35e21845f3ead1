"""Partition folders exactly as delta-rs writes them, every column in the Delta schema's type, and the
migration of tables written before: real Delta tables, read back by polars and deltalake."""

import os
import urllib.parse

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction

from embedding_assets.lib import lake
from embedding_assets.lib.lake import migrate, writer

SCHEMA = pa.schema([("batch", pa.string()), ("n", pa.int64()), ("text", pa.large_string()), ("v", pa.list_(pa.float32(), 4))])
ODD = ["a=b", "x.y-z_1", "2026-12-04", "k=v=w"]


def rows(batch, count, start=0):
    return pa.table({
        "batch": [batch] * count, "n": list(range(start, start + count)), "text": [f"t{i}" for i in range(count)],
        "v": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(count * 4, dtype=np.float32)), 4),
    }, schema=SCHEMA)


def folders(root, name):
    return sorted(f for f in os.listdir(os.path.join(root, name)) if f.startswith("batch="))


def counts(frame: pl.DataFrame) -> dict:
    return dict(frame.group_by("batch").len().iter_rows())


def test_partition_folder_is_the_one_delta_rs_writes_for_every_character(tmp_path):
    values = [f"v{chr(c)}w" for c in range(32, 127)] + ["é", "\u2603", "a=b=c", "%3D"]
    write_deltalake(str(tmp_path / "t"), pa.table({"batch": values, "n": range(len(values))}), partition_by=["batch"])
    assert folders(str(tmp_path), "t") == sorted(writer.partition_folder(v) for v in values)
    assert writer.partition_folder("a=b") == "batch=a%3Db" and writer.partition_folder("x.y-z_1") == "batch=x.y-z_1"


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "in-memory"])
def test_every_write_path_lays_out_partitions_as_delta_rs_and_polars_reads_all_batches(tmp_path, streamed):
    root = str(tmp_path)
    for batch in ODD:
        data = rows(batch, 3)
        lake.replace_partition(root, "t", batch, pa.RecordBatchReader.from_batches(SCHEMA, data.to_batches()) if streamed else data)
    lake.append(root, "t", rows("a=b", 2, start=10))
    assert folders(root, "t") == sorted(writer.partition_folder(b) for b in ODD)
    # The log holds each value unescaped, and each path escaped once more (as delta-rs writes it).
    actions = pa.table(lake.open_table(root, "t").get_add_actions(flatten=True)).to_pylist()
    for action in actions:
        folder = writer.partition_folder(action["partition.batch"])
        assert urllib.parse.unquote(action["path"]).startswith(folder + "/")
    # No file holds a fixed-size list: the Delta schema says list.
    for batch in ODD:
        for file in os.listdir(os.path.join(root, "t", writer.partition_folder(batch))):
            assert pq.read_schema(os.path.join(root, "t", writer.partition_folder(batch), file)).field("v").type == pa.list_(pa.float32())
    expected = {"a=b": 5, "x.y-z_1": 3, "2026-12-04": 3, "k=v=w": 3}
    assert counts(pl.read_delta(os.path.join(root, "t"))) == expected
    assert counts(pl.scan_delta(os.path.join(root, "t")).collect()) == expected
    table = DeltaTable(os.path.join(root, "t")).to_pyarrow_table()
    assert dict(zip(*np.unique(table.column("batch").to_numpy(zero_copy_only=False), return_counts=True))) == expected
    vectors = pl.read_delta(os.path.join(root, "t")).filter(pl.col("batch") == "k=v=w").sort("n")["v"].to_list()
    assert vectors[1] == [4.0, 5.0, 6.0, 7.0]
    assert migrate.stale_partitions(root, "t") == {}


def legacy_table(root):
    """A table as the lake wrote it before: `batch=a=b/` unescaped, and fixed-size lists in the files."""
    uri = os.path.join(root, "t")
    write_deltalake(uri, rows("x.y", 2), partition_by=["batch"])  # delta-rs stores the fixed-size list as is
    folder = os.path.join(uri, "batch=a=b")
    os.makedirs(folder)
    pq.write_table(rows("a=b", 3).drop(["batch"]), os.path.join(folder, "old.parquet"))
    table = DeltaTable(uri)
    table.create_write_transaction(
        [AddAction(path="batch=a=b/old.parquet", size=os.path.getsize(os.path.join(folder, "old.parquet")),
                   partition_values={"batch": "a=b"}, modification_time=0, data_change=True, stats="{}")],
        mode="append", schema=pa.schema(table.schema().to_arrow()), partition_by=["batch"],
    )
    return uri


def test_migration_rewrites_legacy_partitions_so_polars_reads_them(tmp_path, capsys):
    root = str(tmp_path)
    uri = legacy_table(root)
    with pytest.raises(Exception):
        pl.read_delta(uri)  # what a user of the lake saw before
    stale = migrate.stale_partitions(root, "t")
    assert sorted(stale) == ["a=b", "x.y"]
    assert "is not under batch=a%3Db/" in stale["a=b"][0] and "fixed_size_list" in stale["x.y"][0]
    version = lake.open_table(root, "t").version()

    assert migrate.migrate_partitions(root, names=["t"]) == {"t": ["a=b", "x.y"]}
    assert lake.open_table(root, "t").version() == version + 2  # one commit per partition
    assert migrate.stale_partitions(root, "t") == {}
    frame = pl.read_delta(uri)
    assert counts(frame) == {"a=b": 3, "x.y": 2}
    assert sorted(frame.filter(pl.col("batch") == "a=b")["n"].to_list()) == [0, 1, 2]
    assert counts(pl.scan_delta(uri).collect()) == {"a=b": 3, "x.y": 2}
    assert migrate.migrate_partitions(root, names=["t"]) == {}  # nothing left to do


def test_migration_command_checks_then_rewrites_every_lake_table(tmp_path, capsys):
    root = str(tmp_path)
    os.rename(legacy_table(root), os.path.join(root, "embeddings"))
    assert migrate.main([root, "--check"]) == 1
    assert "embeddings batch 'a=b'" in capsys.readouterr().out
    assert migrate.main([root]) == 0
    assert migrate.main([root, "--check"]) == 0
    assert counts(pl.read_delta(os.path.join(root, "embeddings"))) == {"a=b": 3, "x.y": 2}


def test_the_next_replace_of_a_legacy_partition_writes_it_the_right_way(tmp_path):
    root = str(tmp_path)
    uri = legacy_table(root)
    lake.replace_partition(root, "t", "a=b", rows("a=b", 4))
    lake.replace_partition(root, "t", "x.y", pa.RecordBatchReader.from_batches(SCHEMA, rows("x.y", 1).to_batches()))
    assert migrate.stale_partitions(root, "t") == {}
    assert counts(pl.read_delta(uri)) == {"a=b": 4, "x.y": 1}


def test_which_stored_types_a_delta_reader_takes_for_the_declared_one():
    assert writer.same_parquet_kind(pa.large_string(), pa.string())
    assert writer.same_parquet_kind(pa.large_list(pa.int32()), pa.list_(pa.int32()))
    assert not writer.same_parquet_kind(pa.list_(pa.float32(), 384), pa.list_(pa.float32()))
    assert not writer.same_parquet_kind(pa.struct([("v", pa.list_(pa.float32(), 2))]), pa.struct([("v", pa.list_(pa.float32()))]))
