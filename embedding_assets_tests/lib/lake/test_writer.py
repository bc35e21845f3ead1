"""The streamed partition writer: bounded row groups, rolled files, one commit, footer statistics,
and the table-feature check before raw add actions are committed."""

import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables


SCHEMA = pa.schema([("batch", pa.string()), ("key", pa.string()), ("n", pa.int64()), ("v", pa.list_(pa.float32(), 8))])


def rows(batch, start, count):
    vectors = np.arange(start * 8, (start + count) * 8, dtype=np.float32)
    return pa.record_batch([
        pa.array([batch] * count), pa.array([f"k{i:06d}" for i in range(start, start + count)]),
        pa.array(range(start, start + count), pa.int64()), pa.FixedSizeListArray.from_arrays(vectors, 8),
    ], schema=SCHEMA)


def stream(batches):
    return pa.RecordBatchReader.from_batches(SCHEMA, iter(batches))


def data_files(root, name, batch):
    folder = os.path.join(root, name, f"batch={batch}")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet"))


def test_streamed_replace_writes_bounded_row_groups_rolls_files_and_commits_once(tmp_path, monkeypatch):
    root = str(tmp_path)
    lake.replace_partition(root, "t", "other", pa.table(rows("other", 0, 3)))
    monkeypatch.setattr(lake.writer, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(lake.writer, "TARGET_FILE_BYTES", 6_000)
    version = lake.open_table(root, "t").version()
    lake.replace_partition(root, "t", "b", stream([rows("b", i, 70) for i in range(0, 700, 70)]))
    table = lake.open_table(root, "t")
    assert table.version() == version + 1  # one commit for the whole stream
    got = lake.read_partition(root, "t", "b")
    assert sorted(got.column("n").to_pylist()) == list(range(700))
    assert tables.arrow_to_vectors(got.column("v"))[got.column("n").to_numpy().argsort()][5].tolist() == list(range(40, 48))
    files = data_files(root, "t", "b")
    assert len(files) > 1  # rolled over at the target size
    for path in files:
        meta = pq.ParquetFile(path).metadata
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))
        assert "batch" not in pq.read_schema(path).names  # the partition column lives in the path
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    mine = [a for a in actions if a["path"].startswith("batch=b/")]
    assert sum(a["num_records"] for a in mine) == 700 and len(mine) == len(files)
    assert min(a["min.key"] for a in mine) == "k000000" and max(a["max.key"] for a in mine) == "k000699"
    assert min(a["min.n"] for a in mine) == 0 and all(a["null_count.key"] == 0 for a in mine)
    assert lake.read_partition(root, "t", "other").num_rows == 3  # other partitions untouched

    # Replacing again leaves only the new rows; an empty stream empties the partition.
    lake.replace_partition(root, "t", "b", stream([rows("b", 1000, 5)]))
    assert sorted(lake.read_partition(root, "t", "b").column("n").to_pylist()) == list(range(1000, 1005))
    lake.replace_partition(root, "t", "b", stream([]))
    assert lake.read_partition(root, "t", "b").num_rows == 0


def test_streamed_replace_that_fails_midway_changes_nothing_and_leaves_no_files(tmp_path, monkeypatch):
    root = str(tmp_path)
    monkeypatch.setattr(lake.writer, "ROW_GROUP_ROWS", 50)
    monkeypatch.setattr(lake.writer, "TARGET_FILE_BYTES", 3_000)
    lake.replace_partition(root, "t", "b", pa.table(rows("b", 0, 10)))
    before = data_files(root, "t", "b")
    version = lake.open_table(root, "t").version()

    def failing():
        yield rows("b", 100, 200)
        yield rows("b", 300, 200)
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        lake.replace_partition(root, "t", "b", stream(failing()))
    assert data_files(root, "t", "b") == before and lake.open_table(root, "t").version() == version
    assert sorted(lake.read_partition(root, "t", "b").column("n").to_pylist()) == list(range(10))

    with pytest.raises(ValueError, match="partition"):
        lake.replace_partition(root, "t", "b", stream([rows("b", 0, 5), rows("elsewhere", 5, 5)]))
    assert data_files(root, "t", "b") == before


def test_append_groups_rows_by_partition(tmp_path):
    root = str(tmp_path)
    mixed = pa.Table.from_batches([rows("x", 0, 4), rows("y", 4, 3)])
    lake.append(root, "t", mixed)
    lake.append(root, "t", pa.table(rows("x", 10, 2)))
    assert sorted(lake.read_partition(root, "t", "x").column("n").to_pylist()) == [0, 1, 2, 3, 10, 11]
    assert lake.read_partition(root, "t", "y").num_rows == 3
    with pytest.raises(ValueError, match="one partition"):
        lake.append(root, "t", mixed, app_transaction=("app", 1))


# ---------------------------------------------------------------- statistics from the Parquet footer

def test_file_statistics_come_from_the_parquet_footer_with_string_prefixes(tmp_path):
    root = str(tmp_path)
    schema = pa.schema([("batch", pa.string()), ("doc", pa.large_string()), ("n", pa.int32()), ("note", pa.string()), ("x", pa.float64())])
    long_low, long_high = "a" * 40 + "z", "x" * 31 + "\U0010ffff" * 3
    data = pa.table({
        "batch": ["b"] * 4, "doc": [long_high, long_low, "short", None], "n": [7, -3, None, 12],
        "note": [None] * 4, "x": [0.5, None, 1.5, 2.5],
    }, schema=schema)
    lake.replace_partition(root, "t", "b", pa.RecordBatchReader.from_batches(schema, data.to_batches(max_chunksize=2)))
    [action] = pa.table(lake.open_table(root, "t").get_add_actions(flatten=False)).to_pylist()
    [path] = data_files(root, "t", "b")
    footer = pq.ParquetFile(path).metadata
    assert action["num_records"] == footer.num_rows == 4
    assert action["null_count"] == {"doc": 1, "n": 1, "note": 4, "x": 1}
    # Strings are bounded by prefixes of 32 characters: the min a prefix, the max raised past it.
    assert action["min"]["doc"] == "a" * 32 and len(action["max"]["doc"]) <= 32
    assert action["max"]["doc"] >= long_high and action["max"]["doc"] == "x" * 30 + "y"
    assert action["min"]["n"] == -3 and action["max"]["n"] == 12
    assert action["min"].get("note") is None and action["min"].get("x") is None  # all nulls; floats keep no range
    # The table reads back and prunes with those bounds.
    assert lake.read_table(root, "t", filter=pa.compute.field("doc") == long_high).num_rows == 1


def test_upper_prefix_is_an_upper_bound_or_nothing():
    from embedding_assets.lib.lake.writer import STATS_STRING_CHARS, _upper_prefix

    assert _upper_prefix("abc") == "abc"
    assert _upper_prefix("a" * 31 + "b" + "c") == "a" * 31 + "c"
    assert _upper_prefix("a" * 31 + "\ud7ff" + "x") == "a" * 31 + "\ue000"  # skips the surrogates
    assert _upper_prefix("\U0010ffff" * (STATS_STRING_CHARS + 1)) is None


# ---------------------------------------------------------------- table features

@pytest.mark.parametrize("feature, message", [("DeletionVectors", "deletionVectors"), ("TimestampWithoutTimezone", "timestampNtz")])
def test_streamed_write_refuses_a_table_that_needs_a_feature_it_does_not_produce(tmp_path, feature, message):
    from deltalake import TableFeatures

    root = str(tmp_path)
    lake.replace_partition(root, "t", "b", pa.table(rows("b", 0, 3)))
    lake.open_table(root, "t").alter.add_feature(getattr(TableFeatures, feature), allow_protocol_versions_increase=True)
    before, version = data_files(root, "t", "b"), lake.open_table(root, "t").version()
    with pytest.raises(ValueError, match=f"t needs table features the streaming writer does not produce: {message}"):
        lake.replace_partition(root, "t", "b", stream([rows("b", 10, 5)]))
    with pytest.raises(ValueError, match=message):
        lake.append(root, "t", pa.table(rows("b", 10, 5)))
    assert data_files(root, "t", "b") == before and lake.open_table(root, "t").version() == version


def test_streamed_overwrite_of_an_append_only_table_is_refused_but_appends_land(tmp_path):
    root = str(tmp_path)
    lake.replace_partition(root, "t", "b", pa.table(rows("b", 0, 3)))
    lake.open_table(root, "t").alter.set_table_properties({"delta.appendOnly": "true"})
    with pytest.raises(ValueError, match="appendOnly"):
        lake.replace_partition(root, "t", "b", stream([rows("b", 10, 5)]))
    lake.append(root, "t", pa.table(rows("b", 10, 5)))
    assert lake.read_partition(root, "t", "b").num_rows == 8


def test_protocol_check_accepts_plain_tables_and_names_legacy_features():
    from deltalake.table import ProtocolVersions

    from embedding_assets.lib.lake.writer import check_protocol

    class Table:
        def __init__(self, protocol):
            self._protocol = protocol

        def protocol(self):
            return self._protocol

        def metadata(self):
            return SimpleNamespace(configuration={})

        def schema(self):
            return SimpleNamespace(to_arrow=lambda: pa.schema([("batch", pa.string())]))

    check_protocol(Table(ProtocolVersions(1, 2, None, None)), "t")
    check_protocol(Table(ProtocolVersions(1, 7, ["appendOnly", "invariants"], None)), "t")
    with pytest.raises(ValueError, match="writer version 4"):
        check_protocol(Table(ProtocolVersions(1, 4, None, None)), "t")
    with pytest.raises(ValueError, match="columnMapping"):
        check_protocol(Table(ProtocolVersions(2, 5, None, None)), "t")
    with pytest.raises(ValueError, match="changeDataFeed"):
        check_protocol(Table(ProtocolVersions(1, 7, ["changeDataFeed"], None)), "t")
