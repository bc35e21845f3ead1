"""What a landed batch holds right now, as one short fingerprint: the landing sensor's view of change.

No Dagster here. For each batch folder (or object-storage prefix) under the landing root,
`batch_states` lists every file the reader will consider and hashes, per file, its path, its size
and an inexpensive change signal:

- local: mtime and ctime (nanoseconds) and the inode. ctime is set by the kernel on every write,
  rename, `utime` and permission change and cannot be set back, so a file moved in with an old
  mtime (`mv`, `cp -p`, `rsync -a`, `tar x`) or rewritten with its mtime restored still changes
  the fingerprint; a deleted file drops out of it.
- object storage: size and last-modified time (a put always sets a new one).

The result is a 32-hex-digit digest per batch, whatever the number of files. Files the reader
ignores (any path segment starting with '.' or '_', the `_READY` marker included) are not part of
it; they do count as activity for settling, so a copy still in progress (rsync's hidden temporary
files) keeps the batch waiting.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass

from embedding_assets.lib.lake import BATCH_NAME

READY_MARKER = "_READY"
BATCH_NAME_RULE = "letters, digits and . _ = - (at most 128, starting with a letter or digit)"


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


def valid_batch_name(name: str) -> bool:
    """The batch-name rule, matched against the whole name (a trailing newline is not allowed)."""
    return BATCH_NAME.fullmatch(name) is not None and ".." not in name


def _hidden(part: str) -> bool:
    return part.startswith((".", "_"))


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
        inside_hidden = rel_dir != "." and any(_hidden(p) for p in rel_dir.split(os.sep))
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
            if inside_hidden or _hidden(file_name):
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
                if _hidden(child.name):
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

    from embedding_assets.lib.object_store import _epoch, _filesystem

    filesystem, base = _filesystem(landing_root)
    top = filesystem.get_file_info(fs.FileSelector(base, recursive=False, allow_not_found=True))
    states: dict[str, BatchState] = {}
    for entry in top:
        name = entry.path.rstrip("/").rsplit("/", 1)[-1]
        if entry.type != fs.FileType.Directory or not name or _hidden(name):
            continue
        prefix = entry.path.rstrip("/")
        entries: list[bytes] = []
        last_change, ready = _epoch(entry.mtime) or 0.0, False
        for info in filesystem.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True)):
            if info.type != fs.FileType.File:
                continue
            rel = info.path[len(prefix) + 1 :]
            mtime = _epoch(info.mtime) or 0.0
            last_change = max(last_change, mtime)
            if rel == READY_MARKER:
                ready = True
            if any(_hidden(p) for p in rel.split("/")):
                continue
            entries.append(rel.encode("utf-8", "surrogateescape") + f"\0f\0{info.size}\0{int(mtime * 1e9)}".encode())
        states[name] = BatchState(name, _digest(entries), len(entries), float(last_change), ready)
    return states


BAD_NAME = f"not a valid batch name: use {BATCH_NAME_RULE}"
LINK = "a link: links are not followed out of the landing area"


def batch_states(landing_root: str) -> tuple[list[BatchState], dict[str, str]]:
    """(every batch under the landing root with its state, {folder that cannot be a batch: why}).

    A folder that is itself a link is not a batch. A missing landing root has no batches.
    """
    from embedding_assets.lib.object_store import _local_path, is_object_store

    if is_object_store(landing_root):
        remote = _remote_states(landing_root)
        good = sorted((s for s in remote.values() if valid_batch_name(s.name)), key=lambda s: s.name)
        return good, {n: BAD_NAME for n in sorted(remote) if not valid_batch_name(n)}
    root = _local_path(landing_root)
    folders, links = _local_folders(root)
    good = [_local_state(name, os.path.join(root, name)) for name in folders if valid_batch_name(name)]
    bad = {name: BAD_NAME for name in folders if not valid_batch_name(name)}
    bad.update({name: LINK for name in links})
    return sorted(good, key=lambda s: s.name), dict(sorted(bad.items()))


def batch_fingerprint(landing_root: str, batch: str) -> str | None:
    """The fingerprint of one batch now (as `batch_states` computes it); None if there is no such batch."""
    from embedding_assets.lib.object_store import _local_path, is_object_store

    if is_object_store(landing_root):
        state = _remote_states(landing_root).get(batch)
        return state.fingerprint if state else None
    path = os.path.join(_local_path(landing_root), batch)
    if not os.path.isdir(path) or os.path.islink(path):
        return None
    return _local_state(batch, path).fingerprint
