"""Every table of a real multi-batch run, with batch names delta-rs escapes, read by every Delta reader:
polars (read_delta and scan_delta), deltalake, and DuckDB's delta extension where it is installed.

The chain runs through real Dagster with the bundled model; the staging table (empty after a
finished run) gets a checkpoint written the way the embeddings stage writes one.
"""

import glob
import importlib.util
import os
from collections import Counter

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest

import dagster as dg
from deltalake import DeltaTable

from embedding_assets.lib import lake
from embedding_assets.lib.lake import migrate, tables, writer
from embedding_assets.lib.sinks.delta import DeltaSink
from embedding_assets.lib.stages import embed
from embedding_assets_tests.conftest import materialize_assets, write_corpus

BATCHES = ["a=b", "x.y-z_1", "2026-12-04"]
TABLES = [tables.RAW, tables.REJECTED, tables.CHUNKS, tables.BUCKETS, tables.EMBEDDINGS, tables.STAGING, tables.DOCUMENTS]


def duckdb_connection():
    """A DuckDB connection with the delta extension loaded, or a skip saying why there is none.

    DuckDB downloads extensions from the internet at run time; offline it takes them from the
    `duckdb-ext-delta` package (the extension DuckDB publishes, signature checked on load)."""
    try:
        import duckdb
    except ImportError:
        pytest.skip("duckdb is not installed (pip install 'duckdb==1.4.4' 'duckdb-ext-delta==1.4.4.20260205')")
    connection = duckdb.connect()
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "extensions")
        connection.execute(f"SET extension_directory = '{folder}'")
    try:
        connection.execute("LOAD delta")
    except Exception as exc:
        try:
            connection.execute("INSTALL delta")
            connection.execute("LOAD delta")
        except Exception:
            pytest.skip(f"DuckDB's delta extension is not available offline for duckdb {duckdb.__version__} ({str(exc).splitlines()[0]}); "
                        "install the matching duckdb-ext-delta package")
    return connection


@pytest.fixture(scope="module")
def lake_of_odd_batches(tmp_path_factory):
    """The whole chain for three batches whose names delta-rs escapes (or not), on one lake."""
    base = tmp_path_factory.mktemp("odd")
    dirs = {"landing": str(base / "landing"), "lake": str(base / "lake"), "home": str(base / "home")}
    os.makedirs(dirs["home"])
    for i, batch in enumerate(BATCHES):
        write_corpus(os.path.join(dirs["landing"], batch), extra={f"only_{i}.txt": f"A document that only batch {batch} has, number {i}."})
    # The embeddings step's checkpoint files are published as they were written (not only small
    # ones rewritten at the swap), so the readers read both kinds of data files.
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance, pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed, "SMALL_PART_BYTES", 0)
        instance.add_dynamic_partitions("batches", BATCHES)
        for batch in BATCHES:
            materialize_assets(dirs, instance, batch)
    # A checkpoint of a run in progress, written as the embeddings stage writes it.
    vectors = tables.vectors_to_arrow(np.ones((2, 384), dtype=np.float32), 384)
    import pyarrow as pa

    rows = pa.record_batch({
        "doc_id": ["d1", "d2"], "chunk_id": ["c1", "c2"], "text_hash": ["h1", "h2"], "embedding": vectors, "model": ["m", "m"],
        "embedded_at": pa.array([0, 0], pa.timestamp("us", tz="UTC")),
    })
    checkpoint = DeltaSink(dirs["lake"]).checkpoint_writer("a=b", tables.embeddings_schema(384))
    checkpoint.write(rows)
    checkpoint.commit(("a=b:test", 1))
    # Its data file stands in the embeddings partition's folder, named by no log: no reader may see its rows.
    [part] = DeltaSink(dirs["lake"]).parts("a=b")
    assert os.path.exists(os.path.join(dirs["lake"], tables.EMBEDDINGS, part.key))
    return dirs["lake"]


def expected_counts(root: str) -> dict[str, Counter]:
    """Rows per batch of each table, counted partition by partition through the lake's own reads."""
    counts = {}
    for name in TABLES:
        counts[name] = Counter({batch: lake.read_partition(root, name, batch, columns=["batch"]).num_rows for batch in lake.partitions(root, name)})
        counts[name] = +counts[name]  # drop partitions emptied by a delete
    return counts


def test_every_table_is_read_whole_by_polars_and_deltalake(lake_of_odd_batches):
    root = lake_of_odd_batches
    expected = expected_counts(root)
    # The chain's own numbers: 7 readable documents and 1 rejected record per batch (plus its own file).
    for batch in BATCHES:
        assert expected[tables.RAW][batch] == 8 and expected[tables.REJECTED][batch] == 1
        assert expected[tables.DOCUMENTS][batch] == 8
        assert expected[tables.EMBEDDINGS][batch] == expected[tables.CHUNKS][batch] == expected[tables.BUCKETS][batch] > 8
    assert expected[tables.STAGING] == Counter({"a=b": 1})  # one record: the checkpoint's one data file

    for name in TABLES:
        uri = lake.table_uri(root, name)
        # On disk: partition folders as delta-rs names them, no file in another type than the log says.
        assert migrate.stale_partitions(root, name) == {}, name
        assert {os.path.basename(p) for p in glob.glob(os.path.join(uri, "batch=*"))} >= {writer.partition_folder(b) for b in expected[name]}

        assert Counter(dict(pl.read_delta(uri).group_by("batch").len().iter_rows())) == expected[name], f"polars.read_delta {name}"
        assert Counter(dict(pl.scan_delta(uri).collect().group_by("batch").len().iter_rows())) == expected[name], f"polars.scan_delta {name}"
        table = DeltaTable(uri).to_pyarrow_table()
        assert Counter(table.column("batch").to_pylist()) == expected[name], f"deltalake {name}"

    # Vectors read back whole, of the model's dimension, in every reader.
    documents = pl.read_delta(lake.table_uri(root, tables.DOCUMENTS)).filter(pl.col("batch") == "a=b")
    assert documents["embedding"].dtype == pl.List(pl.Float32) and set(documents["embedding"].list.len()) == {384}
    scanned = pl.scan_delta(lake.table_uri(root, tables.EMBEDDINGS)).filter(pl.col("batch") == "2026-12-04").collect()
    own = lake.read_partition(root, tables.EMBEDDINGS, "2026-12-04", columns=["chunk_id", "embedding"])
    mine = dict(zip(own.column("chunk_id").to_pylist(), tables.arrow_to_vectors(own.column("embedding"))))
    for chunk_id, vector in zip(scanned["chunk_id"], scanned["embedding"]):
        np.testing.assert_array_equal(np.asarray(vector, dtype=np.float32), mine[chunk_id])


def test_every_table_is_read_whole_by_duckdb(lake_of_odd_batches):
    root = lake_of_odd_batches
    connection = duckdb_connection()
    expected = expected_counts(root)
    for name in TABLES:
        uri = lake.table_uri(root, name)
        got = connection.execute(f"SELECT batch, count(*) FROM delta_scan('{uri}') GROUP BY batch").fetchall()
        assert Counter(dict(got)) == expected[name], f"duckdb {name}"
    [(dimension,)] = connection.execute(
        f"SELECT DISTINCT len(embedding) FROM delta_scan('{lake.table_uri(root, tables.EMBEDDINGS)}')"
    ).fetchall()
    assert dimension == 384


def test_a_partition_read_prunes_to_its_batch_by_value(lake_of_odd_batches):
    root = lake_of_odd_batches
    raw = pl.scan_delta(lake.table_uri(root, tables.RAW)).filter(pl.col("batch") == "a=b").collect()
    assert raw.height == 8 and "only_0.txt" in raw["doc_id"].to_list() and "only_1.txt" not in raw["doc_id"].to_list()
    assert lake.read_table(root, tables.RAW, columns=["batch"], filter=pc.field("batch") == "x.y-z_1").num_rows == 8
