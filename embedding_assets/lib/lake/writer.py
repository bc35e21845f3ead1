"""The bounded-memory Delta writer: one partition's record batches as Parquet data files, one commit.

delta-rs' `write_deltalake` pulls a reader faster than it writes and queues the difference
(measured: +290 MB of RSS for 300k 384-d vectors, flat when the producer is slowed down), and its
allocator keeps what a write freed; a long step that writes a lot would grow without bound. Here
pyarrow's ParquetWriter writes each row group (ROW_GROUP_ROWS rows) as it fills, files roll over
at TARGET_FILE_BYTES, and nothing else is held: memory is one row group.

Each file's Delta statistics come from the Parquet footer pyarrow just wrote, and the files are
committed as raw add actions in one transaction, after checking that the table asks for no
feature these plain files lack (deletion vectors, column mapping, ...). Files written earlier and
kept uncommitted (the embeddings stage's checkpoints) can join that commit as they are (`kept`).

Vector columns are written uncompressed (random floats do not compress: snappy only costs CPU)
and as Arrow produced them (a fixed-size list is the same Parquet LIST as a list); files with
vectors carry no Arrow schema of their own, so every reader takes the Delta schema's types.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib.storage.uri import is_object_store, local_path

# Bounded memory on both sides of a table: a writer buffers at most one data file before it
# uploads it, and a streaming reader decodes one row group at a time (8,192 rows of 384-d float32
# vectors are 12.6 MB). delta-rs' defaults (100 MB files of one row group each) would make a
# scan of a large partition decode 100 MB at once.
ROW_GROUP_ROWS = 8_192
TARGET_FILE_BYTES = 32 << 20
ROW_GROUP_BYTES = 16 << 20  # a row group also ends at this many bytes: long texts (raw_documents, chunks) stay in small groups, so a streaming reader decodes ~16 MB at a time
# delta-rs re-reads the log and retries a commit that raced a non-conflicting one (another partition).
COMMIT_RETRIES = 10
# String statistics are prefixes, as Delta writers keep them: a long text column's full min/max in
# every add action would bloat the log for no pruning benefit.
STATS_STRING_CHARS = 32

# Writer features whose data files are plain Parquet: what this writer produces. Any other
# (deletionVectors, columnMapping, timestampNtz, checkConstraints, changeDataFeed,
# generatedColumns, identityColumns, rowTracking, ...) asks for something it does not write.
SUPPORTED_WRITER_FEATURES = frozenset({"appendOnly", "invariants"})
# Legacy protocols below table features: writer 3-6 imply constraints, change data feed,
# generated columns, column mapping, identity columns; reader 2 implies column mapping.
MAX_LEGACY_WRITER_VERSION = 2
MAX_LEGACY_READER_VERSION = 1


# Hex digests, one per chunk or text: (nearly) every value distinct, so a dictionary never pays.
DIGEST_COLUMNS = frozenset({"chunk_id", "text_hash"})


def partition_folder(batch: str) -> str:
    """The folder of a partition inside its table, exactly as delta-rs (and Hive) writes it: the value
    percent-encoded as UTF-8, every byte but letters, digits and - . _ ~ escaped (`a=b` ->
    `batch=a%3Db`). The add action carries this path unescaped and the value itself in
    `partitionValues`; delta-rs escapes the path once more in the log, as the protocol asks."""
    return "batch=" + urllib.parse.quote(batch, safe="")


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """The Arrow schema a Delta table stores for `schema`, as delta-rs reads it back: Delta has no
    fixed-size list (it becomes a list) and no large types (`large_string` becomes `string`)."""
    from deltalake import Schema

    return pa.schema(Schema.from_arrow(schema).to_arrow())


def same_parquet_kind(stored: pa.DataType, declared: pa.DataType) -> bool:
    """Whether a Delta reader expecting `declared` reads a file column of type `stored` as it is:
    string and large_string (list and large_list) are one Parquet type; a fixed-size list is not a list."""
    if pa.types.is_fixed_size_list(stored) != pa.types.is_fixed_size_list(declared):
        return False
    if pa.types.is_nested(stored) and pa.types.is_nested(declared) and stored.num_fields == declared.num_fields:
        return all(same_parquet_kind(stored.field(i).type, declared.field(i).type) for i in range(stored.num_fields))
    return True


def commit_properties(app_transaction: tuple[str, int] | None = None):
    """Commit properties for every write of the lake: bounded conflict retries, optional app transaction."""
    from deltalake import CommitProperties, Transaction

    transactions = [Transaction(app_id=app_transaction[0], version=app_transaction[1])] if app_transaction else None
    return CommitProperties(max_commit_retries=COMMIT_RETRIES, app_transactions=transactions)


def check_protocol(table, name: str, *, overwrite: bool = False) -> None:
    """Refuses a table whose protocol needs a feature that raw add actions of plain Parquet lack."""
    protocol = table.protocol()
    reader_features = set(protocol.reader_features or ())
    writer_features = set(protocol.writer_features or ())
    needs = sorted(reader_features | (writer_features - SUPPORTED_WRITER_FEATURES))
    if protocol.min_reader_version == 2:
        needs.append("columnMapping (reader version 2)")
    if MAX_LEGACY_WRITER_VERSION < protocol.min_writer_version < 7:
        needs.append(f"the features of writer version {protocol.min_writer_version}")
    if protocol.min_reader_version > 3 or protocol.min_writer_version > 7:
        needs.append(f"protocol ({protocol.min_reader_version}, {protocol.min_writer_version})")
    configuration = table.metadata().configuration
    if overwrite and configuration.get("delta.appendOnly", "false").lower() == "true":
        needs.append("appendOnly (an overwrite removes files)")
    if any(b"delta.invariants" in (field.metadata or {}) for field in pa.schema(table.schema().to_arrow())):
        needs.append("invariants (column invariants are not enforced)")
    if needs:
        raise ValueError(
            f"{name} needs table features the streaming writer does not produce: {', '.join(needs)}; "
            f"write it with deltalake.write_deltalake instead"
        )


def write_partition(uri: str, options: dict | None, name: str, batch: str, batches: Iterable[pa.RecordBatch], *, mode: str, app_transaction: tuple[str, int] | None = None) -> None:
    """Writes record batches of one partition as data files and commits them in one commit
    (append, or overwrite of the partition), in bounded memory. The table must exist."""
    files = write_files(PartitionFiles(uri, options, name, batch), batches)
    commit_files(files, mode=mode, app_transaction=app_transaction)


def write_files(files: "PartitionFiles", batches: Iterable[pa.RecordBatch]) -> "PartitionFiles":
    """Writes record batches as data files of `files` (closed at the end, not committed); on an
    error every file it wrote is deleted."""
    try:
        for record_batch in batches:
            files.write(record_batch)
        files.close()
    except BaseException:
        files.discard()
        raise
    return files


class PartitionFiles:
    """Writes one partition's rows as data files of a table, to be committed by `commit_files`."""

    def __init__(self, uri: str, options: dict | None, name: str, batch: str, *, table=None, row_group_rows: int | None = None, file_bytes: int | None = None):
        from deltalake import DeltaTable

        table = table if table is not None else DeltaTable(uri, storage_options=options)
        check_protocol(table, name)
        partition_columns = list(table.metadata().partition_columns)
        if partition_columns != ["batch"]:
            raise ValueError(f"{name} is partitioned by {partition_columns}, expected ['batch']")
        self.uri, self.options, self.name, self.batch = uri, options, name, batch
        self.table_schema = pa.schema(table.schema().to_arrow())
        self.file_schema = pa.schema([f for f in self.table_schema if f.name != "batch"])
        self.filesystem = _table_filesystem(uri, options)
        self.run = uuid.uuid4()
        self.serial = 0
        self.actions: list = []
        self.paths: list[str] = []
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS
        self.file_bytes = file_bytes or TARGET_FILE_BYTES
        self.kept: list = []  # add actions of files written before, committed as they are
        self.file: dict = {}

    def open_table(self):
        from deltalake import DeltaTable

        return DeltaTable(self.uri, storage_options=self.options)

    def write(self, record_batch: pa.RecordBatch) -> None:
        if record_batch.num_rows == 0:
            return
        if "batch" in record_batch.schema.names:
            values = pc.unique(record_batch.column("batch")).to_pylist()
            if values != [self.batch]:
                raise ValueError(f"rows for partition {values} in a write of partition {self.batch!r} of {self.name}")
        conformed = _conform(record_batch, self.file_schema, self.name)
        if self.pending and conformed.schema != self.pending[0].schema:
            conformed = conformed.cast(self.pending[0].schema)  # a vector column as list here, fixed-size there
        self.pending.append(conformed)
        self.pending_rows += record_batch.num_rows
        self.pending_bytes += record_batch.nbytes
        if self.pending_rows >= self.row_group_rows or self.pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> None:
        if self.pending:
            self._flush()
        if self.file:
            self._finish_file()

    def take_actions(self) -> list:
        """The add actions of the files closed so far, handed over (this writer forgets them: it
        will neither commit nor discard them)."""
        actions, self.actions = self.actions, []
        self.paths = [self.file["path"]] if self.file else []
        return actions

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
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        if not self.file:
            self._start_file(rows.schema)
        elif rows.schema != self.file["schema"]:
            rows = rows.cast(self.file["schema"])
        self.file["writer"].write_table(rows, row_group_size=self.row_group_rows)
        if self.file["sink"].tell() >= self.file_bytes:
            self._finish_file()

    def _start_file(self, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        folder = partition_folder(self.batch)
        path = f"{folder}/part-{self.serial:05d}-{self.run}-c000.snappy.parquet"
        self.serial += 1
        self.paths.append(path)
        self.filesystem.create_dir(folder, recursive=True)
        sink = self.filesystem.open_output_stream(path)
        footer: list = []  # pyarrow appends the file's FileMetaData here on close
        # Vector columns (lists of floats) get neither a dictionary nor statistics nor compression: random
        # floats never dictionary-encode and do not compress, and Delta keeps no statistics of nested
        # columns; each costs CPU for nothing (measured: 5x the write time for the first two). Digest
        # columns get no dictionary either (the writer would build one per row group, then give up).
        plain = [f.name for f in self.file_schema if not _is_vector(f.type)]
        dictionary = [name for name in plain if name not in DIGEST_COLUMNS]
        compression = {f.name: ("none" if _is_vector(f.type) else "snappy") for f in self.file_schema}
        writer = pq.ParquetWriter(
            sink, schema, compression=compression, write_statistics=plain, use_dictionary=dictionary,
            # A file with vectors keeps no Arrow schema: a fixed-size list is then read back as the
            # list the Delta schema names (strict readers refuse a file whose Arrow schema says otherwise).
            metadata_collector=footer, store_schema=not any(_is_vector(f.type) for f in self.file_schema), memory_pool=_writer_pool(),
        )
        self.file = {"path": path, "sink": sink, "writer": writer, "footer": footer, "schema": schema}

    def _finish_file(self) -> None:
        from deltalake.transaction import AddAction

        self.file["writer"].close()
        size = self.file["sink"].tell()
        self.file["sink"].close()
        [metadata] = self.file["footer"]
        self.actions.append(AddAction(
            path=self.file["path"], size=size, partition_values={"batch": self.batch},
            modification_time=int(time.time() * 1000), data_change=True,
            stats=json.dumps(footer_stats(metadata, self.file_schema)),
        ))
        self.file = {}


def commit_files(files: PartitionFiles, *, mode: str, app_transaction: tuple[str, int] | None = None) -> None:
    """Commits written data files in one Delta commit (append, or overwrite of their partition).

    delta-rs retries a commit that lost a race with a non-conflicting writer (`max_commit_retries`).
    A raw overwrite carries no read predicate, so delta-rs reports a race with a commit to another
    partition as a conflict; such a commit is rerun on the new snapshot (its remove actions are
    recomputed), at most COMMIT_RETRIES times. A commit may have landed although it raised (a lost
    reply): the app transaction version, or the table's file list, says whether it did; one that
    did not land leaves no data file behind.
    """
    from deltalake.exceptions import CommitFailedError

    try:
        for attempt in range(COMMIT_RETRIES):
            try:
                return _commit(files, mode, app_transaction)
            except CommitFailedError:
                if _landed(files, app_transaction):
                    return
                if attempt == COMMIT_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
    except BaseException:
        with contextlib.suppress(Exception):
            if _landed(files, app_transaction):
                return
        files.discard()
        raise


def _commit(files: PartitionFiles, mode: str, app_transaction: tuple[str, int] | None) -> None:
    table = files.open_table()
    check_protocol(table, files.name, overwrite=mode == "overwrite")
    table.create_write_transaction(
        files.actions + files.kept, mode=mode, schema=files.table_schema, partition_by=["batch"],
        partition_filters=[("batch", "=", files.batch)] if mode == "overwrite" else None,
        commit_properties=commit_properties(app_transaction),
    )


def _landed(files: PartitionFiles, app_transaction: tuple[str, int] | None) -> bool:
    table = files.open_table()
    if app_transaction:
        version = table.transaction_version(app_transaction[0])
        return version is not None and int(version) >= app_transaction[1]
    paths = [a.path for a in files.actions] + [a.path for a in files.kept]
    if not paths:
        return False
    return any(uri.endswith("/" + paths[0]) for uri in table.file_uris())


def footer_stats(metadata, schema: pa.Schema) -> dict:
    """Delta file statistics read from a Parquet footer: numRecords, nullCount of every flat column,
    min/max of string and integer columns (strings as prefixes of STATS_STRING_CHARS)."""
    flat = {f.name: f for f in schema if not pa.types.is_nested(f.type)}
    nulls: dict[str, int] = {}
    low: dict = {}
    high: dict = {}
    columns = {}
    if metadata.num_row_groups:
        first = metadata.row_group(0)
        columns = {first.column(i).path_in_schema: i for i in range(first.num_columns)}
    for name, field in flat.items():
        ranged = pa.types.is_string(field.type) or pa.types.is_large_string(field.type) or pa.types.is_integer(field.type)
        stats = [metadata.row_group(g).column(columns[name]).statistics for g in range(metadata.num_row_groups)]
        if all(s is not None and s.has_null_count for s in stats):
            nulls[name] = sum(s.null_count for s in stats)
        if not ranged or any(s is None for s in stats):
            continue
        # A row group of only nulls has no min/max; one with values but none recorded spoils the range.
        if any(not s.has_min_max and s.null_count != metadata.row_group(g).num_rows for g, s in enumerate(stats)):
            continue
        bounded = [s for s in stats if s.has_min_max]
        if not bounded:
            continue
        smallest, largest = min(s.min for s in bounded), max(s.max for s in bounded)
        if isinstance(smallest, str):
            smallest, largest = smallest[:STATS_STRING_CHARS], _upper_prefix(largest)
        low[name] = smallest
        if largest is not None:
            high[name] = largest
    return {"numRecords": metadata.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls}


def _upper_prefix(value: str) -> str | None:
    """An upper bound of `value` at most STATS_STRING_CHARS long: the value itself when short, else
    its prefix with the last code point raised by one; None when no such prefix exists."""
    if len(value) <= STATS_STRING_CHARS:
        return value
    prefix = list(value[:STATS_STRING_CHARS])
    while prefix:
        code = ord(prefix.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(prefix) + chr(code)
    return None


def _writer_pool():
    """The memory pool of the Parquet encoder: mimalloc, which reuses the pages of the row group it
    encoded last, where present. The process's default pool may be the system allocator (the
    streaming steps set it so freed memory goes back to the OS), which maps and zero-fills every
    page buffer of every row group anew (measured: the encoder 40% slower). The encoder's live
    memory is one row group, so what mimalloc keeps for reuse stays bounded."""
    global _WRITER_POOL
    if _WRITER_POOL is None:
        try:
            _WRITER_POOL = pa.mimalloc_memory_pool()
        except NotImplementedError:
            _WRITER_POOL = pa.default_memory_pool()
    return _WRITER_POOL


_WRITER_POOL = None


def _is_vector(type_: pa.DataType) -> bool:
    nested = pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)
    return nested and pa.types.is_floating(type_.value_type)


def _table_filesystem(uri: str, options: dict | None):
    """A pyarrow filesystem rooted at the table: the local one on disk, delta-rs' object store otherwise."""
    import pyarrow.fs as pafs

    if not is_object_store(uri):
        return pafs.SubTreeFileSystem(local_path(uri), pafs.LocalFileSystem())
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(uri, options))


def _conform(record_batch: pa.RecordBatch, schema: pa.Schema, name: str) -> pa.RecordBatch:
    """The batch's columns in the table's order and types (e.g. a fixed-size vector as Delta's list)."""
    missing = [f.name for f in schema if f.name not in record_batch.schema.names]
    extra = [n for n in record_batch.schema.names if n != "batch" and schema.get_field_index(n) < 0]
    if missing or extra:
        raise ValueError(f"rows for {name} do not match its schema: missing {missing}, unknown {extra}")
    columns = [record_batch.column(f.name) for f in schema]
    columns = [c if c.type == f.type or _same_vector(c.type, f.type) else c.cast(f.type) for c, f in zip(columns, schema)]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema([f.with_type(c.type) for c, f in zip(columns, schema)]))


def _same_vector(stored: pa.DataType, declared: pa.DataType) -> bool:
    """A fixed-size list of floats written for a list of the same floats: one Parquet LIST (the file
    keeps no Arrow schema), written without the cast's copy of every value."""
    return (
        pa.types.is_fixed_size_list(stored) and pa.types.is_list(declared)
        and stored.value_type == declared.value_type and _is_vector(declared)
    )
