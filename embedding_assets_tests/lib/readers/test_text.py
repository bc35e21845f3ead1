"""Text files: decoding, binary sniffing, empty documents, big and multilingual text."""

from __future__ import annotations

import gzip
import unicodedata
from pathlib import Path

from embedding_assets_tests.lib.readers.helpers import documents, read, rejection, rejections, write


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


def test_documents_over_the_character_cap_are_rejected_with_their_size(tmp_path: Path) -> None:
    """Issue 13 #3: every format enforces EMBEDDING_MAX_DOCUMENT_CHARS; the reason names the size."""
    import pyarrow as pa

    from embedding_assets_tests.lib.readers.helpers import parquet_bytes

    cap = 100
    batch = tmp_path / "b"
    write(batch / "at_cap.txt", "é" * cap)  # 100 characters, 200 bytes: within the cap
    write(batch / "over.txt", "x" * (cap + 1))
    write(batch / "way_over.txt", "x" * (4 * cap + 1))  # rejected before decoding: more bytes than 4 per character
    write(batch / "over.html", "<p>" + "y" * (cap + 1) + "</p>")
    write(batch / "r.csv", "id,text\nok,fine\nbig," + "z" * (cap + 1) + "\n")
    write(batch / "r.parquet", parquet_bytes(pa.table({"id": ["ok", "big"], "text": ["fine", "w" * (4 * cap + 1)]})))
    items = read(batch, max_document_chars=cap)
    assert set(documents(items)) == {"at_cap.txt", "r.csv#ok", "r.parquet#ok"}
    suffix = f"over the {cap}-character cap per document (EMBEDDING_MAX_DOCUMENT_CHARS); split it into smaller documents"
    assert rejection(items, "over.txt").reason == f"document is {cap + 1} characters, {suffix}"
    assert rejection(items, "way_over.txt").reason == f"document is {4 * cap + 1} bytes, {suffix}"
    assert rejection(items, "over.html").reason == f"document is {cap + 1} characters, {suffix}"
    assert rejection(items, "r.csv", "big").reason == f"document is {cap + 1} characters, {suffix} (row 2)"
    assert rejection(items, "r.parquet", "big").reason == f"document is {4 * cap + 1} bytes, {suffix} (row 2)"
