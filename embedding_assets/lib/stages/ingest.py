"""raw_documents: read a landed batch (a local folder or an object-storage prefix) into Delta.

Every unreadable file or record becomes a row of rejected_documents with its reason.
"""

from __future__ import annotations

import os
import tempfile
import time

import pyarrow as pa

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets.lib.stages.common import Log, utc_now
from embedding_assets.lib.storage.names import validate_batch
from embedding_assets.lib.storage.uri import is_object_store, local_path


class AllDocumentsRejected(RuntimeError):
    pass


def ingest_batch(landing: str, lake_root: str, batch: str, max_file_bytes: int, log: Log = print) -> dict:
    """Reads landing/<batch>, writes the raw_documents and rejected_documents partitions."""
    from embedding_assets.lib.readers import Document, Rejection, read_batch

    validate_batch(batch)
    started = time.perf_counter()
    with _local_batch_dir(landing, batch, max_file_bytes) as (batch_dir, early_rejections):
        docs: list[Document] = []
        rejections: list[Rejection] = list(early_rejections)
        for item in read_batch(batch_dir, max_file_bytes=max_file_bytes):
            (docs if isinstance(item, Document) else rejections).append(item)
    for r in rejections:
        log(f"rejected {r.source}{' ' + r.record if r.record else ''}: {r.reason}")
    stamp = utc_now()
    raw = pa.table({
        "batch": [batch] * len(docs),
        "doc_id": [d.doc_id for d in docs],
        "source": [d.source for d in docs],
        "text": [d.text for d in docs],
        "content_hash": [d.content_hash for d in docs],
        "size_bytes": [d.size_bytes for d in docs],
        "flags": [d.flags for d in docs],
        "ingested_at": [stamp] * len(docs),
    }, schema=tables.RAW_DOCUMENTS)
    rejected = pa.table({
        "batch": [batch] * len(rejections),
        "source": [r.source for r in rejections],
        "record": [r.record for r in rejections],
        "reason": [r.reason for r in rejections],
        "rejected_at": [stamp] * len(rejections),
    }, schema=tables.REJECTED_DOCUMENTS)
    lake.replace_partition(lake_root, tables.REJECTED, batch, rejected)
    if not docs:
        lake.replace_partition(lake_root, tables.RAW, batch, raw)
        detail = "; ".join(f"{r.source}: {r.reason}" for r in rejections[:5]) or "the batch folder holds no documents"
        raise AllDocumentsRejected(f"batch {batch!r}: every document was rejected ({len(rejections)}): {detail}")
    lake.replace_partition(lake_root, tables.RAW, batch, raw)
    return {
        "documents": len(docs),
        "rejected": len(rejections),
        "bytes": int(sum(d.size_bytes for d in docs)),
        "flagged": sum(1 for d in docs if d.flags),
        "rejections": [f"{r.source}{' ' + r.record if r.record else ''}: {r.reason}" for r in rejections[:50]],
        "duration_s": time.perf_counter() - started,
    }


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
