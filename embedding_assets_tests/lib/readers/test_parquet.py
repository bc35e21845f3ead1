"""Parquet record files: schemas, bad rows, corrupt files, and the cap on what decodes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa

from embedding_assets_tests.lib.readers.helpers import documents, parquet_bytes, read, rejection, write


def test_parquet_records_and_bad_files(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    bad_utf8 = pa.Array.from_buffers(pa.string(), 1, pa.array([b"bad \xff"], pa.binary()).buffers())
    good = pa.table(
        {
            "id": pa.array([1, 2, 3, 1, 5, 6, None], pa.int64()),
            "text": ["one", None, "  ", "dup", "nul\x00here", "ok", "no id"],
        }
    )
    write(batch / "a.parquet", parquet_bytes(good))
    write(batch / "b.parquet", parquet_bytes(pa.table({"id": ["x"], "body": ["wrong column"]})))
    write(batch / "c.parquet", b"PAR1 this is not really parquet PAR1")
    write(batch / "d.parquet", parquet_bytes(pa.table({"id": ["x"], "text": [1]})))
    write(batch / "e.parquet", parquet_bytes(pa.table({"id": ["u"], "text": bad_utf8})))
    dictionary_ids = pa.table({"id": pa.array(["d"]).dictionary_encode(), "text": pa.array([b"binary text"])})
    write(batch / "f.parquet", parquet_bytes(dictionary_ids))
    write(batch / "g.parquet", parquet_bytes(good)[:-40])

    items = read(batch)
    docs = documents(items)
    assert set(docs) == {"a.parquet#1", "a.parquet#5", "a.parquet#6", "e.parquet#u", "f.parquet#d"}
    assert docs["a.parquet#5"].text == "nulhere" and docs["a.parquet#5"].flags == "nul-removed"
    assert docs["e.parquet#u"].text == "bad \ufffd" and docs["e.parquet#u"].flags == "invalid-utf8-replaced"
    assert docs["f.parquet#d"].text == "binary text"
    assert rejection(items, "a.parquet", "2").reason == "text is null (row 2)"
    assert rejection(items, "a.parquet", "3").reason == "empty document (no text after decoding) (row 3)"
    assert rejection(items, "a.parquet", "1").reason == "duplicate id '1' in row 4 (first seen in row 1)"
    assert rejection(items, "a.parquet", "row 7").reason == "id is null"
    assert rejection(items, "b.parquet").reason == "missing required column(s) 'text'; found columns: id, body"
    assert rejection(items, "c.parquet").reason.startswith("corrupt parquet file: ")
    assert "column 'text' has type int64" in rejection(items, "d.parquet").reason
    assert rejection(items, "g.parquet").reason.startswith("corrupt parquet file")


def test_parquet_over_the_cap(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    table = pa.table({"id": list(range(100)), "text": ["a" * 50_000] * 100})
    write(batch / "big.parquet", parquet_bytes(table))  # compresses far below the cap
    write(batch / "big.parquet.gz", gzip.compress(parquet_bytes(table)))
    items = read(batch, max_file_bytes=1_000_000)
    assert documents(items) == {}
    assert "exceeds the 1000000-byte cap" in rejection(items, "big.parquet").reason
    assert "exceeds the 1000000-byte cap" in rejection(items, "big.parquet.gz").reason


def test_parquet_declaring_more_than_the_cap_is_rejected_by_its_footer(tmp_path: Path) -> None:
    """Plain-encoded, compressed text: a 2 KB file whose footer declares 5 MB of column data."""
    import pyarrow.parquet as pq

    batch = tmp_path / "b"
    batch.mkdir()
    table = pa.table({"id": list(range(100)), "text": [f"{i} " + "a" * 50_000 for i in range(100)]})
    pq.write_table(table, batch / "plain.parquet", use_dictionary=False, compression="zstd")
    items = read(batch, max_file_bytes=1_000_000)
    assert documents(items) == {}
    assert "exceeds the 1000000-byte cap" in rejection(items, "plain.parquet").reason


_BOMB_CHILD = """
import json, resource, sys
from embedding_assets.lib.readers import Document, read_batch
import pyarrow.parquet  # imported before the baseline: only the read itself is measured
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
items = list(read_batch(sys.argv[1], max_file_bytes=int(sys.argv[2])))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "growth_kib": after - before,
    "documents": sum(isinstance(i, Document) for i in items),
    "reasons": [i.reason for i in items if not isinstance(i, Document)],
}))
"""


def test_parquet_dictionary_bomb_is_rejected_before_it_expands(tmp_path: Path) -> None:
    """Issue 13 #6: a ~1.2 MB parquet file whose dictionary-encoded 'text' column repeats four
    300 KB values over 1,200 rows (360 MB decoded). It is rejected with the decoded-size reason,
    and reading it never expands it: the peak RSS of the reading process (a subprocess, so the
    figure is its own) grows by far less than one 1,024-row batch of it would take (300 MB)."""
    import json
    import os
    import random
    import subprocess
    import sys

    import pyarrow.parquet as pq

    rng = random.Random(13)
    values = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=300_000)) for _ in range(4)]
    rows = 1_200
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": pa.array([values[i % 4] for i in range(rows)]).dictionary_encode()})
    batch = tmp_path / "b"
    batch.mkdir()
    pq.write_table(table, batch / "bomb.parquet", use_dictionary=True, dictionary_pagesize_limit=8 << 20)
    del table, values
    size = (batch / "bomb.parquet").stat().st_size
    assert size < 2_000_000
    metadata = pq.ParquetFile(batch / "bomb.parquet").metadata
    assert metadata.row_group(0).column(1).has_dictionary_page  # the text really is dictionary-encoded
    cap = 16 << 20  # the file is far under it; what it decodes to is 20 times over it

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _BOMB_CHILD, str(batch), str(cap)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["documents"] == 0
    [reason] = result["reasons"]
    assert reason.startswith("decoded size of columns 'id' and 'text' exceeds the 16 MiB cap"), reason
    assert "corrupt" not in reason
    assert result["growth_kib"] < 64 * 1024, f"peak RSS grew by {result['growth_kib'] / 1024:.0f} MiB while reading a {size / 1e6:.1f} MB file"


def test_parquet_dictionary_rows_are_read_in_slices(tmp_path: Path) -> None:
    """Many rows repeating dictionary values under the cap are all read, ids and texts intact."""
    values = ["alpha " * 1000, "beta " * 2000]
    table = pa.table({"id": [f"r{i}" for i in range(3000)], "text": pa.array([values[i % 2] for i in range(3000)]).dictionary_encode()})
    batch = tmp_path / "b"
    write(batch / "d.parquet", parquet_bytes(table))
    docs = documents(read(batch, max_file_bytes=64 << 20))
    assert len(docs) == 3000
    assert docs["d.parquet#r0"].text == values[0].strip() or docs["d.parquet#r0"].text == values[0]
    assert docs["d.parquet#r2999"].text.startswith("beta")
