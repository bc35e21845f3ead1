"""Landing areas: one folder (or object-storage prefix) per batch under the landing root.

- `batch_states(landing_root)` / `batch_fingerprint(landing_root, batch)`: every batch of a landing
  area, local or in object storage, with its content fingerprint (names, sizes and
  ctime/mtime/inode of its files, or size and last-modified time in object storage), which the
  landing sensor compares with what was last ingested; how many files the readers will consider;
  when anything under it last changed; whether it holds a `_READY` marker; and the folders that
  can never be batches (bad names, links).
- `new_batches`: the ones an instance does not know yet that are ready to register. A batch is
  ready once it holds a `_READY` marker, or once nothing in it changed for the settle time, so a
  batch still being copied in is not picked up half-written.
- `download_batch_with_reasons(...)`: copies one object-storage batch to a local folder, so that it
  is read with the same reader as a local batch, and says why each file it skipped was skipped.

No Dagster here: only pyarrow and the standard library.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from embedding_assets.lib.readers.registry import considered, is_hidden, max_stored_bytes
from embedding_assets.lib.storage.credentials import filesystem, redact
from embedding_assets.lib.storage.names import is_batch_name, validate_batch
from embedding_assets.lib.storage.uri import is_object_store, local_path

READY_MARKER = "_READY"
_COPY_CHUNK = 1 << 20


def new_batches(landing_root: str, known: set[str], settle_seconds: float, now: float | None = None) -> tuple[list[str], list[str], list[str]]:
    """(batches not in `known` that hold files and have settled, those still settling or empty,
    folders that cannot be batches), from the same listing the landing sensor uses."""
    states, bad = batch_states(landing_root)
    fresh = [s for s in states if s.name not in known]
    ready = [s.name for s in fresh if s.n_files > 0 and s.settled(settle_seconds, now)]
    waiting = [s.name for s in fresh if s.name not in ready]
    return ready, waiting, list(bad)


def _epoch(mtime: Any) -> float | None:
    if mtime is None:
        return None
    if hasattr(mtime, "timestamp"):
        return float(mtime.timestamp())
    return float(mtime)

# --- fingerprints: what a batch holds now, for the landing sensor -----------------------------
#
# For each batch, every file the readers consider is hashed with its path, its size and an
# inexpensive change signal: locally mtime and ctime (nanoseconds) and the inode (ctime is set by the
# kernel on every write, rename, utime and permission change and cannot be set back, so a file moved
# in with an old mtime -- mv, cp -p, rsync -a, tar x -- or rewritten with its mtime restored still
# changes the fingerprint, and a deleted file drops out of it); in object storage size and
# last-modified time (a put always sets a new one). The result is 32 hex digits per batch, whatever
# its size. Files the readers ignore (hidden or '_' segments, the `_READY` marker) are not part of
# it, but count as activity for settling, so a copy in progress (rsync's hidden temporary files)
# keeps the batch waiting.


@dataclass(frozen=True)
class BatchState:
    """One batch of the landing area as it is now."""

    name: str
    fingerprint: str  # digest of (path, size, change signal) of every file the reader considers
    n_files: int  # files the reader considers
    last_change: float  # epoch seconds of the newest change anywhere under the batch (hidden files too)
    ready_marker: bool  # a `_READY` file directly in the batch

    def settled(self, settle_seconds: float, now: float | None = None) -> bool:
        """Ready to be read: marked `_READY`, or nothing under it changed for `settle_seconds`."""
        now = time.time() if now is None else now
        return self.ready_marker or now - self.last_change >= settle_seconds

    def settles_in(self, settle_seconds: float, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return max(0.0, settle_seconds - (now - self.last_change))


def _digest(entries: list[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for entry in sorted(entries):
        h.update(entry)
        h.update(b"\n")
    return h.hexdigest()


def _local_state(name: str, path: str) -> BatchState:
    entries: list[bytes] = []
    n_files = 0
    try:
        top = os.lstat(path)
        last_change = max(top.st_mtime, top.st_ctime)
    except OSError:
        last_change = 0.0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        rel_dir = os.path.relpath(dirpath, path)
        inside_hidden = rel_dir != "." and any(is_hidden(p) for p in rel_dir.split(os.sep))
        try:
            st = os.lstat(dirpath)
            last_change = max(last_change, st.st_mtime, st.st_ctime)
        except OSError:
            pass
        # Links to folders are files to the reader (it rejects them), so they count here too.
        linked_dirs = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for file_name in [*filenames, *linked_dirs]:
            full = os.path.join(dirpath, file_name)
            try:
                st = os.lstat(full)
            except OSError:  # deleted between the listing and the stat
                continue
            last_change = max(last_change, st.st_mtime, st.st_ctime)
            if inside_hidden or is_hidden(file_name):
                continue
            n_files += 1
            rel = os.fsencode(os.path.normpath(os.path.join(rel_dir, file_name)))
            kind = "l" if stat.S_ISLNK(st.st_mode) else "f"
            entries.append(rel + f"\0{kind}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}".encode())
    ready = os.path.isfile(os.path.join(path, READY_MARKER)) and not os.path.islink(os.path.join(path, READY_MARKER))
    return BatchState(name, _digest(entries), n_files, float(last_change), ready)


def _local_folders(root: str) -> tuple[list[str], list[str]]:
    """(sub-folders of the landing root, links among its entries: never batches)."""
    folders, links = [], []
    try:
        with os.scandir(root) as it:
            for child in it:
                if is_hidden(child.name):
                    continue
                try:
                    if child.is_symlink():
                        links.append(child.name)
                    elif child.is_dir(follow_symlinks=False):
                        folders.append(child.name)
                except OSError:
                    continue
    except FileNotFoundError:
        pass
    return folders, links


def _remote_states(landing_root: str) -> dict[str, BatchState]:
    from pyarrow import fs

    store, base = filesystem(landing_root)
    top = store.get_file_info(fs.FileSelector(base, recursive=False, allow_not_found=True))
    states: dict[str, BatchState] = {}
    for entry in top:
        name = entry.path.rstrip("/").rsplit("/", 1)[-1]
        if entry.type != fs.FileType.Directory or not name or is_hidden(name):
            continue
        prefix = entry.path.rstrip("/")
        entries: list[bytes] = []
        last_change, ready = _epoch(entry.mtime) or 0.0, False
        for info in store.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True)):
            if info.type != fs.FileType.File:
                continue
            rel = info.path[len(prefix) + 1 :]
            mtime = _epoch(info.mtime) or 0.0
            last_change = max(last_change, mtime)
            if rel == READY_MARKER:
                ready = True
            if not considered(rel):
                continue
            entries.append(rel.encode("utf-8", "surrogateescape") + f"\0f\0{info.size}\0{int(mtime * 1e9)}".encode())
        states[name] = BatchState(name, _digest(entries), len(entries), float(last_change), ready)
    return states


BAD_NAME = "not a valid batch name: use letters, digits and . _ = - (at most 128, starting with a letter or digit)"
LINK = "a link: links are not followed out of the landing area"


def batch_states(landing_root: str) -> tuple[list[BatchState], dict[str, str]]:
    """(every batch under the landing root with its state, {folder that cannot be a batch: why}).

    A folder that is itself a link is not a batch. A missing landing root has no batches.
    """
    if is_object_store(landing_root):
        remote = _remote_states(landing_root)
        good = sorted((s for s in remote.values() if is_batch_name(s.name)), key=lambda s: s.name)
        return good, {n: BAD_NAME for n in sorted(remote) if not is_batch_name(n)}
    root = local_path(landing_root)
    folders, links = _local_folders(root)
    good = [_local_state(name, os.path.join(root, name)) for name in folders if is_batch_name(name)]
    bad = {name: BAD_NAME for name in folders if not is_batch_name(name)}
    bad.update({name: LINK for name in links})
    return sorted(good, key=lambda s: s.name), dict(sorted(bad.items()))


def batch_fingerprint(landing_root: str, batch: str) -> str | None:
    """The fingerprint of one batch now (as `batch_states` computes it); None if there is no such batch."""
    if is_object_store(landing_root):
        state = _remote_states(landing_root).get(batch)
        return state.fingerprint if state else None
    path = os.path.join(local_path(landing_root), batch)
    if not os.path.isdir(path) or os.path.islink(path):
        return None
    return _local_state(batch, path).fingerprint


# --- download --------------------------------------------------------------------------------


def _unsafe_reason(parts: list[str]) -> str | None:
    for part in parts:
        if part in ("", ".", ".."):
            return "object name has an empty, '.' or '..' path segment and cannot be stored as a local file; rename it"
        if "\x00" in part:
            return "object name contains a NUL character; rename it"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return "a path segment of the object name is longer than 255 bytes; rename it"
    return None


def download_batch_with_reasons(landing_root: str, batch: str, dest_dir: str, max_file_bytes: int) -> list[tuple[str, str]]:
    """Copies an object-storage batch into `dest_dir`; returns (relative path, reason) for each file not copied.

    Files the reader ignores (any path segment starting with '.' or '_', such as the `_READY`
    marker) are neither copied nor reported. A file bigger than `max_file_bytes` (for .gz files, a
    little more: the cap applies after decompression) is skipped, as is a name that cannot be a
    local file. Relative paths are '/'-separated and NFC-normalised, as the reader reports them.
    """
    from pyarrow import fs

    if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be a positive integer, got {max_file_bytes!r}")
    validate_batch(batch)
    if not is_object_store(landing_root):
        raise ValueError("downloading a batch is for object-storage landing areas; a local batch is read in place")
    store, base = filesystem(landing_root)
    prefix = f"{base}/{batch}" if base else batch
    dest_root = os.path.abspath(dest_dir)
    os.makedirs(dest_root, exist_ok=True)
    skipped: list[tuple[str, str]] = []
    infos = store.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != fs.FileType.File:
            continue
        rel = info.path[len(prefix) + 1 :]
        if not considered(rel):
            continue
        parts = rel.split("/")
        shown = unicodedata.normalize("NFC", rel)
        reason = _unsafe_reason(parts)
        if reason:
            skipped.append((shown, reason))
            continue
        cap = max_stored_bytes(rel, max_file_bytes)
        if info.size is not None and info.size > cap:
            skipped.append((shown, f"file is larger than the {max_file_bytes}-byte limit ({info.size} bytes)"))
            continue
        target = os.path.join(dest_root, *parts)
        if os.path.commonpath([dest_root, os.path.abspath(target)]) != dest_root:  # defensive; parts are checked
            skipped.append((shown, "object name points outside the batch; rename it"))
            continue
        try:
            written = _copy_capped(store, info.path, target, cap)
        except OSError as exc:
            skipped.append((shown, f"could not copy the file: {type(exc).__name__}: {redact(str(exc))}"))
            continue
        if written is None:
            skipped.append((shown, f"file is larger than the {max_file_bytes}-byte limit"))
    return skipped


def _copy_capped(store: Any, path: str, target: str, cap: int) -> int | None:
    """Streams one object to `target`; None (and nothing left behind) if it grew past `cap`."""
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    # a hidden temporary name: the reader never sees a half-copied file
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{name[:64]}.", suffix=".partial")
    written = 0
    try:
        with os.fdopen(handle, "wb") as sink, store.open_input_stream(path) as source:
            while written <= cap:
                chunk = source.read(_COPY_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written <= cap:
                    sink.write(chunk)
        if written > cap:
            os.unlink(partial)
            return None
        os.replace(partial, target)
        return written
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
