"""Delta Lake table I/O: every table lives at `<lake root>/<name>` and is partitioned by `batch`.

Writes to one partition never touch another: a partition is replaced with an overwrite whose
predicate is `batch = '<batch>'`, so concurrent runs on different batches commit side by side
(delta-rs retries a commit that raced another writer on a different partition). Reads prune to
one partition and to the columns asked for, and can stream record batches. Streamed writes go
through `writer` (bounded memory). Every write stores each column in the type the Delta schema
names (a fixed-size vector as a list), so any Delta reader (polars, DuckDB, Spark) reads the files.

Every open checks the table's log first (`DamagedTable`): a table folder holding data but no
`_delta_log` is never taken for a missing table (creating it anew would drop every batch in it),
and a commit file that is empty or not JSON stops the read or write, naming the table and version.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib.lake import writer
from embedding_assets.lib.storage.names import validate_batch
from embedding_assets.lib.storage.uri import is_object_store, local_path

LOG = "_delta_log"
COMMIT_FILE = re.compile(r"(\d{20})\.json")
# Commits read to name the broken one after delta-rs failed to read a log (newest first).
MAX_COMMITS_DIAGNOSED = 1000


class DamagedTable(RuntimeError):
    """A table whose Delta log is missing, truncated or unreadable. Nothing reads or writes it until
    the log is repaired: a guess would lose or hide rows of other batches."""


def table_uri(root: str, name: str) -> str:
    if is_object_store(root):
        return f"{root.rstrip('/')}/{name}"
    return os.path.join(local_path(root), name)


def storage_options(root: str) -> dict[str, str] | None:
    """Object-storage credentials for delta-rs, taken from the environment (never logged)."""
    if not is_object_store(root):
        return None
    from embedding_assets.lib.storage.credentials import delta_storage_options

    return delta_storage_options(root)


def exists(root: str, name: str) -> bool:
    """Whether the table exists. A folder with data files but no log is not "no table": it raises
    DamagedTable, as does a damaged log (see `open_table`)."""
    return _open_if_exists(root, name) is not None


def _open_if_exists(root: str, name: str):
    """`open_table`, or None where there is no table yet."""
    # Not DeltaTable.is_deltatable: it holds the GIL through its storage round trips, which
    # freezes every other thread (the prefetching reader, the sensor daemon) on object storage.
    from deltalake.exceptions import TableNotFoundError

    try:
        return open_table(root, name)
    except TableNotFoundError:
        return None


def dataset(root: str, name: str, table=None):
    """The table's latest version as a pyarrow dataset (open it with `open_table` first, or pass it).

    A local table is read through Arrow's own file system: delta-rs' default hands Arrow a file
    system written in Python, whose last reference Arrow's I/O threads may drop while the
    interpreter shuts down, aborting the process after its work is done.
    """
    import pyarrow.fs as pafs

    table = open_table(root, name) if table is None else table
    if is_object_store(root):
        return table.to_pyarrow_dataset()
    return table.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(table_uri(root, name), pafs.LocalFileSystem()))


def open_table(root: str, name: str):
    """The table at its latest version, after checking its log: DamagedTable when the log is missing
    beside data files, or a commit is empty or not JSON; TableNotFoundError when there is no table."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    uri = table_uri(root, name)
    try:
        table = DeltaTable(uri, storage_options=storage_options(root))
    except TableNotFoundError:
        found = _data_without_log(root, name)
        if not found:
            raise
        table = _reopen_after_concurrent_create(uri, storage_options(root))
        if table is None:
            raise DamagedTable(_data_without_log_message(root, name, found)) from None
    except DeltaError as exc:
        _find_damaged_commit(root, name, exc)
        raise
    check_log(root, name, table.version())
    return table


def check_log(root: str, name: str, version: int) -> None:
    """Raises DamagedTable if the commit of `version` (the latest) is empty or not JSON, or, on a
    local lake, if any commit delta-rs replays (those after the last checkpoint) is empty. delta-rs
    takes an empty commit for one with no actions: the rows it added would silently vanish."""
    filesystem = _log_filesystem(root, name)
    if not is_object_store(root):
        for commit_version, _path, size in _commits_to_replay(root, name, filesystem):
            if size == 0:
                raise DamagedTable(_damaged(root, name, commit_version, "is empty (0 bytes)"))
    try:
        data = _read(filesystem, f"{LOG}/{version:020d}.json")
    except FileNotFoundError:
        return  # only a checkpoint holds this version (older commits were cleaned up)
    problem = _commit_problem(data)
    if problem:
        raise DamagedTable(_damaged(root, name, version, problem))


def _commit_problem(data: bytes) -> str | None:
    if not data.strip():
        return f"is empty ({len(data)} bytes)"
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError as exc:
            return f"is not valid JSON at line {number} ({exc})"
        if not isinstance(action, dict) or len(action) != 1:
            return f"holds no Delta action at line {number}"
    return None


def _damaged(root: str, name: str, version: int, problem: str) -> str:
    path = f"{table_uri(root, name)}/{LOG}/{version:020d}.json"
    return (
        f"table {name} is damaged: its commit of version {version} ({path}) {problem}. Nothing was read "
        f"or written. Restore that file from a backup; without one, move it away (the table goes back "
        f"to version {version - 1}) and rerun the batches whose last run wrote {name} at version {version}."
    )


def _find_damaged_commit(root: str, name: str, error: Exception) -> None:
    """After delta-rs failed to read a log: DamagedTable naming the newest broken commit among those
    it replays, if any (else the caller re-raises delta-rs' own error: storage may be at fault)."""
    filesystem = _log_filesystem(root, name)
    try:
        commits = sorted(_commits_to_replay(root, name, filesystem), reverse=True)[:MAX_COMMITS_DIAGNOSED]
    except OSError:
        return
    for version, path, size in commits:
        try:
            problem = "is empty (0 bytes)" if size == 0 else _commit_problem(_read(filesystem, path))
        except OSError:
            return
        if problem:
            raise DamagedTable(_damaged(root, name, version, f"{problem}; delta-rs: {str(error).splitlines()[0]}")) from error


def _reopen_after_concurrent_create(uri: str, options, attempts: int = 3, pause: float = 0.05):
    """The table, where a concurrent first write committed its log between our two looks; else None."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    for attempt in range(attempts):
        try:
            return DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            time.sleep(pause * (attempt + 1))
    return None


def _data_without_log(root: str, name: str) -> list[str]:
    """What the folder of a table delta-rs did not find still holds: partitions, data files, commits."""
    import pyarrow.fs as pafs

    filesystem = _log_filesystem(root, name)
    try:
        entries = filesystem.get_file_info(pafs.FileSelector("", allow_not_found=True))
    except (OSError, pa.ArrowException):
        return []
    return sorted(
        os.path.basename(e.path) for e in entries
        if (e.type == pafs.FileType.Directory and os.path.basename(e.path).startswith("batch="))
        or (e.type == pafs.FileType.File and e.path.endswith(".parquet"))
        or (e.type == pafs.FileType.Directory and os.path.basename(e.path) == LOG and _commit_or_checkpoint(filesystem))
    )


def _data_without_log_message(root: str, name: str, found: list[str]) -> str:
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return (
        f"table {name} is damaged: {table_uri(root, name)} holds data ({shown}) but no readable Delta "
        f"log ({LOG} is missing or has no commit). It is not created anew, which would drop every batch "
        f"in it. Restore {LOG} from a backup, or move the folder away (its rows leave the lake) and rerun "
        f"every batch."
    )


def _log_filesystem(root: str, name: str):
    return writer._table_filesystem(table_uri(root, name), storage_options(root))


def _commits_to_replay(root: str, name: str, filesystem) -> list[tuple[int, str, int]]:
    """(version, path, size) of each commit file after the last checkpoint (all without one)."""
    import pyarrow.fs as pafs

    try:
        last = int(json.loads(_read(filesystem, f"{LOG}/_last_checkpoint"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        last = -1
    if not is_object_store(root):
        # os.scandir names the files without a stat each: a long log costs one directory read.
        folder = os.path.join(local_path(table_uri(root, name)), LOG)
        try:
            names = [entry.name for entry in os.scandir(folder)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        commits = []
        for file in names:
            match = COMMIT_FILE.fullmatch(file)
            if match and int(match.group(1)) > last:
                with contextlib.suppress(FileNotFoundError):
                    commits.append((int(match.group(1)), f"{LOG}/{file}", os.stat(os.path.join(folder, file)).st_size))
        return commits
    entries = filesystem.get_file_info(pafs.FileSelector(LOG, allow_not_found=True))
    return [
        (int(os.path.basename(e.path)[:20]), e.path, e.size) for e in entries
        if e.type == pafs.FileType.File and COMMIT_FILE.fullmatch(os.path.basename(e.path)) and int(os.path.basename(e.path)[:20]) > last
    ]


def _commit_or_checkpoint(filesystem) -> bool:
    import pyarrow.fs as pafs

    entries = filesystem.get_file_info(pafs.FileSelector(LOG, allow_not_found=True))
    return any(e.type == pafs.FileType.File and (e.path.endswith(".json") or ".checkpoint" in e.path) for e in entries)


def _read(filesystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _writer_properties():
    from deltalake import WriterProperties

    return WriterProperties(max_row_group_size=writer.ROW_GROUP_ROWS, compression="SNAPPY")


def _sizes() -> dict:
    return {"target_file_size": writer.TARGET_FILE_BYTES, "writer_properties": _writer_properties()}


def _partition_filter(batch: str):
    return pc.field("batch") == batch


def read_partition(root: str, name: str, batch: str, columns: list[str] | None = None, filter=None) -> pa.Table | None:
    """One partition of a table as Arrow, or None if the table does not exist yet."""
    validate_batch(batch)
    table = _open_if_exists(root, name)
    if table is None:
        return None
    expression = _partition_filter(batch) if filter is None else (_partition_filter(batch) & filter)
    return dataset(root, name, table).to_table(columns=columns, filter=expression)


def scan_partition(root: str, name: str, batch: str, columns: list[str] | None = None, batch_size: int = 4096, filter=None, *, read_ahead: bool = True) -> Iterator[pa.RecordBatch]:
    """One partition, streamed in record batches (bounded memory). Without `read_ahead`, one row
    group is read and decoded at a time (no batches decoded ahead, no file's column chunks
    buffered whole): for large values such as document texts."""
    validate_batch(batch)
    table = _open_if_exists(root, name)
    if table is None:
        return iter(())
    expression = _partition_filter(batch) if filter is None else (_partition_filter(batch) & filter)
    # Decoded on the consuming thread: pyarrow's threaded scan reads ahead without bound behind a
    # slow consumer (whatever its read-ahead settings say), holding hundreds of MB of vectors. Even
    # so it reads ahead 16 batches and 4 files by default (measured: +100 MB of Arrow memory in the
    # embeddings step at 500k chunks): one of each, or none with `read_ahead=False`.
    options = {"batch_readahead": 1, "fragment_readahead": 1}
    if not read_ahead:
        import pyarrow.dataset as pads

        options = {"batch_readahead": 0, "fragment_readahead": 0, "fragment_scan_options": pads.ParquetFragmentScanOptions(pre_buffer=False)}
    return dataset(root, name, table).to_batches(columns=columns, filter=expression, batch_size=batch_size, use_threads=False, **options)


def read_table(root: str, name: str, columns: list[str] | None = None, filter=None) -> pa.Table | None:
    table = _open_if_exists(root, name)
    if table is None:
        return None
    return dataset(root, name, table).to_table(columns=columns, filter=filter)


def replace_partition(root: str, name: str, batch: str, data: pa.Table | pa.RecordBatchReader, *, app_transaction: tuple[str, int] | None = None) -> None:
    """Atomically replaces one partition's rows with `data` (one commit; other partitions untouched).

    A table is written by delta-rs; a reader is streamed by `writer` (bounded memory).
    """
    from deltalake import write_deltalake

    validate_batch(batch)
    uri, options = table_uri(root, name), storage_options(root)
    if isinstance(data, pa.RecordBatchReader):
        # A one-shot reader cannot be replayed after losing a create race: create the table empty.
        _create_empty(root, name, data.schema)
        writer.write_partition(uri, options, name, batch, data, mode="overwrite", app_transaction=app_transaction)
        return
    # The table is created empty first (a concurrent creator wins the race), so no data file ever
    # stands in the table's folder before its log does: data without a log means a lost log.
    _create_empty(root, name, writer.delta_schema(data.schema))
    props = writer.commit_properties(app_transaction)
    data = _conform(data, pa.schema(open_table(root, name).schema().to_arrow()))
    write_deltalake(
        uri, data, mode="overwrite", predicate=f"batch = '{batch}'", partition_by=["batch"],
        storage_options=options, commit_properties=props, **_sizes(),
    )


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Each column of `data` cast to the type the Delta schema names for it. delta-rs writes Arrow
    types as they come: a fixed-size vector would land in the files as a fixed-size list while the
    log says list, which strict readers (polars) refuse."""
    columns, fields = [], []
    for field, column in zip(data.schema, data.columns):
        index = schema.get_field_index(field.name)
        target = schema.field(index).type if index >= 0 else field.type
        if column.type != target:
            try:
                column = column.cast(target)
            except pa.ArrowInvalid:
                # A large_string chunk past 2 GiB has no `string` form; both are one Parquet type,
                # which every reader takes for the Delta type: keep it.
                if not writer.same_parquet_kind(column.type, target):
                    raise
                target = column.type
        columns.append(column)
        fields.append(field.with_type(target))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=data.schema.metadata))


def create_table(root: str, name: str, schema: pa.Schema) -> None:
    """Creates the table with no rows (in the types Delta stores for `schema`) if it does not exist."""
    _create_empty(root, name, writer.delta_schema(schema))


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


def add_missing_columns(root: str, name: str, schema: pa.Schema) -> list[str]:
    """Evolves an existing table's schema to hold every column of `schema` it lacks, as nullable
    columns (rows written before read back null in them), in one metadata commit; returns the
    names added. A column the table has is left as it is; a concurrent run adding the same
    columns is fine (the loser of the race finds them there)."""
    from deltalake import Schema
    from deltalake.exceptions import CommitFailedError, DeltaError

    for attempt in range(writer.COMMIT_RETRIES):
        table = _open_if_exists(root, name)
        if table is None:
            return []
        have = set(pa.schema(table.schema().to_arrow()).names)
        missing = [field.with_nullable(True) for field in schema if field.name not in have]
        if not missing:
            return []
        try:
            table.alter.add_columns(list(Schema.from_arrow(pa.schema(missing)).fields), commit_properties=writer.commit_properties())
            return [field.name for field in missing]
        except DeltaError as exc:
            # A concurrent run may have added them first (or changed the metadata meanwhile).
            if not isinstance(exc, CommitFailedError) or attempt == writer.COMMIT_RETRIES - 1:
                table = _open_if_exists(root, name)
                if table is not None and not {f.name for f in missing} - set(pa.schema(table.schema().to_arrow()).names):
                    return []
                raise
            time.sleep(0.05 * 2**attempt)
    return []


def append(root: str, name: str, data: pa.Table, *, app_transaction: tuple[str, int] | None = None) -> None:
    """Appends rows in one commit; with an app transaction, a replay or a retry after an ambiguous
    failure is a no-op (checked before the commit and after a failure: delta-rs would append the
    same rows twice)."""
    if app_transaction and transaction_version(root, name, app_transaction[0]) >= app_transaction[1]:
        return
    _create_empty(root, name, data.schema)
    batches = pc.unique(data.column("batch")).to_pylist() if data.num_rows else []
    if len(batches) > 1 and app_transaction:
        raise ValueError("an exactly-once append writes one partition")
    uri, options = table_uri(root, name), storage_options(root)
    for batch in batches:
        rows = data.filter(pc.equal(data.column("batch"), batch)) if len(batches) > 1 else data
        writer.write_partition(
            uri, options, name, validate_batch(batch), rows.to_batches(max_chunksize=writer.ROW_GROUP_ROWS),
            mode="append", app_transaction=app_transaction,
        )


def transaction_version(root: str, name: str, app_id: str) -> int:
    """The last committed version of an application transaction, or -1."""
    table = _open_if_exists(root, name)
    version = None if table is None else table.transaction_version(app_id)
    return -1 if version is None else int(version)


def delete_partition(root: str, name: str, batch: str, extra_predicate: str | None = None) -> None:
    predicate = f"batch = '{validate_batch(batch)}'" + (f" AND ({extra_predicate})" if extra_predicate else "")
    _on_fresh_snapshot(root, name, lambda table: table.delete(predicate, commit_properties=writer.commit_properties()))


def compact_partition(root: str, name: str, batch: str) -> dict:
    validate_batch(batch)
    result = _on_fresh_snapshot(root, name, lambda table: table.optimize.compact(
        partition_filters=[("batch", "=", batch)], target_size=writer.TARGET_FILE_BYTES,
        max_concurrent_tasks=1, writer_properties=_writer_properties(),
    ))
    return result or {}


def _on_fresh_snapshot(root: str, name: str, operation):
    """Runs a partition-local, repeatable operation (a delete, a compaction) on the table's latest
    version; a commit refused because of another writer's concurrent commit is run again on the new
    version, at most COMMIT_RETRIES times. None when there is no table."""
    from deltalake.exceptions import CommitFailedError

    for attempt in range(writer.COMMIT_RETRIES):
        table = _open_if_exists(root, name)
        if table is None:
            return None
        try:
            return operation(table)
        except CommitFailedError:
            if attempt == writer.COMMIT_RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    return None


def vacuum(root: str, name: str, retention_hours: int) -> list[str]:
    """Deletes data files that left the table more than `retention_hours` ago."""
    table = _open_if_exists(root, name)
    if table is None:
        return []
    return table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False)


def partitions(root: str, name: str) -> list[str]:
    table = _open_if_exists(root, name)
    return [] if table is None else sorted({p["batch"] for p in table.partitions()})
