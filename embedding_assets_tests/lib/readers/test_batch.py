"""The batch walk over untrusted input: names, hidden files, links, permissions, and the ids' stability.

Every batch is built in a temporary folder; nothing here touches the network or a GPU.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_assets.lib.readers import Document, read_batch
from embedding_assets.lib.readers import batch as batch_walk
from embedding_assets.lib.readers.base import format_cap
from embedding_assets_tests.lib.readers.helpers import documents, jsonl, listed, read, rejection, rejections, sha, write


def test_default_cap_message() -> None:
    assert format_cap(256 * 2**20) == "256 MiB"


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

    assert listed(batch) == ["README", "UPPER.TXT", "archive.tar.gz", "report.pdf", "sub/deep/a.txt"]
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

    monkeypatch.setattr(batch_walk.os, "open", failing_open)
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
        listed(tmp_path / "nope")
    with pytest.raises(ValueError):
        read_batch(tmp_path, max_file_bytes=0)


def test_empty_batch(tmp_path: Path) -> None:
    write(tmp_path / "_READY", "")
    assert read(tmp_path) == []
    assert listed(tmp_path) == []


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
