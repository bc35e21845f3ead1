"""The Delta sink: vectors in the lake's `embeddings` table, each written once.

A checkpoint writes final-form data files (the embeddings schema, one row per chunk) straight into
the embeddings partition's folder, where no Delta reader sees them (nothing in the table's log names
them), and records each file (path, size, rows, footer statistics, fingerprint) in the
`_embeddings_checkpoints` table with an exactly-once append (app transaction). Publishing is one
overwrite commit of the partition that adds the kept files as they are plus the files written then,
so readers see the old complete set or the new one, never a mix, and no kept vector is rewritten.

Files that are never published: `finish` deletes the recorded ones it did not publish (the
partition's lock means no other run of the batch is writing), after dropping their records. A file
written by a run killed before it recorded the file is named by no log at all: `DeltaTable.vacuum(
full=True)` removes such files once they are older than its retention (7 days by default; the
lake's own `vacuum`, a "lite" one, leaves every file no log names alone). No vacuum deletes a file
the log names (a published one); a full vacuum would delete a recorded, unpublished file older
than its retention (a run resumed after longer than that): such a file is not used, and its texts
are embedded again.

Reads stream through `lake.scan_partition` (published rows) or one data file at a time (parts),
decoding one record batch at a time on the consuming thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import urllib.parse
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables, writer
from embedding_assets.lib.sinks.base import Part


class DeltaSink:
    def __init__(self, lake_root: str):
        self.lake_root = lake_root
        self._filesystem = None

    @property
    def uri(self) -> str:
        return lake.table_uri(self.lake_root, tables.EMBEDDINGS)

    @property
    def filesystem(self):
        if self._filesystem is None:
            self._filesystem = writer._table_filesystem(self.uri, lake.storage_options(self.lake_root))
        return self._filesystem

    def scan(self, batch: str, columns: list[str], *, filter=None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        return lake.scan_partition(self.lake_root, tables.EMBEDDINGS, batch, columns=columns, filter=filter, batch_size=batch_size)

    def checkpoint_version(self, app_id: str) -> int:
        return lake.transaction_version(self.lake_root, tables.STAGING, app_id)

    def checkpoint_writer(self, batch: str, schema: pa.Schema) -> "DeltaCheckpointWriter":
        # The table exists before any file stands in its folder (a folder of data without a log is
        # taken for a damaged table).
        lake.create_table(self.lake_root, tables.EMBEDDINGS, schema)
        lake.create_table(self.lake_root, tables.STAGING, tables.STAGING_SCHEMA)
        return DeltaCheckpointWriter(self, batch)

    def _records(self, batch: str) -> pa.Table | None:
        return lake.read_partition(self.lake_root, tables.STAGING, batch)

    def _published_paths(self, batch: str) -> set[str]:
        if not lake.exists(self.lake_root, tables.EMBEDDINGS):
            return set()
        table = lake.open_table(self.lake_root, tables.EMBEDDINGS)
        actions = pa.table(table.get_add_actions(flatten=True))
        if not actions.num_rows:
            return set()
        mine = actions.filter(pc.equal(actions.column("partition.batch"), batch))
        # The log holds each path percent-encoded (a URI reference), the folder's escape escaped
        # again (`batch=a%253Db/...`); the records hold the path itself, as the writer names it.
        return {urllib.parse.unquote(path) for path in mine.column("path").to_pylist()}

    def parts(self, batch: str) -> list[Part]:
        records = self._records(batch)
        if records is None or not records.num_rows:
            return []
        import pyarrow.fs as pafs

        published = self._published_paths(batch)
        rows = records.to_pylist()
        done = [r["path"] for r in rows if r["path"] in published]
        if done:
            # A publish landed and its run stopped before tidying up: those files are the table's now.
            # Their records go first, so a record only ever names a file no log has named (which
            # `finish` may delete), whatever later publishes remove.
            listed = ", ".join(f"'{path}'" for path in done)  # paths are percent-encoded: no quote in them
            lake.delete_partition(self.lake_root, tables.STAGING, batch, f"path IN ({listed})")
            rows = [r for r in rows if r["path"] not in published]
        infos = self.filesystem.get_file_info([r["path"] for r in rows]) if rows else []
        return [
            Part(
                key=record["path"], model=record["model"], rows=record["num_rows"], size_bytes=record["size_bytes"],
                extra=record["stats"], modification_time=record["modification_time"],
            )
            # A recorded file that is gone (a vacuum with a short retention) is not used: its texts are embedded again.
            for record, info in zip(rows, infos) if info.type == pafs.FileType.File
        ]

    def scan_part(self, part: Part, columns: list[str], *, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        with self.filesystem.open_input_file(part.key) as source:
            yield from pq.ParquetFile(source).iter_batches(batch_size=batch_size, columns=columns, use_threads=False)

    def publish(self, batch: str, keep: list[Part], rows: pa.RecordBatchReader) -> None:
        from deltalake.transaction import AddAction

        lake.create_table(self.lake_root, tables.EMBEDDINGS, rows.schema)
        files = writer.write_files(writer.PartitionFiles(self.uri, lake.storage_options(self.lake_root), tables.EMBEDDINGS, batch), rows)
        # Every kept file is still there just before the commit names it (a commit naming a missing
        # file would break every reader of the table).
        import pyarrow.fs as pafs

        missing = [p.key for p, info in zip(keep, self.filesystem.get_file_info([p.key for p in keep])) if info.type != pafs.FileType.File]
        if missing:
            files.discard()
            raise RuntimeError(f"{len(missing)} checkpoint files of batch {batch!r} disappeared before the publish (first: {missing[0]}); nothing was published")
        files.kept = [
            AddAction(path=p.key, size=p.size_bytes, partition_values={"batch": batch}, modification_time=p.modification_time, data_change=True, stats=p.extra)
            for p in keep
        ]
        writer.commit_files(files, mode="overwrite")

    def finish(self, batch: str) -> None:
        records = self._records(batch)
        if records is None or not records.num_rows:
            return
        # A record names a file no log has named (see `parts`), unless this run just published it.
        published = self._published_paths(batch)
        unpublished = [p for p in records.column("path").to_pylist() if p not in published]
        # Records first: a crash between the two leaves files no log names (a vacuum's), never a
        # record of a deleted file.
        lake.delete_partition(self.lake_root, tables.STAGING, batch)
        for path in unpublished:
            with contextlib.suppress(FileNotFoundError):
                self.filesystem.delete_file(path)
        lake.vacuum(self.lake_root, tables.STAGING, retention_hours=1)


class DeltaCheckpointWriter:
    """Checkpoint rows as data files in the embeddings partition's folder, recorded at each commit.

    It has `lanes` independent file writers: `write(rows, lane)` may run on one thread per lane at
    once (encoding and writing each lane's files releases the GIL); `commit` runs while no write
    does and records every lane's files in one append."""

    lanes = 2

    def __init__(self, sink: DeltaSink, batch: str):
        self.sink, self.batch = sink, batch
        options = lake.storage_options(sink.lake_root)
        table = lake.open_table(sink.lake_root, tables.EMBEDDINGS)
        self.files = [writer.PartitionFiles(sink.uri, options, tables.EMBEDDINGS, batch, table=table) for _ in range(self.lanes)]
        self.model: str | None = None

    def write(self, rows: pa.RecordBatch, lane: int = 0) -> None:
        if self.model is None and rows.num_rows:
            self.model = rows.column("model")[0].as_py()
        self.files[lane].write(rows)

    def commit(self, app_transaction: tuple[str, int]) -> int:
        actions = []
        for files in self.files:
            files.close()
            actions += files.take_actions()
        if not actions:
            return 0
        now = pa.array([dt.datetime.now(dt.timezone.utc)] * len(actions), tables.TS)
        records = pa.table({
            "batch": [self.batch] * len(actions),
            "model": [self.model] * len(actions),
            "path": [a.path for a in actions],
            "size_bytes": pa.array([a.size for a in actions], pa.int64()),
            "num_rows": pa.array([json.loads(a.stats)["numRecords"] for a in actions], pa.int64()),
            "stats": [a.stats for a in actions],
            "modification_time": pa.array([a.modification_time for a in actions], pa.int64()),
            "written_at": now,
        }, schema=tables.STAGING_SCHEMA)
        try:
            lake.append(self.sink.lake_root, tables.STAGING, records, app_transaction=app_transaction)
        except BaseException:
            # Not recorded (an append that landed returns normally): its files must not outlive it.
            for action in actions:
                with contextlib.suppress(Exception):
                    self.sink.filesystem.delete_file(action.path)
            raise
        return int(pc.sum(records.column("num_rows")).as_py() or 0)

    def close(self) -> None:
        for files in self.files:
            files.discard()
