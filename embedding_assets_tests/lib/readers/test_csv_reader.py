"""CSV record files: a 'text' column, an optional 'id' column, and every bad row."""

from __future__ import annotations

import gzip
from pathlib import Path

from embedding_assets_tests.lib.readers.helpers import documents, read, rejection, rejections, sha, write


def test_csv_with_ids(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    body = (
        'id,title,text\n'
        'a,First,"Cats purr, mostly."\n'
        '\n'  # a blank line is no row
        'b,Second,"A quoted ""word"" and\na second line"\n'
        '7,Third,caf\xe9\n'
    )
    write(batch / "docs.csv", "\ufeff" + body)  # a leading BOM (Excel's UTF-8 export) is not part of the header
    items = read(batch)
    assert rejections(items) == []
    docs = documents(items)
    assert set(docs) == {"docs.csv#a", "docs.csv#b", "docs.csv#7"}
    assert docs["docs.csv#a"].text == "Cats purr, mostly."
    assert docs["docs.csv#b"].text == 'A quoted "word" and\na second line'
    assert docs["docs.csv#7"].text == "café" and docs["docs.csv#7"].content_hash == sha("café")
    assert all(doc.source == "docs.csv" and doc.flags == "" for doc in docs.values())


def test_csv_without_an_id_column_numbers_its_rows(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    write(batch / "notes.csv", b" text , lang\nfirst note,en\n\nsecond note,en\nbad \xff byte,en\n")
    docs = documents(read(batch))
    assert set(docs) == {"notes.csv#1", "notes.csv#2", "notes.csv#3"}
    assert docs["notes.csv#2"].text == "second note"
    assert docs["notes.csv#3"].text == "bad \ufffd byte" and docs["notes.csv#3"].flags == "invalid-utf8-replaced"


def test_csv_without_a_text_column_is_rejected(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    write(batch / "wrong.csv", "id,body\n1,not read\n")
    write(batch / "twice.csv", "text,text\na,b\n")
    write(batch / "empty.csv", "")
    items = read(batch)
    assert documents(items) == {}
    assert rejection(items, "wrong.csv").reason == "missing required column(s) 'text'; found columns: id, body"
    assert rejection(items, "twice.csv").reason == "column 'text' appears more than once"
    assert rejection(items, "empty.csv").reason == "missing required column(s) 'text'; found columns: (none)"


def test_csv_bad_rows_are_rejected_and_the_file_goes_on(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    rows = [
        "id,text",
        "ok1,good",  # row 1
        "empty,",  # row 2: an empty text cell
        "blank,   ",  # row 3
        ",no id",  # row 4
        "ok1,again",  # row 5
        "short",  # row 6
        "x,y,z",  # row 7
    ]
    data = ("\n".join(rows) + "\n").encode() + b"bad\xff,id not UTF-8\nlast,still read\n"  # rows 8, 9
    write(batch / "r.csv", data)
    items = read(batch)
    assert set(documents(items)) == {"r.csv#ok1", "r.csv#last"}
    assert rejection(items, "r.csv", "empty").reason == "empty document (no text after decoding) (row 2)"
    assert rejection(items, "r.csv", "blank").reason == "empty document (no text after decoding) (row 3)"
    assert rejection(items, "r.csv", "row 4").reason == "id is empty"
    assert rejection(items, "r.csv", "ok1").reason == "duplicate id 'ok1' in row 5 (first seen in row 1)"
    assert rejection(items, "r.csv", "row 6").reason == "the row's field count (1) differs from the header's (2)"
    assert rejection(items, "r.csv", "row 7").reason == "the row's field count (3) differs from the header's (2)"
    assert rejection(items, "r.csv", "row 8").reason == "id is not valid UTF-8"
    assert len(rejections(items)) == 7


def test_csv_empty_text_cell_without_ids(tmp_path: Path) -> None:
    write(tmp_path / "b" / "n.csv", "text\nfine\n\"\"\n")
    items = read(tmp_path / "b")
    assert set(documents(items)) == {"n.csv#1"}
    assert rejection(items, "n.csv", "2").reason == "empty document (no text after decoding) (row 2)"


def test_csv_gzip_binary_and_cap(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    write(batch / "docs.csv.gz", gzip.compress(b"id,text\nz,zipped row\n"))
    write(batch / "big.csv", "text\n" + "a" * 300_000 + "\n")  # one cell over the csv module's default limit
    write(batch / "bomb.csv.gz", gzip.compress(b"text\n" + b"b" * 2_000_000))
    write(batch / "utf16.csv", "text\nhello\n".encode("utf-16"))
    items = read(batch, max_file_bytes=1_000_000)
    docs = documents(items)
    assert set(docs) == {"docs.csv.gz#z", "big.csv#1"}
    assert docs["docs.csv.gz#z"].text == "zipped row" and docs["docs.csv.gz#z"].source == "docs.csv.gz"
    assert len(docs["big.csv#1"].text) == 300_000
    assert "exceeds the 1000000-byte cap" in rejection(items, "bomb.csv.gz").reason
    assert "UTF-16" in rejection(items, "utf16.csv").reason
