"""raw_documents: read a landed batch (a local folder or an object-storage prefix) into Delta.

Every unreadable file or record becomes a row of rejected_documents with its reason.

The batch is streamed: documents go to the raw_documents writer (`lake.replace_partition` with a
RecordBatchReader) in record batches of at most _ROWS rows or _TEXT_BYTES of text as they are read,
and rejections are spilled to a local Arrow IPC file, so memory never holds the batch, only one
file being read and one record batch. What spans the whole partition is fixed-width: a 128-bit hash
and a source ordinal per document (numpy arrays, for the duplicate doc_id check) and one path per
file that yielded documents.

How a run ends, nothing committed before the input was read to its end:
- documents read: rejected_documents is replaced, then raw_documents (its data files were written
  as the documents came and are committed in one commit).
- a batch with no file left (an empty folder, or only `_READY` / hidden files): both partitions
  are emptied and the step succeeds, its result saying `empty: True`.
- files, but every one rejected: rejected_documents is replaced, raw_documents is left as it was,
  and `AllDocumentsRejected` names the files.
- two documents with one doc_id (which the readers' doc_id encoding rules out): nothing written is
  committed; the batch is read again with those documents rejected, each naming the doc_id and
  every source that produced it, and the rest of the batch goes on.

Errors from storage reach logs and metadata only through `credentials.redactor`: every configured
credential value, key ids and account names included, is replaced by '***', and an exception that
held one is re-raised with the redacted message and no chained original.
"""

from __future__ import annotations

import array
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets.lib.stages.common import Log, utc_now
from embedding_assets.lib.storage.credentials import redacted_error, redactor
from embedding_assets.lib.storage.names import validate_batch
from embedding_assets.lib.storage.uri import is_object_store, local_path

_ROWS = 1024  # documents per record batch handed to the writer
_TEXT_BYTES = 16 << 20  # ... or fewer, once their text reaches this size
_REJECTION_ROWS = 4096
_METADATA_REJECTIONS = 50


class AllDocumentsRejected(RuntimeError):
    """The batch has files but none of them gave a document: raw_documents was left unchanged."""


class DuplicateDocIds(AllDocumentsRejected):
    """Documents kept sharing a doc_id on a second read: nothing was committed.

    A subclass of AllDocumentsRejected so that it ends the step as a failure that names the input
    (not a retry): the same input gives the same answer.
    """


class _NoDocuments(Exception):
    """Raised at the end of the raw_documents stream to leave that partition as it was."""


class _Duplicates(Exception):
    """Raised at the end of the raw_documents stream to discard what it wrote."""

    def __init__(self, found: dict[bytes, list[str]]):
        super().__init__(f"{len(found)} duplicate doc_id(s)")
        self.found = found


def ingest_batch(
    landing: str, lake_root: str, batch: str, max_file_bytes: int, log: Log = print, *, max_document_chars: int | None = None
) -> dict:
    """Reads landing/<batch>, writes the raw_documents and rejected_documents partitions.

    `max_document_chars` defaults to EMBEDDING_MAX_DOCUMENT_CHARS. Returns documents, rejected,
    bytes, flagged, rejections (the first 50, as text), duration_s, empty (the batch had no file
    left) and max_document_chars.
    """
    validate_batch(batch)
    if max_document_chars is None:
        from embedding_assets.lib.settings import env

        max_document_chars = int(env("EMBEDDING_MAX_DOCUMENT_CHARS"))
    redact = redactor()

    def safe_log(message: str) -> None:
        log(redact(message))

    try:
        return _ingest(landing, lake_root, batch, max_file_bytes, max_document_chars, safe_log, redact)
    except Exception as exc:  # noqa: BLE001 - only rewritten when it holds a credential
        safe = redacted_error(exc, redact)
        if safe is None:
            raise
    # Raised outside the handler, so the original (which held a credential) is not chained to it.
    raise safe


def _ingest(landing: str, lake_root: str, batch: str, cap: int, max_chars: int, log: Log, redact) -> dict:
    from embedding_assets.lib.readers import read_batch

    started = time.perf_counter()
    exclude: dict[bytes, list[str]] = {}
    for attempt in range(2):
        stamp = utc_now()
        with _local_batch_dir(landing, batch, cap) as (batch_dir, early_rejections), tempfile.TemporaryDirectory(
            prefix="rejections-"
        ) as spill_dir:
            items = read_batch(batch_dir, max_file_bytes=cap, max_document_chars=max_chars)
            run = _Run(batch, stamp, os.path.join(spill_dir, "rejections.arrows"), exclude, log, redact)
            for rejection in early_rejections:
                run.reject(rejection)
            reader = pa.RecordBatchReader.from_batches(tables.RAW_DOCUMENTS, run.raw_batches(items, lake_root))
            try:
                lake.replace_partition(lake_root, tables.RAW, batch, reader)
            except _Duplicates as duplicates:
                run.spill.abandon()
                if attempt:
                    raise DuplicateDocIds(_duplicates_message(batch, duplicates.found)) from None
                log(f"{_duplicates_message(batch, duplicates.found)}; reading the batch again with them rejected")
                exclude = duplicates.found
                continue
            except _NoDocuments:
                detail = "; ".join(run.shown[:5])
                raise AllDocumentsRejected(
                    f"batch {batch!r}: every document was rejected ({run.rejected}); raw_documents is unchanged: {detail}"
                ) from None
        break
    if run.empty:
        log(f"batch {batch!r} has no files (an empty folder or only markers): its raw_documents and rejected_documents partitions are now empty")
    return {
        "documents": run.documents,
        "rejected": run.rejected,
        "bytes": run.bytes,
        "flagged": run.flagged,
        "rejections": run.shown,
        "duration_s": time.perf_counter() - started,
        "empty": run.empty,
        "max_document_chars": max_chars,
    }


def _duplicates_message(batch: str, found: dict[bytes, list[str]]) -> str:
    shown = "; ".join(f"one from {' and '.join(sources)}" for sources in list(found.values())[:5])
    return f"batch {batch!r}: {len(found)} doc_id(s) produced by more than one document ({shown})"


@dataclass
class _Run:
    """One pass over the batch: builds raw_documents record batches, spills rejections, counts."""

    batch: str
    stamp: object
    spill_path: str
    exclude: dict[bytes, list[str]]
    log: Log
    redact: object
    documents: int = 0
    rejected: int = 0
    bytes: int = 0
    flagged: int = 0
    shown: list[str] = field(default_factory=list)
    empty: bool = False
    ids: "_DocIdIndex" = field(default_factory=lambda: _DocIdIndex())

    def __post_init__(self) -> None:
        self.spill = _RejectionSpill(self.spill_path, self.batch, self.stamp)

    def reject(self, rejection) -> None:
        reason = self.redact(rejection.reason)
        where = f"{rejection.source}{' ' + rejection.record if rejection.record else ''}"
        self.log(f"rejected {where}: {reason}")
        if len(self.shown) < _METADATA_REJECTIONS:
            self.shown.append(f"{where}: {reason}")
        self.rejected += 1
        self.spill.add(rejection.source, rejection.record, reason)

    def raw_batches(self, items, lake_root: str):
        """Record batches of raw_documents; at the end (before the writer commits) the duplicate
        check, then rejected_documents is committed, then the decision for raw_documents."""
        from embedding_assets.lib.readers import Document, Rejection

        rows = _RawRows(self.batch, self.stamp)
        for item in items:
            if not isinstance(item, Document):
                self.reject(item)
                continue
            digest = self.ids.digest(item.doc_id)
            if digest in self.exclude:
                others = [s for s in self.exclude[digest] if s != item.source] or self.exclude[digest]
                reason = f"duplicate doc_id '{item.doc_id}': also produced by {', '.join(others)}; rename one of them"
                self.reject(Rejection(item.source, item.doc_id.partition("#")[2] or None, reason))
                continue
            self.ids.add(digest, item.source)
            self.documents += 1
            self.bytes += item.size_bytes
            if item.flags:
                self.flagged += 1
            full = rows.add(item)
            del item
            if full:
                yield rows.flush()
        if rows.docs:
            yield rows.flush()
        found = self.ids.duplicates()
        if found:
            raise _Duplicates(found)
        self.spill.close()
        self.empty = self.documents == 0 and self.rejected == 0
        lake.replace_partition(lake_root, tables.REJECTED, self.batch, self.spill.reader())
        if self.documents == 0 and not self.empty:
            raise _NoDocuments()
        # returning commits raw_documents: the documents read, or no rows for an empty batch


class _RawRows:
    """At most _ROWS documents or _TEXT_BYTES of text, turned into one record batch at a time."""

    def __init__(self, batch: str, stamp) -> None:
        self.batch, self.stamp = batch, stamp
        self.docs: list = []
        self.text_bytes = 0

    def add(self, doc) -> bool:
        """Adds a document; True once the record batch is full."""
        self.docs.append(doc)
        self.text_bytes += doc.size_bytes
        return len(self.docs) >= _ROWS or self.text_bytes >= _TEXT_BYTES

    def flush(self) -> pa.RecordBatch:
        docs, n = self.docs, len(self.docs)
        out = pa.record_batch(
            [
                tables.constant_column(self.batch, n),
                pa.array([d.doc_id for d in docs], pa.string()),
                pa.array([d.source for d in docs], pa.string()),
                pa.array([d.text for d in docs], pa.large_string()),
                pa.array([d.content_hash for d in docs], pa.string()),
                pa.array([d.size_bytes for d in docs], pa.int64()),
                pa.array([d.flags for d in docs], pa.string()),
                pa.array([self.stamp] * n, tables.RAW_DOCUMENTS.field("ingested_at").type),
            ],
            schema=tables.RAW_DOCUMENTS,
        )
        self.docs, self.text_bytes = [], 0
        return out


class _RejectionSpill:
    """Rejections written to a local Arrow IPC stream as they come, read back as a RecordBatchReader."""

    def __init__(self, path: str, batch: str, stamp) -> None:
        self.path, self.batch, self.stamp = path, batch, stamp
        self.sink = pa.OSFile(path, "wb")
        self.writer = pa.ipc.new_stream(self.sink, tables.REJECTED_DOCUMENTS)
        self.rows: list[tuple[str, str | None, str]] = []

    def add(self, source: str, record: str | None, reason: str) -> None:
        self.rows.append((source, record, reason))
        if len(self.rows) >= _REJECTION_ROWS:
            self._flush()

    def _flush(self) -> None:
        n = len(self.rows)
        if n:
            sources, records, reasons = zip(*self.rows)
            self.writer.write_batch(pa.record_batch(
                [
                    tables.constant_column(self.batch, n),
                    pa.array(sources, pa.string()),
                    pa.array(records, pa.string()),
                    pa.array(reasons, pa.string()),
                    pa.array([self.stamp] * n, tables.REJECTED_DOCUMENTS.field("rejected_at").type),
                ],
                schema=tables.REJECTED_DOCUMENTS,
            ))
        self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()
        self.sink.close()

    def abandon(self) -> None:
        """Closes the spill without writing what is pending (its folder is removed with it)."""
        self.rows = []
        if not self.sink.closed:
            self.writer.close()
            self.sink.close()

    def reader(self) -> pa.RecordBatchReader:
        return pa.ipc.open_stream(pa.memory_map(self.path, "r"))


class _DocIdIndex:
    """A 128-bit hash of every doc_id of the partition and the ordinal of its source: fixed-width
    arrays (20 bytes a document, appended as raw bytes and viewed as numpy arrays for the check),
    the only per-document state that spans the partition, plus one path per file that yielded
    documents (the batch walk's listing holds every path anyway)."""

    def __init__(self) -> None:
        self.hashes = bytearray()  # 16 bytes a document
        self.source_of = array.array("I")
        self.sources: list[str] = []

    @staticmethod
    def digest(doc_id: str) -> bytes:
        return hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def add(self, digest: bytes, source: str) -> None:
        if not self.sources or self.sources[-1] != source:
            self.sources.append(source)
        self.hashes += digest
        self.source_of.append(len(self.sources) - 1)

    def duplicates(self) -> dict[bytes, list[str]]:
        """{doc_id hash: the sources that produced it} for every hash seen more than once."""
        if len(self.source_of) < 2:
            return {}
        hashes = np.frombuffer(self.hashes, dtype=np.uint64).reshape(-1, 2)  # a view, no copy
        order = np.lexsort((hashes[:, 1], hashes[:, 0]))
        ordered = hashes[order]
        same = np.all(ordered[1:] == ordered[:-1], axis=1)
        if not same.any():
            return {}
        found: dict[bytes, list[str]] = {}
        for at in np.flatnonzero(same):
            for row in (order[at], order[at + 1]):
                sources = found.setdefault(hashes[row].tobytes(), [])
                source = self.sources[self.source_of[int(row)]]
                if source not in sources:
                    sources.append(source)
        return found


class _local_batch_dir:
    """The batch as a local folder: the landing folder itself, or a capped download of an object-storage prefix."""

    def __init__(self, landing: str, batch: str, max_file_bytes: int):
        self.landing, self.batch, self.cap = landing, batch, max_file_bytes
        self._tmp = None

    def __enter__(self):
        from embedding_assets.lib.readers import Rejection

        if not is_object_store(self.landing):
            return os.path.join(local_path(self.landing), self.batch), []
        from embedding_assets.lib.storage import download_batch_with_reasons

        self._tmp = tempfile.TemporaryDirectory(prefix=f"batch-{self.batch}-")
        skipped = download_batch_with_reasons(self.landing, self.batch, self._tmp.name, self.cap)
        return self._tmp.name, [Rejection(source=name, record=None, reason=reason) for name, reason in skipped]

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()
