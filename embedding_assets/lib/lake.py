"""Delta Lake helpers: every table lives at `<lake root>/<name>` and is partitioned by `batch`.

Writes to one partition never touch another: a partition is replaced with an overwrite whose
predicate is `batch = '<batch>'`, so concurrent runs on different batches commit side by side
(delta-rs retries a commit that raced another writer on a different partition). Reads prune to
one partition and to the columns asked for, and can stream record batches.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")
COMMIT_RETRIES = 10


def validate_batch(batch: str) -> str:
    """Batch names become partition keys and Delta predicates: keep them to a safe alphabet."""
    if not BATCH_NAME.match(batch) or ".." in batch:
        raise ValueError(
            f"batch name {batch!r} is not allowed: use letters, digits and . _ = - (at most 128, starting with a letter or digit)"
        )
    return batch


def table_uri(root: str, name: str) -> str:
    if "://" in root:
        return f"{root.rstrip('/')}/{name}"
    return os.path.join(os.path.abspath(os.path.expanduser(root)), name)


def storage_options(root: str) -> dict[str, str] | None:
    """Object-storage credentials for delta-rs, taken from the environment (never logged)."""
    if "://" not in root or root.startswith("file://"):
        return None
    from embedding_assets.lib.object_store import delta_storage_options

    return delta_storage_options(root)


def exists(root: str, name: str) -> bool:
    # Not DeltaTable.is_deltatable: it holds the GIL through its storage round trips, which
    # freezes every other thread (the prefetching reader, the sensor daemon) on object storage.
    from deltalake.exceptions import TableNotFoundError

    try:
        open_table(root, name)
    except TableNotFoundError:
        return False
    return True


def open_table(root: str, name: str):
    from deltalake import DeltaTable

    return DeltaTable(table_uri(root, name), storage_options=storage_options(root))


def _partition_filter(batch: str):
    return pc.field("batch") == batch


def read_partition(root: str, name: str, batch: str, columns: list[str] | None = None, filter=None) -> pa.Table | None:
    """One partition of a table as Arrow, or None if the table does not exist yet."""
    if not exists(root, name):
        return None
    dataset = open_table(root, name).to_pyarrow_dataset()
    expression = _partition_filter(batch) if filter is None else (_partition_filter(batch) & filter)
    return dataset.to_table(columns=columns, filter=expression)


def scan_partition(root: str, name: str, batch: str, columns: list[str] | None = None, batch_size: int = 4096, filter=None) -> Iterator[pa.RecordBatch]:
    """One partition, streamed in record batches (bounded memory)."""
    if not exists(root, name):
        return iter(())
    dataset = open_table(root, name).to_pyarrow_dataset()
    expression = _partition_filter(batch) if filter is None else (_partition_filter(batch) & filter)
    return dataset.to_batches(columns=columns, filter=expression, batch_size=batch_size)


def read_table(root: str, name: str, columns: list[str] | None = None, filter=None) -> pa.Table | None:
    if not exists(root, name):
        return None
    return open_table(root, name).to_pyarrow_dataset().to_table(columns=columns, filter=filter)


def _commit_with_retry(write) -> None:
    from deltalake.exceptions import CommitFailedError

    for attempt in range(COMMIT_RETRIES):
        try:
            return write()
        except CommitFailedError:
            if attempt == COMMIT_RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def replace_partition(root: str, name: str, batch: str, data: pa.Table | pa.RecordBatchReader, *, app_transaction: tuple[str, int] | None = None) -> None:
    """Atomically replaces one partition's rows with `data` (one commit; other partitions untouched)."""
    from deltalake import CommitProperties, Transaction, write_deltalake

    validate_batch(batch)
    props = None
    if app_transaction:
        props = CommitProperties(app_transactions=[Transaction(app_id=app_transaction[0], version=app_transaction[1])])
    uri, options = table_uri(root, name), storage_options(root)
    if not exists(root, name):
        # The first writer creates the table; a concurrent creator makes ours a normal overwrite.
        # A one-shot reader cannot be replayed after losing that race, so for a reader the table
        # is created empty first (no rows, no data files) and the rows go in the overwrite below.
        streamed = isinstance(data, pa.RecordBatchReader)
        try:
            if streamed:
                write_deltalake(uri, data.schema.empty_table(), mode="error", partition_by=["batch"], storage_options=options)
            else:
                write_deltalake(uri, data, mode="error", partition_by=["batch"], storage_options=options, commit_properties=props)
                return
        except Exception:
            if not exists(root, name):
                raise
    _commit_with_retry(
        lambda: write_deltalake(
            uri, data, mode="overwrite", predicate=f"batch = '{batch}'", partition_by=["batch"],
            storage_options=options, commit_properties=props,
        )
    )


def append(root: str, name: str, data: pa.Table, *, app_transaction: tuple[str, int] | None = None) -> None:
    """Appends rows in one commit; with an app transaction, a retry after an ambiguous failure is a no-op."""
    from deltalake import CommitProperties, Transaction, write_deltalake

    props = None
    if app_transaction:
        props = CommitProperties(app_transactions=[Transaction(app_id=app_transaction[0], version=app_transaction[1])])

    def write() -> None:
        # Checked before every attempt, retries included: an attempt that raised may still have
        # committed, and delta-rs itself would happily append the same rows a second time.
        if app_transaction and transaction_version(root, name, app_transaction[0]) >= app_transaction[1]:
            return
        write_deltalake(table_uri(root, name), data, mode="append", partition_by=["batch"], storage_options=storage_options(root), commit_properties=props)

    try:
        _commit_with_retry(write)
    except Exception:
        # The commit may have landed before the error reached us (a timeout, a lost reply):
        # the transaction version says whether it did, so a retry never writes the rows twice.
        if app_transaction and transaction_version(root, name, app_transaction[0]) >= app_transaction[1]:
            return
        raise


def transaction_version(root: str, name: str, app_id: str) -> int:
    """The last committed version of an application transaction, or -1."""
    if not exists(root, name):
        return -1
    version = open_table(root, name).transaction_version(app_id)
    return -1 if version is None else int(version)


def delete_partition(root: str, name: str, batch: str, extra_predicate: str | None = None) -> None:
    if not exists(root, name):
        return
    predicate = f"batch = '{validate_batch(batch)}'" + (f" AND ({extra_predicate})" if extra_predicate else "")
    _commit_with_retry(lambda: open_table(root, name).delete(predicate))


def compact_partition(root: str, name: str, batch: str) -> dict:
    if not exists(root, name):
        return {}
    return open_table(root, name).optimize.compact(partition_filters=[("batch", "=", validate_batch(batch))])


def vacuum(root: str, name: str, retention_hours: int) -> list[str]:
    """Deletes data files that left the table more than `retention_hours` ago."""
    if not exists(root, name):
        return []
    return open_table(root, name).vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False)


def partitions(root: str, name: str) -> list[str]:
    if not exists(root, name):
        return []
    return sorted({p["batch"] for p in open_table(root, name).partitions()})


class PartitionBusy(RuntimeError):
    pass


@contextlib.contextmanager
def partition_lock(root: str, name: str, batch: str):
    """Holds an exclusive lock on one partition of a local lake for the life of the block.

    The lock is an OS file lock, so a killed process releases it at once. On object storage this
    is a no-op: there, runs go through Dagster's run queue, whose per-partition limit (see
    dagster.yaml and k8s/values.yaml) keeps two runs of one batch from running at once.
    """
    if "://" in root and not root.startswith("file://"):
        yield
        return
    import fcntl

    folder = os.path.join(os.path.abspath(os.path.expanduser(root.removeprefix("file://"))), "_locks")
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

