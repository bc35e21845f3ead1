"""chunks: every document of a partition split into token-bounded chunks with the model's tokenizer.

Streams: raw_documents is read a record batch at a time, slices of at most a few MB of text are
chunked by a pool of `workers` processes (`parallel.ordered_map`, results in input order), and the
chunks go straight into the partition's writer (`lake.replace_partition` with a record batch
reader: one commit, bounded memory). With one worker the same code runs inline, so the output is
the same whatever the number of workers: same chunks, same ids, same order.

Each document is tokenized once: every chunk keeps the token ids the chunker computed for it
(`input_ids`, as the model reads them, with the tokenizer's fingerprint), so length_buckets
reads them instead of tokenizing the text again. A chunks table created before these columns
existed gets them (nullable) on its next write.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from embedding_assets.lib import lake, parallel, settings
from embedding_assets.lib.encoders import TokenizerInfo
from embedding_assets.lib.lake import tables
from embedding_assets.lib.lake.io import add_missing_columns
from embedding_assets.lib.stages.common import Log

# A slice handed to a worker: at most this many documents or (about) this much text. Small enough
# that a few slices in flight per worker stay a few MB; large enough to amortize the hand-over.
SLICE_DOCUMENTS = 1024
SLICE_TEXT_BYTES = 512 << 10
IN_FLIGHT_PER_WORKER = 4  # slices handed out and not yet written, per worker
READ_ROWS = 256  # raw_documents rows decoded at a time (documents can be large)


def chunk_batch(
    lake_root: str,
    batch: str,
    tokenizer: TokenizerInfo,
    max_tokens: int | None,
    overlap: int,
    log: Log = print,
    *,
    workers: int | None = None,
) -> dict:
    """Splits every document of the partition into token-bounded chunks (`workers` processes,
    default EMBEDDING_CPU_WORKERS). An empty raw_documents partition gives an empty chunks partition."""
    started = time.perf_counter()
    if not lake.exists(lake_root, tables.RAW):
        raise RuntimeError(f"raw_documents has no rows for batch {batch!r}: materialize raw_documents first")
    workers = workers or settings.cpu_workers()
    max_tokens = min(max_tokens or tokenizer.max_seq_length, tokenizer.max_seq_length)
    stats = {"documents": 0, "chunks": 0, "tokens": 0, "max_chunk_tokens": 0, "documents_without_tokens": 0}
    last_log = [time.monotonic()]
    schema = tables.CHUNKS_SCHEMA

    def chunk_batches() -> Iterator[pa.RecordBatch]:
        documents = lake.scan_partition(lake_root, tables.RAW, batch, columns=["doc_id", "text"], batch_size=READ_ROWS, read_ahead=False)
        results = parallel.ordered_map(
            parallel.chunk_record_batch, text_slices(documents), workers,
            max_in_flight=IN_FLIGHT_PER_WORKER * workers,  # the workers never wait for this process
            initializer=parallel.init_chunker,
            initargs=(tokenizer.tokenizer.to_str(), max_tokens, overlap, None, tokenizer.fingerprint, tokenizer.max_seq_length),
        )
        for done in results:
            stats["documents"] += done.documents
            for doc_id in done.without_tokens:
                log(f"{doc_id}: no tokens to embed (the text holds nothing the tokenizer keeps)")
            for doc_id, reason in done.refused:
                log(f"{doc_id}: {reason}")
            stats["documents_without_tokens"] += len(done.without_tokens)
            n = done.chunks.num_rows
            if n:
                counts = done.chunks.column("n_tokens").to_numpy()
                stats["chunks"] += n
                stats["tokens"] += int(counts.sum())
                stats["max_chunk_tokens"] = max(stats["max_chunk_tokens"], int(counts.max()))
                yield pa.RecordBatch.from_arrays([tables.constant_column(batch, n), *done.chunks.columns], schema=schema)
            if time.monotonic() - last_log[0] > 10:
                last_log[0] = time.monotonic()
                log(f"chunking {batch}: {stats['documents']} documents, {stats['chunks']} chunks")

    # A chunks table written before chunks stored token ids gets the columns (null in its old rows).
    added = add_missing_columns(lake_root, tables.CHUNKS, schema)
    if added:
        log(f"chunks table: added the columns {', '.join(added)} (null in the rows written before)")
    lake.replace_partition(lake_root, tables.CHUNKS, batch, pa.RecordBatchReader.from_batches(schema, chunk_batches()))
    if stats["documents"] == 0:
        log(f"raw_documents has no rows for batch {batch!r}: wrote an empty chunks partition")
    n, tokens = stats["chunks"], stats["tokens"]
    return {
        **stats,
        "mean_chunk_tokens": tokens / n if n else 0.0,
        "chunk_tokens_limit": max_tokens,
        "overlap_tokens": overlap,
        "workers": workers,
        "empty_upstream": stats["documents"] == 0,
        "duration_s": time.perf_counter() - started,
    }


def text_slices(batches: Iterable[pa.RecordBatch], text_column: str = "text", max_rows: int = SLICE_DOCUMENTS, max_bytes: int = SLICE_TEXT_BYTES) -> Iterator[pa.RecordBatch]:
    """The rows of `batches`, in order, regrouped into slices of at most `max_rows` rows and about
    `max_bytes` of text (a single larger row is a slice of its own)."""
    held: list[pa.RecordBatch] = []
    held_rows = held_bytes = 0
    for record_batch in batches:
        if record_batch.num_rows == 0:
            continue
        offsets = _offsets(record_batch.column(text_column))
        start = 0
        while start < record_batch.num_rows:
            # Rows [start, end) of this batch fit beside what is held.
            room_rows = max_rows - held_rows
            budget = offsets[start] + max(max_bytes - held_bytes, 0)
            end = min(record_batch.num_rows, start + room_rows)
            end = min(end, max(start + (0 if held else 1), int(_last_within(offsets, start, end, budget))))
            if end > start:
                piece = record_batch.slice(start, end - start)
                held.append(piece)
                held_rows += end - start
                held_bytes += int(offsets[end] - offsets[start])
                start = end
            if start < record_batch.num_rows or held_rows >= max_rows or held_bytes >= max_bytes:
                if held:
                    yield _combine(held)
                held, held_rows, held_bytes = [], 0, 0
    if held:
        yield _combine(held)


def _last_within(offsets, start: int, end: int, budget: int) -> int:
    """The largest row index e in [start, end] with offsets[e] <= budget."""
    return start + int(np.searchsorted(offsets[start:end + 1], budget, side="right")) - 1


def _offsets(column: pa.Array) -> np.ndarray:
    """Where each string of a (large) string column starts and ends, in bytes (len = rows + 1)."""
    width = np.int64 if pa.types.is_large_string(column.type) else np.int32
    return np.frombuffer(column.buffers()[1], dtype=width)[column.offset:column.offset + len(column) + 1].astype(np.int64)


def _combine(pieces: list[pa.RecordBatch]) -> pa.RecordBatch:
    """The pieces as one record batch that owns just its rows' data: a slice handed to a worker is
    pickled with every buffer it points into (a slice of a decoded row group would carry the whole
    row group, 16 MB for a few documents)."""
    if len(pieces) == 1:
        piece = pieces[0]
        return piece.take(pa.array(np.arange(piece.num_rows, dtype=np.int64)))
    return pa.Table.from_batches(pieces).combine_chunks().to_batches()[0]
