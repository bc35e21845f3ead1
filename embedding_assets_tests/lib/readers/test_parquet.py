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
