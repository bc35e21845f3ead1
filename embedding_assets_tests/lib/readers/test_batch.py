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
from embedding_assets.lib.readers.base import format_cap, path_doc_id, record_doc_id
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
    assert {item.doc_id for item in nfc_items} == {
        record_doc_id(f"{nfc_name}.jsonl", nfc_name), path_doc_id(f"{nfc_name}.txt")
    }
    assert {item.content_hash for item in nfc_items} == {sha(unicodedata.normalize("NFC", text))}


# --- links at every level, the parent-folder swap race, files that change while read --------------


def test_batch_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """A batch folder that is itself a symbolic link (here: out of the landing area) is never read."""
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside the landing area")
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "b").symlink_to(outside, target_is_directory=True)
    with pytest.raises(batch_walk.BatchFolderIsLink, match="batch folder is a symbolic link") as info:
        read_batch(landing / "b")
    assert isinstance(info.value, NotADirectoryError)  # what the raw_documents asset reports as a failure
    with pytest.raises(batch_walk.BatchFolderIsLink):
        listed(landing / "b")


def test_parent_folder_swapped_for_a_link_between_listing_and_reading(tmp_path: Path, monkeypatch) -> None:
    """The race of issue 13 #5: after the walk lists sub/deep/x.txt, 'sub' is replaced by a link to a
    folder outside holding the same names. The file is opened through the folders' descriptors with
    O_NOFOLLOW per component, so the outside file is never read and the rejection says why."""
    batch = tmp_path / "b"
    write(batch / "a.txt", "inside a")
    write(batch / "sub" / "deep" / "x.txt", "inside x")
    write(batch / "sub" / "y.txt", "inside y")
    outside = tmp_path / "outside"
    write(outside / "deep" / "x.txt", "OUTSIDE x")
    write(outside / "y.txt", "OUTSIDE y")
    real_list = batch_walk._list

    def list_then_swap(root_fd, root):
        entries = real_list(root_fd, root)
        os.rename(batch / "sub", tmp_path / "moved-away")
        (batch / "sub").symlink_to(outside, target_is_directory=True)
        return entries

    monkeypatch.setattr(batch_walk, "_list", list_then_swap)
    items = read(batch)
    docs = documents(items)
    assert set(docs) == {"a.txt"}
    assert all("OUTSIDE" not in d.text for d in docs.values())
    for name in ("sub/deep/x.txt", "sub/y.txt"):
        reason = rejection(items, name).reason
        assert "the folder 'sub' on the file's path is a symbolic link" in reason and "not followed" in reason


def test_file_swapped_for_a_link_between_listing_and_reading(tmp_path: Path, monkeypatch) -> None:
    batch = tmp_path / "b"
    write(batch / "x.txt", "inside")
    outside = write(tmp_path / "outside.txt", "OUTSIDE")
    real_list = batch_walk._list

    def list_then_swap(root_fd, root):
        entries = real_list(root_fd, root)
        (batch / "x.txt").unlink()
        (batch / "x.txt").symlink_to(outside)
        return entries

    monkeypatch.setattr(batch_walk, "_list", list_then_swap)
    items = read(batch)
    assert documents(items) == {}
    assert "the file is a symbolic link" in rejection(items, "x.txt").reason


def test_batch_folder_swapped_after_the_check_is_still_read_from_the_checked_folder(tmp_path: Path, monkeypatch) -> None:
    """The batch folder's descriptor is held from the start: swapping the folder for a link later
    changes nothing that is read."""
    landing = tmp_path / "landing"
    write(landing / "b" / "x.txt", "inside")
    write(tmp_path / "outside" / "x.txt", "OUTSIDE")
    real_list = batch_walk._list

    def list_then_swap(root_fd, root):
        entries = real_list(root_fd, root)
        os.rename(landing / "b", tmp_path / "moved")
        (landing / "b").symlink_to(tmp_path / "outside", target_is_directory=True)
        return entries

    monkeypatch.setattr(batch_walk, "_list", list_then_swap)
    docs = documents(read(landing / "b"))
    assert {d: v.text for d, v in docs.items()} == {"x.txt": "inside"}


def _rewrite_during_reads(monkeypatch, path: Path, times: int) -> list[int]:
    """Make the next `times` reads of `path` see it rewritten in place (shorter) right after the
    bytes were read: the torn copy of a file being written while read."""
    real_read = batch_walk._read_content
    count = [0]

    def read_then_rewrite(raw, cap, compressed):
        data = real_read(raw, cap, compressed)
        if os.path.samestat(os.fstat(raw.fileno()), os.stat(path)) and count[0] < times:
            count[0] += 1
            with open(path, "r+b") as handle:  # same inode, new size and mtime
                handle.truncate(0)
                handle.write(b"rewritten %d" % count[0])
        return data

    monkeypatch.setattr(batch_walk, "_read_content", read_then_rewrite)
    return count


def test_file_that_changes_while_read_is_read_again(tmp_path: Path, monkeypatch) -> None:
    batch = tmp_path / "b"
    path = write(batch / "x.txt", "original content " * 1000)
    write(batch / "y.txt", "steady")
    count = _rewrite_during_reads(monkeypatch, path, times=1)
    docs = documents(read(batch))
    assert count[0] == 1
    assert docs["x.txt"].text == "rewritten 1"  # the second read, which nothing disturbed
    assert docs["y.txt"].text == "steady"


def test_file_that_keeps_changing_while_read_is_rejected(tmp_path: Path, monkeypatch) -> None:
    batch = tmp_path / "b"
    path = write(batch / "x.txt", "original content " * 1000)
    write(batch / "y.txt", "steady")
    count = _rewrite_during_reads(monkeypatch, path, times=5)
    items = read(batch)
    assert count[0] == 2  # read twice, then given up
    assert set(documents(items)) == {"y.txt"}
    assert rejection(items, "x.txt").reason.startswith("file changed while it was read")
