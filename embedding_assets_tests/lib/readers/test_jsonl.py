"""JSON Lines record files: every bad record, ids, duplicates, and doc_ids that collide with files."""

from __future__ import annotations

import json
from pathlib import Path

from embedding_assets_tests.lib.readers.helpers import documents, jsonl, read, rejection, rejections, write


def test_jsonl_records(tmp_path: Path) -> None:
    lines = [
        {"id": "ok1", "text": "good one"},  # line 1
        "",  # line 2: blank lines are ignored
        "{not json",  # line 3
        "[1, 2]",  # line 4
        {"text": "no id"},  # line 5
        {"id": "notext"},  # line 6
        {"id": "nulltext", "text": None},  # line 7
        {"id": "numtext", "text": 42},  # line 8
        {"id": 7, "text": "int id"},  # line 9
        {"id": "ok1", "text": "duplicate"},  # line 10
        '{"id": "sur", "text": "lone \\ud800 surrogate"}',  # line 11
        '{"id": "pair", "text": "pair \\ud83d\\ude00 ok"}',  # line 12
        '{"id": "nul", "text": "a\\u0000b"}',  # line 13
        {"id": "blank", "text": "  \n "},  # line 14
        {"id": True, "text": "bool id"},  # line 15
        {"id": 1.5, "text": "float id"},  # line 16
        {"id": "", "text": "empty id"},  # line 17
        '{"id": "\\udc00x", "text": "bad id"}',  # line 18
        {"id": "7", "text": "same doc_id as int 7"},  # line 19
        "   ",  # line 20
        {"id": "last", "text": "still read"},  # line 21
    ]
    batch = tmp_path / "b"
    write(batch / "r.jsonl", jsonl(*lines).encode() + b'{"id": "bytes", "text": "bad \xff byte"}\n')

    items = read(batch)
    docs = documents(items)
    assert set(docs) == {f"r.jsonl#{i}" for i in ("ok1", "7", "sur", "pair", "nul", "last", "bytes")}
    assert docs["r.jsonl#ok1"].text == "good one"
    assert docs["r.jsonl#7"].text == "int id"
    assert docs["r.jsonl#sur"].text == "lone \ufffd surrogate"
    assert docs["r.jsonl#sur"].flags == "surrogates-replaced"
    assert docs["r.jsonl#pair"].text == "pair \U0001f600 ok" and docs["r.jsonl#pair"].flags == ""
    assert docs["r.jsonl#nul"].text == "ab" and docs["r.jsonl#nul"].flags == "nul-removed"
    assert docs["r.jsonl#bytes"].text == "bad \ufffd byte" and docs["r.jsonl#bytes"].flags == "invalid-utf8-replaced"
    assert docs["r.jsonl#last"].source == "r.jsonl"

    assert rejection(items, "r.jsonl", "line 3").reason.startswith("invalid JSON: ")
    assert "JSON object, got array" in rejection(items, "r.jsonl", "line 4").reason
    assert rejection(items, "r.jsonl", "line 5").reason == "missing required field 'id'"
    assert rejection(items, "r.jsonl", "notext").reason == "missing required field 'text' (line 6)"
    assert rejection(items, "r.jsonl", "nulltext").reason == "text is null (line 7)"
    assert rejection(items, "r.jsonl", "numtext").reason == "text must be a string, got number (line 8)"
    assert rejection(items, "r.jsonl", "ok1").reason == "duplicate id 'ok1' on line 10 (first seen on line 1)"
    assert rejection(items, "r.jsonl", "blank").reason == "empty document (no text after decoding) (line 14)"
    assert "got boolean" in rejection(items, "r.jsonl", "line 15").reason
    assert "got number" in rejection(items, "r.jsonl", "line 16").reason
    assert rejection(items, "r.jsonl", "line 17").reason == "id is empty"
    assert "lone surrogate" in rejection(items, "r.jsonl", "line 18").reason
    assert rejection(items, "r.jsonl", "7").reason == "duplicate id '7' on line 19 (first seen on line 9)"
    assert len(rejections(items)) == 13


def test_doc_ids_of_files_and_records_cannot_collide(tmp_path: Path) -> None:
    """Issue 13 #7: '<path>#<id>' of a record used to equal the path of a file named with '#'. Paths
    are percent-encoded ('%' -> %25, '#' -> %23), so '#' only ever separates path and id."""
    batch = tmp_path / "b"
    write(batch / "r.jsonl", jsonl({"id": "x.txt", "text": "record"}, {"id": "y", "text": "fine"}, {"id": "a#b.txt", "text": "hash id"}))
    write(batch / "r.jsonl#x.txt", "a file whose name looks like a record")
    write(batch / "r.jsonl#a#b.txt", "another look-alike")
    write(batch / "r.jsonl%23x.txt", "a file whose name looks like an encoded one")
    write(batch / "p#q.jsonl", jsonl({"id": "z", "text": "record of a file with '#' in its name"}))
    items = read(batch)
    docs = documents(items)  # asserts no doc_id is yielded twice
    assert rejections(items) == []
    assert set(docs) == {
        "r.jsonl#x.txt", "r.jsonl#y", "r.jsonl#a#b.txt",  # records: the path, '#', the id as it is
        "r.jsonl%23x.txt", "r.jsonl%23a%23b.txt", "r.jsonl%2523x.txt",  # whole files: the encoded path
        "p%23q.jsonl#z",
    }
    assert docs["r.jsonl#x.txt"].text == "record" and docs["r.jsonl#x.txt"].source == "r.jsonl"
    assert docs["r.jsonl%23x.txt"].source == "r.jsonl#x.txt"
    assert docs["r.jsonl%2523x.txt"].source == "r.jsonl%23x.txt"
    assert docs["p%23q.jsonl#z"].source == "p#q.jsonl"


def test_a_huge_line_is_rejected_by_its_length_before_it_is_parsed(tmp_path: Path, monkeypatch) -> None:
    """Issue 13 #3: a line longer than any record within the per-document cap can be is rejected by
    size while the file is scanned (json.loads never sees it); a parsed text over the cap is
    rejected with its size; the records around both are read."""
    from embedding_assets.lib.readers import jsonl as jsonl_reader

    cap = 1_000
    limit = jsonl_reader.max_line_bytes(cap)
    batch = tmp_path / "b"
    huge = {"id": "huge", "text": "a" * (limit + 10)}
    over = {"id": "over", "text": "b" * (cap + 1)}
    write(batch / "r.jsonl", jsonl({"id": "first", "text": "ok"}, huge, over, {"id": "last", "text": "ok too"}))
    parsed: list[int] = []
    real_loads = jsonl_reader.json.loads

    def recording_loads(text, *args, **kwargs):
        parsed.append(len(text))
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(jsonl_reader.json, "loads", recording_loads)
    items = read(batch, max_document_chars=cap)
    assert set(documents(items)) == {"r.jsonl#first", "r.jsonl#last"}
    assert max(parsed) < limit  # the huge line was never decoded into an object
    reason = rejection(items, "r.jsonl", "line 2").reason
    assert reason.startswith(f"record is {len(json.dumps(huge)):,} bytes on one line, over the {limit:,}-byte limit")
    assert "EMBEDDING_MAX_DOCUMENT_CHARS" in reason
    assert rejection(items, "r.jsonl", "over").reason == (
        f"document is {cap + 1:,} characters, over the {cap:,}-character cap per document "
        "(EMBEDDING_MAX_DOCUMENT_CHARS); split it into smaller documents (line 3)"
    )
