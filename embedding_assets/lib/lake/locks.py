"""Per-partition write locks: one writer of a (table, batch) at a time on a local lake."""

from __future__ import annotations

import contextlib
import os
import socket

from embedding_assets.lib.storage.names import validate_batch
from embedding_assets.lib.storage.uri import is_object_store, local_path


class PartitionBusy(RuntimeError):
    pass


@contextlib.contextmanager
def partition_lock(root: str, name: str, batch: str):
    """Holds an exclusive lock on one partition of a local lake for the life of the block.

    The lock is an OS file lock, so a killed process releases it at once. On object storage this
    is a no-op: there, runs go through Dagster's run queue, whose per-partition limit (see
    dagster.yaml and k8s/values.yaml) keeps two runs of one batch from running at once.
    """
    if is_object_store(root):
        yield
        return
    import fcntl

    folder = os.path.join(local_path(root), "_locks")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.{validate_batch(batch)}.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PartitionBusy(f"{name} for batch {batch!r} is being written by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
