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

from embedding_assets.lib.allocators import set_delta_allocator_env

set_delta_allocator_env()  # before deltalake's first import (see allocators.py)

BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")
COMMIT_RETRIES = 10
# Bounded memory on both sides of a table: a writer buffers at most one data file before it
# uploads it, and a streaming reader decodes one row group at a time (8,192 rows of 384-d float32
# vectors are 12.6 MB). delta-rs' defaults (100 MB files of one row group each) would make a
# scan of a large partition decode 100 MB at once.
ROW_GROUP_ROWS = 8_192
TARGET_FILE_BYTES = 32 << 20


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


def _writer_properties():
    from deltalake import WriterProperties

    return WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="SNAPPY")


def _sizes() -> dict:
    return {"target_file_size": TARGET_FILE_BYTES, "writer_properties": _writer_properties()}


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
    # One file and a couple of batches ahead at most: the default read-ahead (4 files, 16 batches)
    # would hold hundreds of MB of vectors in flight.
    return dataset.to_batches(columns=columns, filter=expression, batch_size=batch_size, batch_readahead=2, fragment_readahead=1)


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
    """Atomically replaces one partition's rows with `data` (one commit; other partitions untouched).

    A table is written by delta-rs; a reader is streamed by `_write_streamed` (bounded memory).
    """
    from deltalake import write_deltalake

    validate_batch(batch)
    props = _commit_properties(app_transaction)
    uri, options = table_uri(root, name), storage_options(root)
    if isinstance(data, pa.RecordBatchReader):
        # A one-shot reader cannot be replayed after losing a create race: create the table empty.
        _create_empty(root, name, data.schema)
        _write_streamed(root, name, batch, data, mode="overwrite", props=props)
        return
    if not exists(root, name):
        # The first writer creates the table; a concurrent creator makes ours a normal overwrite.
        try:
            write_deltalake(uri, data, mode="error", partition_by=["batch"], storage_options=options, commit_properties=props, **_sizes())
            return
        except Exception:
            if not exists(root, name):
                raise
    _commit_with_retry(
        lambda: write_deltalake(
            uri, data, mode="overwrite", predicate=f"batch = '{batch}'", partition_by=["batch"],
            storage_options=options, commit_properties=props, **_sizes(),
        )
    )


def _commit_properties(app_transaction: tuple[str, int] | None):
    from deltalake import CommitProperties, Transaction

    if not app_transaction:
        return None
    return CommitProperties(app_transactions=[Transaction(app_id=app_transaction[0], version=app_transaction[1])])


def _create_empty(root: str, name: str, schema: pa.Schema) -> None:
    """Creates the table with no rows if it does not exist; a concurrent creator wins the race."""
    from deltalake import write_deltalake

    if exists(root, name):
        return
    try:
        write_deltalake(table_uri(root, name), schema.empty_table(), mode="error", partition_by=["batch"], storage_options=storage_options(root))
    except Exception:
        if not exists(root, name):
            raise


def _write_streamed(root: str, name: str, batch: str, batches, *, mode: str, props=None, app_transaction: tuple[str, int] | None = None) -> None:
    """Writes record batches of one partition as data files and commits them in one commit
    (append, or overwrite of the partition), in bounded memory."""
    files = _PartitionFiles(root, name, batch)
    try:
        for record_batch in batches:
            files.write(record_batch)
        files.close()
    except BaseException:
        files.discard()
        raise
    _commit_files(root, name, files, mode=mode, props=props, app_transaction=app_transaction)


class _PartitionFiles:
    """Writes one partition's rows as data files of a table, to be committed by `_commit_files`.

    delta-rs' `write_deltalake` pulls a reader faster than it writes and queues the difference
    (measured: +290 MB of RSS for 300k 384-d vectors, flat when the producer is slowed down), and
    its allocator keeps what a write freed; a long step that writes a lot would grow without
    bound. Here pyarrow's ParquetWriter writes each row group (ROW_GROUP_ROWS rows) as it fills,
    files roll over at TARGET_FILE_BYTES, and nothing else is held: memory is one row group.
    """

    def __init__(self, root: str, name: str, batch: str):
        import uuid

        table = open_table(root, name)
        partition_columns = list(table.metadata().partition_columns)
        if partition_columns != ["batch"]:
            raise ValueError(f"{name} is partitioned by {partition_columns}, expected ['batch']")
        self.name, self.batch = name, batch
        self.table_schema = pa.schema(table.schema().to_arrow())
        self.file_schema = pa.schema([f for f in self.table_schema if f.name != "batch"])
        self.filesystem = _table_filesystem(root, name)
        self.run = uuid.uuid4()
        self.actions: list = []
        self.paths: list[str] = []
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.file: dict = {}

    def write(self, record_batch: pa.RecordBatch) -> None:
        if record_batch.num_rows == 0:
            return
        if "batch" in record_batch.schema.names:
            values = pc.unique(record_batch.column("batch")).to_pylist()
            if values != [self.batch]:
                raise ValueError(f"rows for partition {values} in a write of partition {self.batch!r} of {self.name}")
        self.pending.append(_conform(record_batch, self.file_schema, self.name))
        self.pending_rows += record_batch.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def close(self) -> None:
        if self.pending:
            self._flush()
        if self.file:
            self._finish_file()

    def discard(self) -> None:
        """Deletes every data file this writer created (none of them is committed)."""
        if self.file:
            with contextlib.suppress(Exception):
                self.file["writer"].close()
                self.file["sink"].close()
            self.file.clear()
        for path in self.paths:
            with contextlib.suppress(Exception):
                self.filesystem.delete_file(path)

    def _flush(self) -> None:
        rows = pa.Table.from_batches(self.pending)
        self.pending, self.pending_rows = [], 0
        if not self.file:
            self._start_file()
        self.file["writer"].write_table(rows, row_group_size=ROW_GROUP_ROWS)
        self.file["stats"].update(rows)
        if self.file["sink"].tell() >= TARGET_FILE_BYTES:
            self._finish_file()

    def _start_file(self) -> None:
        import pyarrow.parquet as pq

        path = f"batch={self.batch}/part-{len(self.paths):05d}-{self.run}-c000.snappy.parquet"
        self.paths.append(path)
        self.filesystem.create_dir(f"batch={self.batch}", recursive=True)
        sink = self.filesystem.open_output_stream(path)
        writer = pq.ParquetWriter(sink, self.file_schema, compression="snappy", write_statistics=True)
        self.file = {"path": path, "sink": sink, "writer": writer, "stats": _FileStats(self.file_schema)}

    def _finish_file(self) -> None:
        import json

        from deltalake.transaction import AddAction

        self.file["writer"].close()
        size = self.file["sink"].tell()
        self.file["sink"].close()
        self.actions.append(AddAction(
            path=self.file["path"], size=size, partition_values={"batch": self.batch},
            modification_time=int(time.time() * 1000), data_change=True, stats=json.dumps(self.file["stats"].to_delta()),
        ))
        self.file = {}


def _commit_files(root: str, name: str, files: _PartitionFiles, *, mode: str, props=None, app_transaction: tuple[str, int] | None = None) -> None:
    """Commits written data files in one Delta commit (append, or overwrite of their partition).

    A commit that lost a race with another writer is retried with the same files. After a
    failure, the commit may still have landed (a lost reply): the app transaction version, or
    the table's file list, says whether it did; if it did not, the files are deleted.
    """

    def attempt() -> None:
        # An exactly-once commit is checked before every attempt: one that raised may have landed.
        if app_transaction and _landed(root, name, files, app_transaction):
            return
        open_table(root, name).create_write_transaction(
            files.actions, mode=mode, schema=files.table_schema, partition_by=["batch"],
            partition_filters=[("batch", "=", files.batch)] if mode == "overwrite" else None,
            commit_properties=props,
        )

    try:
        _commit_with_retry(attempt)
    except BaseException:
        with contextlib.suppress(Exception):
            if _landed(root, name, files, app_transaction):
                return
        files.discard()
        raise


def _landed(root: str, name: str, files: _PartitionFiles, app_transaction: tuple[str, int] | None) -> bool:
    if app_transaction:
        return transaction_version(root, name, app_transaction[0]) >= app_transaction[1]
    if not files.paths:
        return False
    return any(uri.endswith("/" + files.paths[0]) for uri in open_table(root, name).file_uris())


def _table_filesystem(root: str, name: str):
    """A pyarrow filesystem rooted at the table: the local one on disk, delta-rs' object store otherwise."""
    import pyarrow.fs as pafs

    uri = table_uri(root, name)
    if "://" not in uri or uri.startswith("file://"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.SubTreeFileSystem(path, pafs.LocalFileSystem())
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(uri, storage_options(root)))


def _conform(record_batch: pa.RecordBatch, schema: pa.Schema, name: str) -> pa.RecordBatch:
    """The batch's columns in the table's order and types (e.g. a fixed-size vector as Delta's list)."""
    missing = [f.name for f in schema if f.name not in record_batch.schema.names]
    extra = [n for n in record_batch.schema.names if n != "batch" and schema.get_field_index(n) < 0]
    if missing or extra:
        raise ValueError(f"rows for {name} do not match its schema: missing {missing}, unknown {extra}")
    columns = [record_batch.column(f.name) for f in schema]
    columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _FileStats:
    """Delta file statistics (numRecords, nullCount, min/max of string and integer columns)."""

    def __init__(self, schema: pa.Schema):
        self.rows = 0
        self.nulls = {f.name: 0 for f in schema if not pa.types.is_nested(f.type)}
        self.ranged = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_integer(f.type)]
        self.low: dict = {}
        self.high: dict = {}

    def update(self, rows: pa.Table) -> None:
        self.rows += rows.num_rows
        for column in self.nulls:
            self.nulls[column] += rows.column(column).null_count
        for column in self.ranged:
            low, high = pc.min_max(rows.column(column)).values()
            if low.is_valid:
                low, high = low.as_py(), high.as_py()
                self.low[column] = low if column not in self.low else min(self.low[column], low)
                self.high[column] = high if column not in self.high else max(self.high[column], high)

    def to_delta(self) -> dict:
        return {"numRecords": self.rows, "minValues": self.low, "maxValues": self.high, "nullCount": self.nulls}


def append(root: str, name: str, data: pa.Table, *, app_transaction: tuple[str, int] | None = None) -> None:
    """Appends rows in one commit; with an app transaction, a replay or a retry after an ambiguous
    failure is a no-op (checked before every attempt: delta-rs would append the same rows twice)."""
    if app_transaction and transaction_version(root, name, app_transaction[0]) >= app_transaction[1]:
        return
    _create_empty(root, name, data.schema)
    props = _commit_properties(app_transaction)
    batches = pc.unique(data.column("batch")).to_pylist() if data.num_rows else []
    if len(batches) > 1 and app_transaction:
        raise ValueError("an exactly-once append writes one partition")
    for batch in batches:
        rows = data.filter(pc.equal(data.column("batch"), batch)) if len(batches) > 1 else data
        _write_streamed(
            root, name, validate_batch(batch), rows.to_batches(max_chunksize=ROW_GROUP_ROWS),
            mode="append", props=props, app_transaction=app_transaction,
        )


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
    return open_table(root, name).optimize.compact(
        partition_filters=[("batch", "=", validate_batch(batch))], target_size=TARGET_FILE_BYTES,
        max_concurrent_tasks=1, writer_properties=_writer_properties(),
    )


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

