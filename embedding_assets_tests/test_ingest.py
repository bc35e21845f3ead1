"""Tests for embedding_assets.lib.ingest: every file type, every bad input, and the ids' stability.

Every batch is built in a temporary folder; nothing here touches the network or a GPU.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_assets.lib import ingest
from embedding_assets.lib.ingest import Document, Rejection, list_batch_files, read_batch


def read(batch: Path, **kwargs) -> list[Document | Rejection]:
    return list(read_batch(batch, **kwargs))


def documents(items) -> dict[str, Document]:
    out = {}
    for item in items:
        if isinstance(item, Document):
            assert item.doc_id not in out, f"doc_id {item.doc_id} yielded twice"
            out[item.doc_id] = item
    return out


def rejections(items) -> list[Rejection]:
    return [item for item in items if isinstance(item, Rejection)]


def rejection(items, source: str, record: str | None = None) -> Rejection:
    found = [r for r in rejections(items) if r.source == source and r.record == record]
    assert len(found) == 1, f"expected one rejection for {source!r}/{record!r}, got {found} among {rejections(items)}"
    return found[0]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def jsonl(*lines: object) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


HTML = (
    "<!doctype html><html><head><title>Not shown</title><style>p { color: red }</style>"
    "<script>var hidden = 1;</script></head><body><h1>Fish &amp; Chips</h1>"
    "<p>First\n  paragraph</p><script>alert('no')</script><p>Second<br>line &eacute;</p>"
    "<ul><li>one</li><li>two</li></ul></body></html>"
)
HTML_TEXT = "Fish & Chips\n\nFirst paragraph\n\nSecond\nline é\n\none\ntwo"


# --- file types ------------------------------------------------------------------------------------


def test_every_supported_type_plain_and_gzip(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    bodies = {".txt": "plain text", ".md": "# Title\n\nmarkdown *body*", ".rst": "Title\n=====\n\nrst body"}
    for suffix, body in bodies.items():
        write(batch / f"doc{suffix}", body)
        write(batch / f"doc{suffix}.gz", gzip.compress(body.encode()))
    write(batch / "page.html", HTML)
    write(batch / "page.htm.gz", gzip.compress(HTML.encode()))
    write(batch / "recs.jsonl", jsonl({"id": "a", "text": "alpha"}, {"id": 2, "text": "beta"}))
    write(batch / "recs.jsonl.gz", gzip.compress(jsonl({"id": "a", "text": "gamma"}).encode()))
    table = pa.table({"id": ["p1", "p2"], "text": ["parquet one", "parquet two"], "extra": [1, 2]})
    write(batch / "tab.parquet", parquet_bytes(table))
    write(batch / "tab.parquet.gz", gzip.compress(parquet_bytes(table)))

    items = read(batch)
    assert rejections(items) == []
    docs = documents(items)
    for suffix, body in bodies.items():
        assert docs[f"doc{suffix}"].text == body
        assert docs[f"doc{suffix}.gz"].text == body
        assert docs[f"doc{suffix}"].content_hash == docs[f"doc{suffix}.gz"].content_hash == sha(body)
    assert docs["page.html"].text == HTML_TEXT
    assert docs["page.htm.gz"].text == HTML_TEXT
    assert docs["recs.jsonl#a"].text == "alpha"
    assert docs["recs.jsonl#2"].text == "beta"
    assert docs["recs.jsonl.gz#a"].text == "gamma"
    assert docs["recs.jsonl.gz#a"].source == "recs.jsonl.gz"
    assert docs["tab.parquet#p1"].text == "parquet one"
    assert docs["tab.parquet.gz#p2"].text == "parquet two"
    assert set(docs) == {
        *(f"doc{s}" for s in bodies), *(f"doc{s}.gz" for s in bodies), "page.html", "page.htm.gz",
        "recs.jsonl#a", "recs.jsonl#2", "recs.jsonl.gz#a",
        "tab.parquet#p1", "tab.parquet#p2", "tab.parquet.gz#p1", "tab.parquet.gz#p2",
    }  # fmt: skip
    for doc in docs.values():
        assert doc.size_bytes == len(doc.text.encode("utf-8"))
        assert doc.content_hash == sha(doc.text)
        assert doc.flags == ""
    assert list_batch_files(batch) == sorted(list_batch_files(batch))
    sources = [item.source for item in items if isinstance(item, Document)]
    assert sources == sorted(sources)


def test_html_edge_cases() -> None:
    html = ingest._html_to_text
    assert html("<head><meta charset='utf-8'>Implicit body<p>next") == "Implicit body\n\nnext"
    assert html("<div>a</div><div>b</div>") == "a\n\nb"
    assert html("<table><tr><td>1</td><td>2</td></tr><tr><td>3</td></tr></table>") == "1 2\n3"
    assert html("<p>&lt;tag&gt; &#x1F600; &nbsp;x</p>") == "<tag> \U0001f600 x"
    assert html("<pre>a\n  b</pre>") == "a\nb"
    assert html("<script>x</script><style>y</style>") == ""


def test_html_without_visible_text_is_empty(tmp_path: Path) -> None:
    write(tmp_path / "b" / "blank.html", "<html><head><title>t</title></head><body><script>1</script></body></html>")
    assert rejection(read(tmp_path / "b"), "blank.html").reason == "empty document (no text after decoding)"


# --- text decoding ---------------------------------------------------------------------------------


def test_bad_text_files_are_rejected_and_the_batch_continues(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    write(batch / "a_good.txt", "first good")
    write(batch / "b_empty.txt", b"")
    write(batch / "c_blank.md", " \n\t\r\n  ")
    write(batch / "d_binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    write(batch / "e_controls.txt", bytes([1, 2, 3, 4, 5, 6, 7, 8, 65, 66]) * 100)
    write(batch / "f_utf16.txt", "hello".encode("utf-16"))
    write(batch / "g_invalid.txt", b"caf\xe9 and \xff\xfe more")
    write(batch / "h_bom.txt", b"\xef\xbb\xbfwith bom")
    write(batch / "i_late_nul.txt", b"x" * 9000 + b"\x00tail")
    write(batch / "j_empty.txt.gz", gzip.compress(b"   \n"))
    write(batch / "z_good.txt", "last good")

    items = read(batch)
    docs = documents(items)
    assert set(docs) == {"a_good.txt", "g_invalid.txt", "h_bom.txt", "i_late_nul.txt", "z_good.txt"}
    assert docs["z_good.txt"].text == "last good"
    assert rejection(items, "b_empty.txt").reason == "empty document (no text after decoding)"
    assert rejection(items, "c_blank.md").reason == "empty document (no text after decoding)"
    assert rejection(items, "j_empty.txt.gz").reason == "empty document (no text after decoding)"
    assert rejection(items, "d_binary.txt").reason.startswith("binary file (not text)")
    assert rejection(items, "e_controls.txt").reason.startswith("binary file (not text)")
    assert "UTF-16" in rejection(items, "f_utf16.txt").reason
    invalid = docs["g_invalid.txt"]
    assert invalid.text == "caf\ufffd and \ufffd\ufffd more"
    assert invalid.flags == "invalid-utf8-replaced"
    assert docs["h_bom.txt"].text == "with bom"
    assert docs["i_late_nul.txt"].text == "x" * 9000 + "tail"
    assert docs["i_late_nul.txt"].flags == "nul-removed"
    assert len(rejections(items)) == 6


def test_big_single_line_cjk_rtl_emoji_and_duplicates(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    big = "word " * 200_000
    multilingual = "日本語のテキスト 中文 한국어 — עברית مرحبا بالعالم — 👩‍👩‍👧 🇺🇳 ✔︎"
    write(batch / "big.txt", big)
    write(batch / "multi.txt", multilingual)
    write(batch / "copy1.txt", "same content")
    write(batch / "sub" / "copy2.txt", "same content")
    write(batch / "nfd.txt", unicodedata.normalize("NFD", "café Å"))

    docs = documents(read(batch))
    assert docs["big.txt"].text == big and docs["big.txt"].size_bytes == 1_000_000
    assert docs["multi.txt"].text == unicodedata.normalize("NFC", multilingual)
    assert docs["copy1.txt"].content_hash == docs["sub/copy2.txt"].content_hash
    assert docs["sub/copy2.txt"].source == "sub/copy2.txt"
    assert docs["nfd.txt"].text == "café Å" == unicodedata.normalize("NFC", "café Å")


# --- jsonl -----------------------------------------------------------------------------------------


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


def test_record_doc_id_that_collides_with_a_file_path_is_rejected(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    write(batch / "r.jsonl", jsonl({"id": "x.txt", "text": "record"}, {"id": "y", "text": "fine"}))
    write(batch / "r.jsonl#x.txt", "a file whose name looks like a record")
    items = read(batch)
    assert set(documents(items)) == {"r.jsonl#y", "r.jsonl#x.txt"}
    assert documents(items)["r.jsonl#x.txt"].source == "r.jsonl#x.txt"
    assert "also the path of a file" in rejection(items, "r.jsonl", "x.txt").reason


# --- parquet ---------------------------------------------------------------------------------------


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


# --- gzip and size caps ----------------------------------------------------------------------------


def test_gzip_problems_and_size_caps(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    good = gzip.compress(b"compressed text " * 100)
    write(batch / "bomb.txt.gz", gzip.compress(b"a" * 20_000_000, compresslevel=9))
    write(batch / "corrupt.txt.gz", good[:10] + b"\xff" * 20 + good[30:])
    write(batch / "notgzip.txt.gz", b"plain text pretending")
    write(batch / "truncated.txt.gz", good[: len(good) // 2])
    write(batch / "toolarge.txt", b"b" * 1_000_001)
    write(batch / "exact.txt", b"c" * 1_000_000)
    write(batch / "ok.txt.gz", good)

    items = read(batch, max_file_bytes=1_000_000)
    docs = documents(items)
    assert set(docs) == {"exact.txt", "ok.txt.gz"}
    assert rejection(items, "bomb.txt.gz").reason == (
        "decompressed size exceeds the 1000000-byte cap (possible decompression bomb)"
    )
    corrupt = rejection(items, "corrupt.txt.gz").reason
    assert corrupt.startswith("corrupt gzip stream: Error -3 while decompressing data")
    assert rejection(items, "notgzip.txt.gz").reason.startswith("corrupt gzip stream: Not a gzipped file")
    assert rejection(items, "truncated.txt.gz").reason.startswith("truncated gzip stream")
    assert rejection(items, "toolarge.txt").reason.startswith("file is 1000001 bytes, over the 1000000-byte cap")


def test_gzip_is_read_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    real_read = gzip.GzipFile.read

    def spy(self, size=-1):
        asked.append(size)
        return real_read(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", spy)
    write(tmp_path / "b" / "bomb.txt.gz", gzip.compress(b"a" * 5_000_000))
    items = read(tmp_path / "b", max_file_bytes=3 * 2**20)
    assert "3 MiB cap" in rejection(items, "bomb.txt.gz").reason
    assert asked and all(0 < size <= 2**20 for size in asked)


def test_default_cap_message() -> None:
    assert ingest._format_cap(256 * 2**20) == "256 MiB"


# --- the walk: names, hidden files, links, permissions ---------------------------------------------


def test_hidden_markers_and_unsupported_types(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    write(batch / "_READY", "")
    write(batch / "_SUCCESS", "")
    write(batch / ".hidden.txt", "secret")
    write(batch / ".git" / "config.txt", "hidden dir")
    write(batch / "_tmp" / "part.txt", "marker dir")
    write(batch / "sub" / ".DS_Store", "x")
    write(batch / "report.pdf", b"%PDF-1.4")
    write(batch / "archive.tar.gz", gzip.compress(b"x"))
    write(batch / "README", "no suffix")
    write(batch / "UPPER.TXT", "upper-case suffix")
    write(batch / "sub" / "deep" / "a.txt", "nested")

    assert list_batch_files(batch) == ["README", "UPPER.TXT", "archive.tar.gz", "report.pdf", "sub/deep/a.txt"]
    items = read(batch)
    assert set(documents(items)) == {"UPPER.TXT", "sub/deep/a.txt"}
    pdf = rejection(items, "report.pdf").reason
    assert pdf.startswith("unsupported file type '.pdf'; supported: .txt, .md, .rst, .html, .htm, .jsonl, .parquet")
    assert rejection(items, "archive.tar.gz").reason.startswith("unsupported file type '.tar.gz'")
    assert rejection(items, "README").reason.startswith("unsupported file type (the name has no suffix)")
    assert len(rejections(items)) == 3


def test_symbolic_links(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    outside = write(tmp_path / "outside.txt", "outside the batch")
    (tmp_path / "outdir").mkdir()
    write(tmp_path / "outdir" / "x.txt", "outside folder")
    write(batch / "real.txt", "real content")
    write(batch / "sub" / "inner.txt", "inner")
    (batch / "link_out.txt").symlink_to(outside)
    (batch / "link_out_rel.txt").symlink_to("../outside.txt")
    (batch / "link_in.txt").symlink_to("real.txt")
    (batch / "link_broken.txt").symlink_to("missing.txt")
    (batch / "link_broken_out.txt").symlink_to(tmp_path / "missing.txt")
    (batch / "link_dir_out").symlink_to(tmp_path / "outdir")
    (batch / "link_dir_in").symlink_to("sub")
    (batch / "loop.txt").symlink_to("loop.txt")

    items = read(batch)
    docs = documents(items)
    assert set(docs) == {"real.txt", "sub/inner.txt", "link_in.txt"}
    assert docs["link_in.txt"].text == "real content" and docs["link_in.txt"].source == "link_in.txt"
    assert docs["link_in.txt"].content_hash == docs["real.txt"].content_hash
    outside_reason = "symbolic link points outside the batch folder"
    for name in ("link_out.txt", "link_out_rel.txt", "link_dir_out", "link_broken_out.txt"):
        assert rejection(items, name).reason == outside_reason
    assert rejection(items, "link_broken.txt").reason.startswith("broken symbolic link")
    assert "folder is not followed" in rejection(items, "link_dir_in").reason
    assert "loop" in rejection(items, "loop.txt").reason
    assert all("outside" not in d.text for d in docs.values())


def test_unreadable_file_via_chmod(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    locked = write(batch / "locked.txt", "no access")
    write(batch / "open.txt", "readable")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user (root) can read a mode-000 file")
        items = read(batch)
        assert rejection(items, "locked.txt").reason == "cannot open file: Permission denied"
        assert set(documents(items)) == {"open.txt"}
    finally:
        locked.chmod(0o644)


def test_open_error_becomes_a_rejection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = tmp_path / "b"
    write(batch / "locked.txt", "no access")
    write(batch / "open.txt", "readable")
    real_open = os.open

    def failing_open(path, flags, *args, **kwargs):
        if os.fspath(path).endswith("locked.txt"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(ingest.os, "open", failing_open)
    items = read(batch)
    assert rejection(items, "locked.txt").reason == "cannot open file: Permission denied"
    assert set(documents(items)) == {"open.txt"}


def test_fifo_is_not_read(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    batch = tmp_path / "b"
    write(batch / "ok.txt", "fine")
    os.mkfifo(batch / "pipe.txt")
    items = read(batch)
    assert rejection(items, "pipe.txt").reason == "not a regular file (a named pipe)"
    assert set(documents(items)) == {"ok.txt"}


def test_names_that_are_not_utf8_or_collide_after_nfc(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    batch.mkdir()
    try:
        with open(os.path.join(os.fsencode(batch), b"bad\xff.txt"), "wb") as handle:
            handle.write(b"text")
    except OSError:
        pytest.skip("the file system refuses names that are not UTF-8")
    nfc, nfd = unicodedata.normalize("NFC", "é.txt"), unicodedata.normalize("NFD", "é.txt")
    write(batch / nfc, "composed")
    write(batch / nfd, "decomposed")

    items = read(batch)
    assert "not valid UTF-8" in rejection(items, "bad\ufffd.txt").reason
    docs = documents(items)
    assert list(docs) == [nfc]
    assert rejection(items, nfc).reason.startswith("another file has the same name after Unicode (NFC)")


def test_missing_batch_folder_raises_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_batch(tmp_path / "nope")
    write(tmp_path / "file.txt", "x")
    with pytest.raises(NotADirectoryError):
        read_batch(tmp_path / "file.txt")
    with pytest.raises(FileNotFoundError):
        list_batch_files(tmp_path / "nope")
    with pytest.raises(ValueError):
        read_batch(tmp_path, max_file_bytes=0)


def test_empty_batch(tmp_path: Path) -> None:
    write(tmp_path / "_READY", "")
    assert read(tmp_path) == []
    assert list_batch_files(tmp_path) == []


# --- properties ------------------------------------------------------------------------------------

_name_chars = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="/\\"
)
file_names = st.text(_name_chars, min_size=1, max_size=12).filter(
    lambda name: not name.startswith((".", "_"))
    and not name.isspace()
    and len(unicodedata.normalize("NFD", name).encode("utf-8")) < 200
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=60).filter(
    # A leading U+FEFF is a BOM to a text file but data to a JSON string.
    lambda text: not text.startswith("\ufeff") and not unicodedata.normalize("NFC", text).isspace()
)
_fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(files=st.dictionaries(file_names, texts, min_size=1, max_size=5))
def test_doc_ids_are_stable_across_reads(files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp)
        for name, text in files.items():
            write(batch / f"{name}.txt", text)
            write(batch / "recs" / f"{name}.jsonl", jsonl({"id": name, "text": text}))
        first, second = read(batch), read(batch)
    assert first == second
    assert [item.doc_id for item in first if isinstance(item, Document)] == [
        item.doc_id for item in second if isinstance(item, Document)
    ]


@_fast
@given(name=file_names, text=texts)
def test_nfc_and_nfd_spellings_give_the_same_ids_and_hashes(name: str, text: str) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for form in ("NFC", "NFD"):
            batch = Path(tmp) / form
            spelled = unicodedata.normalize(form, name)
            write(batch / f"{spelled}.txt", unicodedata.normalize(form, text))
            write(batch / f"{spelled}.jsonl", jsonl({"id": spelled, "text": unicodedata.normalize(form, text)}))
            results.append(read(batch))
    nfc_items, nfd_items = results
    assert nfc_items == nfd_items
    assert all(isinstance(item, Document) for item in nfc_items)
    nfc_name = unicodedata.normalize("NFC", name)
    assert {item.doc_id for item in nfc_items} == {f"{nfc_name}.jsonl#{nfc_name}", f"{nfc_name}.txt"}
    assert {item.content_hash for item in nfc_items} == {sha(unicodedata.normalize("NFC", text))}
