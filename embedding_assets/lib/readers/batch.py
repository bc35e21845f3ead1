"""Read one landed batch folder into documents and rejections: the walk over untrusted input.

A batch is a folder of files in the formats of `registry` (text, HTML, record files), each also
gzip-compressed (.gz). `read_batch` walks it in sorted order and yields, per file, either
`Document`s or `Rejection`s; it never raises for a bad file, so one bad file never stops the batch.

The input is untrusted:
- Links are refused at every level. The batch folder itself must not be a symbolic link
  (`BatchFolderIsLink`); inside it, every folder and file is opened relative to its parent's
  file descriptor with O_NOFOLLOW (openat per path component), from the batch folder's descriptor
  held for the whole read. A folder swapped for a link between listing and reading is therefore
  never followed: the file is rejected and the reason says so. A link to a file inside the batch is
  read as its target's path inside the batch (the same descriptor walk); links out are rejected.
- Only regular files are opened, no file is read past `max_file_bytes` (after decompression), and no
  document is longer than `max_document_chars` characters.
- A file that changes while it is read (its size, modification or change time differ before and
  after the read, on the same descriptor) is read once more, then rejected if it changed again.
- Every text and id is cleaned (no lone surrogates, no NUL) and NFC-normalized.

Storage access is `list_entries` (list the files) and `_read_capped` (open one file's bytes under
the cap); an object-storage batch is downloaded first and read here like any other.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace

from embedding_assets.lib.readers.base import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    Document,
    LandedFile,
    Rejected,
    Rejection,
    format_cap,
    has_surrogates,
    nfc,
)
from embedding_assets.lib.readers.compression import decompress_capped
from embedding_assets.lib.readers.registry import is_hidden, reader_for

__all__ = [
    "DEFAULT_MAX_DOCUMENT_CHARS", "DEFAULT_MAX_FILE_BYTES", "BatchFolderIsLink", "Entry", "check_root",
    "list_entries", "read_batch",
]

DEFAULT_MAX_FILE_BYTES = 256 * 2**20

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# A folder: never through a link (O_NOFOLLOW), and it must be a folder (O_DIRECTORY).
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
# A file: never through a link; O_NONBLOCK so that a FIFO swapped in cannot block the open.
_FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_READ_ATTEMPTS = 2  # a file that changed while read is read once more, then rejected


class BatchFolderIsLink(NotADirectoryError):
    """The batch folder is a symbolic link: it is not read (it could lead out of the landing area)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the batch as listed, before it is read."""

    relpath: str  # NFC, '/'-separated: what Document.source and Rejection.source carry
    parts: tuple[str, ...]  # what _read_capped opens, one component per level under the batch folder
    problem: str | None = None  # (the target's path inside the batch for a link inside the batch)


def read_batch(
    batch_dir: str | os.PathLike[str],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
) -> Iterator[Document | Rejection]:
    """Yield the documents and rejections of one batch folder, file by file in sorted order.

    Raises FileNotFoundError / NotADirectoryError (BatchFolderIsLink for a symbolic link) right
    away, not on first iteration, when `batch_dir` itself is missing or not a real folder; bad
    files only ever become Rejections.
    """
    root = check_root(batch_dir)
    for name, value in (("max_file_bytes", max_file_bytes), ("max_document_chars", max_document_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return _iter_batch(root, max_file_bytes, max_document_chars)


def _iter_batch(root: str, cap: int, max_chars: int) -> Iterator[Document | Rejection]:
    # The batch folder's descriptor is held for the whole read: whatever happens to its path
    # meanwhile, every file is opened inside the folder that was checked.
    root_fd = open_root(root)
    try:
        entries = _list(root_fd, root)
        for entry in entries:
            try:
                yield from _read_entry(root_fd, entry, cap, max_chars)
            except Exception as exc:  # noqa: BLE001
                # Untrusted input can reach corners of the parsers we did not foresee; one such
                # file must not end the batch, and the reason still tells a person where to look.
                reason = f"unexpected error while reading the file: {type(exc).__name__}: {exc}"
                yield Rejection(entry.relpath, None, reason)
    finally:
        os.close(root_fd)


def _read_entry(root_fd: int, entry: Entry, cap: int, max_chars: int) -> Iterator[Document | Rejection]:
    if entry.problem is not None:
        yield Rejection(entry.relpath, None, entry.problem)
        return
    try:
        reader, compressed = reader_for(entry.relpath)
        file = LandedFile(entry.relpath, _read_capped(root_fd, entry, cap, compressed), cap, max_chars)
    except Rejected as rejected:
        yield Rejection(entry.relpath, None, rejected.reason)
        return
    # The reader holds the only reference to the file's bytes, so it can let go of them once
    # decoded (a text file's bytes and its text are then never both held with the document).
    documents = reader(file)
    del file
    yield from documents


def check_root(batch_dir: str | os.PathLike[str]) -> str:
    """The batch folder as a str path: FileNotFoundError if missing, BatchFolderIsLink if it is a
    symbolic link, NotADirectoryError if it is not a folder."""
    root = os.fsdecode(os.fspath(batch_dir))
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(root)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)
    return root


def open_root(root: str) -> int:
    """A descriptor of the batch folder, opened without following a link in its last component."""
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(root):
            raise _link_error(root) from None
        raise


def _link_error(root: str) -> BatchFolderIsLink:
    return BatchFolderIsLink(
        errno.ENOTDIR,
        "the batch folder is a symbolic link; it is not followed (a batch must be a real folder in the "
        "landing area: copy or move the files there instead of linking them)",
        root,
    )


# --- storage: list files, read one file's bytes under a cap -------------------------------------


def list_entries(root: str) -> list[Entry]:
    """Every file under root the readers consider (no hidden names), sorted by NFC relative path.

    A file that cannot be read safely (a link out of the batch, a pipe, a name that is not UTF-8
    or that collides with another after NFC normalization, ...) is listed with its problem.
    """
    root_fd = open_root(check_root(root))
    try:
        return _list(root_fd, root)
    finally:
        os.close(root_fd)


def _list(root_fd: int, root: str) -> list[Entry]:
    root_real = os.path.realpath(root)
    found: list[tuple[str, str, Entry]] = []
    stack: list[tuple[str, tuple[str, ...]]] = [("", ())]
    while stack:
        rel_dir, dir_parts = stack.pop()
        try:
            dir_fd = _open_dirs(root_fd, dir_parts)
        except Rejected as rejected:
            shown = _shown_name(rel_dir)
            found.append((shown, rel_dir, Entry(shown, dir_parts, rejected.reason)))
            continue
        try:
            with os.scandir(dir_fd) as it:
                names = [child.name for child in it]
        except OSError as exc:
            shown = _shown_name(rel_dir) or "."
            found.append((shown, rel_dir, Entry(shown, dir_parts, _os_reason("cannot list folder", exc))))
            os.close(dir_fd)
            continue
        try:
            for name in names:
                if is_hidden(name):
                    continue
                raw_rel = f"{rel_dir}/{name}" if rel_dir else name
                shown = _shown_name(raw_rel)
                parts = (*dir_parts, name)
                entry = _classify_child(dir_fd, parts, shown, root, root_real)
                if entry is None:
                    stack.append((raw_rel, parts))
                else:
                    found.append((shown, raw_rel, entry))
        finally:
            os.close(dir_fd)
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


def _classify_child(dir_fd: int, parts: tuple[str, ...], shown: str, root: str, root_real: str) -> Entry | None:
    """An entry for a file, link or oddity; None for a real folder to descend into."""
    name = parts[-1]
    if has_surrogates(name):
        # os.scandir hands undecodable bytes back as lone surrogates (surrogateescape).
        return Entry(shown, parts, "file name is not valid UTF-8; rename it")
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return Entry(shown, parts, _os_reason("cannot read file information", exc))
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISREG(st.st_mode):
        return Entry(shown, parts)
    if stat.S_ISLNK(st.st_mode):
        return _classify_link(os.path.join(root, *parts), shown, root_real)
    return Entry(shown, parts, f"not a regular file ({_file_kind(st.st_mode)})")


def _classify_link(path: str, shown: str, root_real: str) -> Entry:
    # Containment is decided before the target is touched, so a rejection never tells
    # whether some path outside the batch exists.
    target = os.path.realpath(path)
    if os.path.commonpath([root_real, target]) != root_real:
        return Entry(shown, (), "symbolic link points outside the batch folder")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return Entry(shown, (), "broken symbolic link (its target does not exist)")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Entry(shown, (), "symbolic link loop (following it never reaches a file)")
        return Entry(shown, (), _os_reason("cannot follow symbolic link", exc))
    if stat.S_ISDIR(st.st_mode):
        # Following folder links invites cycles and reads the same files twice; the target
        # folder is inside the batch and is read under its own name anyway.
        reason = "symbolic link to a folder is not followed; its target is read under its own path"
        return Entry(shown, (), reason)
    if not stat.S_ISREG(st.st_mode):
        return Entry(shown, (), f"symbolic link to a non-regular file ({_file_kind(st.st_mode)})")
    # Read by the target's own path inside the batch, through the same descriptor walk.
    return Entry(shown, tuple(os.path.relpath(target, root_real).split(os.sep)))


def _open_dirs(root_fd: int, parts: tuple[str, ...]) -> int:
    """A new descriptor of the folder root/parts[0]/parts[1]/..., opened one component at a time
    relative to its parent with O_NOFOLLOW: a component that is (now) a link is never followed."""
    fd = os.dup(root_fd)
    for depth, part in enumerate(parts):
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            where = "/".join(_shown_name(p) for p in parts[: depth + 1])
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                reason = (
                    f"the folder '{where}' on the file's path is a symbolic link or no longer a folder "
                    "(it was replaced after the batch was listed); links are not followed"
                )
            else:
                reason = _os_reason(f"cannot open folder '{where}'", exc)
            raise Rejected(reason) from None
        finally:
            os.close(fd)
        fd = child
    return fd


def _open_file(root_fd: int, parts: tuple[str, ...]) -> int:
    dir_fd = _open_dirs(root_fd, parts[:-1])
    try:
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise Rejected(
                "the file is a symbolic link (it was replaced after the batch was listed); links are not followed"
            ) from None
        raise Rejected(_os_reason("cannot open file", exc)) from None
    finally:
        os.close(dir_fd)


def _read_capped(root_fd: int, entry: Entry, cap: int, compressed: bool) -> bytes | bytearray:
    """The file's content (decompressed for .gz), at most `cap` bytes, else Rejected.

    The file's size, modification and change times are taken from its descriptor before and after
    the read: if they differ, the file changed while it was read (a torn copy), and it is read once
    more; if it changed again, it is rejected.
    """
    for _attempt in range(_READ_ATTEMPTS):
        fd = _open_file(root_fd, entry.parts)
        with open(fd, "rb") as raw:
            try:
                before = os.fstat(raw.fileno())
                if not stat.S_ISREG(before.st_mode):
                    raise Rejected(f"not a regular file ({_file_kind(before.st_mode)})")
                if before.st_size > cap:
                    raise Rejected(_too_big(before.st_size, cap))
                data = _read_content(raw, cap, compressed)
                after = os.fstat(raw.fileno())
            except OSError as exc:
                raise Rejected(_os_reason("cannot read file", exc)) from None
        if _unchanged(before, after) and (compressed or len(data) == before.st_size):
            if len(data) > cap:
                raise Rejected(_too_big(len(data), cap))
            return data
        del data
    raise Rejected(
        f"file changed while it was read ({_READ_ATTEMPTS} attempts: its size or modification time changed "
        "during each read); land it again once it is complete"
    )


def _read_content(raw, cap: int, compressed: bool) -> bytes | bytearray:
    """Read an open file: decompressed under the cap for .gz, else at most cap + 1 bytes."""
    if compressed:
        return decompress_capped(raw, cap)
    return raw.read(cap + 1)


def _unchanged(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino) == (
        after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino
    )


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
