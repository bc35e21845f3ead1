"""Read one landed batch folder into documents and rejections: the walk over untrusted input.

A batch is a folder of files in the formats of `registry` (text, HTML, record files), each also
gzip-compressed (.gz). `read_batch` walks it in sorted order and yields, per file, either
`Document`s or `Rejection`s; it never raises for a bad file, so one bad file never stops the batch.
The input is untrusted: links are never followed out of the batch, only regular files are opened,
no file is read past `max_file_bytes` (after decompression), and every text and id is cleaned (no
lone surrogates, no NUL) and NFC-normalized.

Storage access is two small functions, `list_entries` (list the files) and `_read_capped` (open one
file's bytes under the cap); an object-storage batch is downloaded first and read here like any other.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace

from embedding_assets.lib.readers.base import Document, LandedFile, Rejected, Rejection, format_cap, has_surrogates, nfc
from embedding_assets.lib.readers.compression import decompress_capped
from embedding_assets.lib.readers.registry import is_hidden, reader_for

__all__ = ["DEFAULT_MAX_FILE_BYTES", "Entry", "check_root", "list_entries", "read_batch"]

DEFAULT_MAX_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the batch as listed, before it is read."""

    relpath: str  # NFC, '/'-separated: what Document.source and Rejection.source carry
    path: str  # what _read_capped opens: the target itself for a link inside the batch
    problem: str | None = None


def read_batch(
    batch_dir: str | os.PathLike[str], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Iterator[Document | Rejection]:
    """Yield the documents and rejections of one batch folder, file by file in sorted order.

    Raises FileNotFoundError / NotADirectoryError right away (not on first iteration) when
    `batch_dir` itself is missing or not a folder; bad files only ever become Rejections.
    """
    root = check_root(batch_dir)
    if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be a positive integer, got {max_file_bytes!r}")
    return _iter_batch(root, max_file_bytes)


def _iter_batch(root: str, cap: int) -> Iterator[Document | Rejection]:
    entries = list_entries(root)
    file_paths = frozenset(entry.relpath for entry in entries)
    for entry in entries:
        try:
            yield from _read_entry(entry, cap, file_paths)
        except Exception as exc:  # noqa: BLE001
            # Untrusted input can reach corners of the parsers we did not foresee; one such
            # file must not end the batch, and the reason still tells a person where to look.
            reason = f"unexpected error while reading the file: {type(exc).__name__}: {exc}"
            yield Rejection(entry.relpath, None, reason)


def _read_entry(entry: Entry, cap: int, file_paths: frozenset[str]) -> Iterator[Document | Rejection]:
    if entry.problem is not None:
        yield Rejection(entry.relpath, None, entry.problem)
        return
    try:
        reader, compressed = reader_for(entry.relpath)
        file = LandedFile(entry.relpath, _read_capped(entry, cap, compressed), cap, file_paths)
    except Rejected as rejected:
        yield Rejection(entry.relpath, None, rejected.reason)
        return
    # The reader holds the only reference to the file's bytes, so it can let go of them once
    # decoded (a text file's bytes and its text are then never both held with the document).
    documents = reader(file)
    del file
    yield from documents


def check_root(batch_dir: str | os.PathLike[str]) -> str:
    """The batch folder as a str path; FileNotFoundError / NotADirectoryError if it is not a folder."""
    root = os.fsdecode(os.fspath(batch_dir))
    if not stat.S_ISDIR(os.stat(root).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)
    return root


# --- storage: list files, read one file's bytes under a cap -------------------------------------


def list_entries(root: str) -> list[Entry]:
    """Every file under root the readers consider (no hidden names), sorted by NFC relative path.

    A file that cannot be read safely (a link out of the batch, a pipe, a name that is not UTF-8
    or that collides with another after NFC normalization, ...) is listed with its problem.
    """
    root_real = os.path.realpath(root)
    found: list[tuple[str, str, Entry]] = []
    stack = [("", root)]
    while stack:
        rel_dir, dir_path = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                children = list(it)
        except OSError as exc:
            shown = _shown_name(rel_dir) or "."
            found.append((shown, rel_dir, Entry(shown, dir_path, _os_reason("cannot list folder", exc))))
            continue
        for child in children:
            if is_hidden(child.name):
                continue
            raw_rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            shown = _shown_name(raw_rel)
            entry = _classify_child(child.path, shown, root_real)
            if entry is None:
                stack.append((raw_rel, child.path))
            else:
                found.append((shown, raw_rel, entry))
    found.sort(key=lambda item: (item[0], item[1]))
    entries: list[Entry] = []
    seen: set[str] = set()
    for shown, _raw, entry in found:
        if shown in seen and entry.problem is None:
            entry = replace(
                entry,
                problem="another file has the same name after Unicode (NFC) normalization; rename one of them",
            )
        seen.add(shown)
        entries.append(entry)
    return entries


def _classify_child(path: str, shown: str, root_real: str) -> Entry | None:
    """An entry for a file, link or oddity; None for a real folder to descend into."""
    name = os.path.basename(path)
    if has_surrogates(name):
        # os.scandir hands undecodable bytes back as lone surrogates (surrogateescape).
        return Entry(shown, path, "file name is not valid UTF-8; rename it")
    try:
        st = os.lstat(path)
    except OSError as exc:
        return Entry(shown, path, _os_reason("cannot read file information", exc))
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISREG(st.st_mode):
        return Entry(shown, path)
    if stat.S_ISLNK(st.st_mode):
        return _classify_link(path, shown, root_real)
    return Entry(shown, path, f"not a regular file ({_file_kind(st.st_mode)})")


def _classify_link(path: str, shown: str, root_real: str) -> Entry:
    # Containment is decided before the target is touched, so a rejection never tells
    # whether some path outside the batch exists.
    target = os.path.realpath(path)
    if os.path.commonpath([root_real, target]) != root_real:
        return Entry(shown, path, "symbolic link points outside the batch folder")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return Entry(shown, path, "broken symbolic link (its target does not exist)")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Entry(shown, path, "symbolic link loop (following it never reaches a file)")
        return Entry(shown, path, _os_reason("cannot follow symbolic link", exc))
    if stat.S_ISDIR(st.st_mode):
        # Following folder links invites cycles and reads the same files twice; the target
        # folder is inside the batch and is read under its own name anyway.
        reason = "symbolic link to a folder is not followed; its target is read under its own path"
        return Entry(shown, path, reason)
    if not stat.S_ISREG(st.st_mode):
        return Entry(shown, path, f"symbolic link to a non-regular file ({_file_kind(st.st_mode)})")
    return Entry(shown, target)


def _read_capped(entry: Entry, cap: int, compressed: bool) -> bytes | bytearray:
    """The file's content (decompressed for .gz), at most `cap` bytes, else Rejected."""
    # O_NOFOLLOW: the path was checked at listing time; a link swapped in since must not be
    # followed. O_NONBLOCK: a FIFO swapped in must not block the open.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(entry.path, flags)
    except OSError as exc:
        raise Rejected(_os_reason("cannot open file", exc)) from None
    with open(fd, "rb") as raw:
        try:
            st = os.fstat(raw.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Rejected(f"not a regular file ({_file_kind(st.st_mode)})")
            if st.st_size > cap:
                raise Rejected(_too_big(st.st_size, cap))
            if compressed:
                return decompress_capped(raw, cap)
            data = raw.read(cap + 1)
        except OSError as exc:
            raise Rejected(_os_reason("cannot read file", exc)) from None
    if len(data) > cap:
        raise Rejected(_too_big(len(data), cap))
    return data


# --- small helpers ---------------------------------------------------------------------------------


def _shown_name(raw_rel: str) -> str:
    """A relative path as data: valid UTF-8 (bad bytes become U+FFFD), NFC, '/'-separated."""
    if has_surrogates(raw_rel):
        raw_rel = raw_rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return nfc(raw_rel.replace(os.sep, "/"))


def _os_reason(what: str, exc: OSError) -> str:
    return f"{what}: {exc.strerror or exc}"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "an unknown kind of file"


def _too_big(size: int, cap: int) -> str:
    return f"file is {size} bytes, over the {format_cap(cap)} cap; split it into smaller files"
