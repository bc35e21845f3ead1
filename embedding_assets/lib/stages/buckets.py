"""length_buckets: every chunk's token ids, bucketed by length and ordered for batching (the
"disaggregated tokenization" stage: the embeddings stage never tokenizes).

The ids are those chunks stored (made while chunking, the text tokenized once) when every chunk of
the partition holds ids of the model's tokenizer (its fingerprint). Otherwise (a partition chunked
by an earlier version, or by another tokenizer) the texts are tokenized here, and the log says
why: each slice's distinct texts by a pool of `workers` processes (`parallel.tokenize_texts`,
results in input order). Either way the ids are the same, and stay in int32 Arrow buffers.

Streams: chunks is read a record batch at a time. The partition-wide order (by length, then text hash so identical texts sit
side by side, then chunks order) comes from `spill.SortedRuns`: sorted runs of bounded size in a
temporary folder, merged as the partition is written (one commit). Memory is one run plus one
read batch per run, whatever the partition's size; the output is the same for any number of workers.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib import lake, parallel, settings
from embedding_assets.lib.encoders import TokenizerInfo
from embedding_assets.lib.keys import fixed_width
from embedding_assets.lib.lake import tables
from embedding_assets.lib.spill import SortedRuns
from embedding_assets.lib.stages.chunks import text_slices
from embedding_assets.lib.stages.common import Log

BUCKET_WIDTH = 16
SLICE_CHUNKS = 2048  # chunks handed to a worker at a time
SLICE_TEXT_BYTES = 1 << 20
READ_CHUNKS = 8192  # chunks rows decoded at a time when their ids are stored
RUN_ROWS = 65_536  # chunks sorted in memory at a time (with their token ids: a few tens of MB) ...
RUN_BYTES = 16 << 20  # ... or this much of ids and keys (long chunks: a run of a few thousand rows)

# What a sorted run holds: the output columns that vary per row, and the row's place in chunks.
_RUN_SCHEMA = pa.schema([
    ("chunk_id", pa.string()),
    ("doc_id", pa.string()),
    ("text_hash", pa.string()),
    ("n_tokens", pa.int32()),
    ("input_ids", pa.large_list(pa.int32())),
    ("row", pa.int64()),
])


def _sort_key(batch: pa.RecordBatch) -> list[np.ndarray]:
    """Length, then text hash (identical texts adjacent), then chunks order: a total order."""
    return [batch.column("n_tokens").to_numpy(), fixed_width(batch.column("text_hash")), batch.column("row").to_numpy()]


def bucket_batch(lake_root: str, batch: str, tokenizer: TokenizerInfo, log: Log = print, *, workers: int | None = None) -> dict:
    """Tokenizes every chunk once, buckets it by length and orders the partition for batching
    (`workers` processes, default EMBEDDING_CPU_WORKERS). An empty chunks partition gives an
    empty length_buckets partition."""
    started = time.perf_counter()
    if not lake.exists(lake_root, tables.CHUNKS):
        raise RuntimeError(f"chunks has no rows for batch {batch!r}: materialize chunks first")
    workers = workers or settings.cpu_workers()
    stats = {"chunks": 0, "tokens": 0, "distinct_texts": 0, "max_tokens": 0, "tokenized_texts": 0}
    buckets: set[int] = set()  # at most max_seq_length / BUCKET_WIDTH + 1 values
    last_log = time.monotonic()

    reason = stored_ids_problem(lake_root, batch, tokenizer.fingerprint)
    if reason:
        log(f"tokenizing the chunks of {batch}: {reason}")
    parts = _tokenized(lake_root, batch, tokenizer, workers) if reason else _stored(lake_root, batch)
    if workers > 1:
        # A second core: reading (and tokenizing) runs ahead of sorting, merging ahead of writing.
        parts = parallel.prefetched(parts)

    with SortedRuns(_RUN_SCHEMA, _sort_key, run_rows=RUN_ROWS, run_bytes=RUN_BYTES) as runs, contextlib.closing(parts):
        for part in parts:
            stats["tokenized_texts"] += part.pop()
            runs.add(part[0])
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log(f"tokenizing {batch}: {runs.rows} chunks")

        def ordered() -> Iterator[pa.RecordBatch]:
            position = 0
            previous_hash = None
            for part in runs.merged():
                n = part.num_rows
                lengths = part.column("n_tokens").to_numpy()
                hashes = fixed_width(part.column("text_hash"))
                new_text = np.ones(n, dtype=bool)
                new_text[1:] = hashes[1:] != hashes[:-1]
                new_text[0] = previous_hash is None or hashes[0] != previous_hash
                previous_hash = hashes[-1]
                bucket = ((lengths + BUCKET_WIDTH - 1) // BUCKET_WIDTH).astype(np.int32)
                stats["chunks"] += n
                stats["tokens"] += int(lengths.sum())
                stats["distinct_texts"] += int(new_text.sum())
                stats["max_tokens"] = max(stats["max_tokens"], int(lengths.max()))
                buckets.update(np.unique(bucket).tolist())
                yield pa.RecordBatch.from_arrays([
                    tables.constant_column(batch, n),
                    part.column("chunk_id"),
                    part.column("doc_id"),
                    part.column("text_hash"),
                    pa.array(np.arange(position, position + n, dtype=np.int64)),
                    pa.array(bucket),
                    part.column("n_tokens"),
                    part.column("input_ids"),
                    tables.constant_column(tokenizer.fingerprint, n),
                ], schema=tables.LENGTH_BUCKETS)
                position += n

        rows = parallel.prefetched(ordered(), depth=4) if workers > 1 else ordered()
        with contextlib.closing(rows):  # a failed write stops the merge before the runs go
            lake.replace_partition(lake_root, tables.BUCKETS, batch, pa.RecordBatchReader.from_batches(tables.LENGTH_BUCKETS, rows))
        spilled_runs = len(runs.runs)
    if stats["chunks"] == 0:
        log(f"chunks has no rows for batch {batch!r}: wrote an empty length_buckets partition")
    return {
        **stats,
        "buckets": len(buckets),
        "bucket_width_tokens": BUCKET_WIDTH,
        "tokenizer": tokenizer.fingerprint,
        "token_ids": f"tokenized here: {reason}" if reason else "made by chunks",
        "workers": workers,
        "sorted_runs": spilled_runs,
        "empty_upstream": stats["chunks"] == 0,
        "duration_s": time.perf_counter() - started,
    }


def stored_ids_problem(lake_root: str, batch: str, fingerprint: str) -> str | None:
    """Why the partition's chunks cannot give their token ids (None when every chunk holds ids
    made by the tokenizer of `fingerprint`): a table or rows written before chunks stored ids, or
    ids of another tokenizer. Reads the tokenizer column alone, a record batch at a time."""
    names = set(lake.dataset(lake_root, tables.CHUNKS).schema.names)
    if not {"input_ids", "tokenizer"} <= names:
        return "the chunks table has no input_ids column (written by an earlier version)"
    missing = other = 0
    others: set[str] = set()
    for part in lake.scan_partition(lake_root, tables.CHUNKS, batch, columns=["tokenizer"], batch_size=65_536):
        column = part.column("tokenizer")
        missing += column.null_count
        found = set(pc.unique(column.drop_null()).to_pylist()) - {fingerprint}
        if found:
            other += int(pc.sum(pc.not_equal(column, fingerprint)).as_py() or 0)
            others |= found
    if missing:
        return f"{missing:,} chunks hold no token ids (written by an earlier version)"
    if other:
        return f"{other:,} chunks hold ids of another tokenizer ({', '.join(sorted(others)[:3])}; the model's is {fingerprint})"
    return None


def _stored(lake_root: str, batch: str) -> Iterator[list]:
    """[run rows, 0] for every record batch of chunks, in chunks order, with the ids chunks stored."""
    next_row = 0
    columns = ["chunk_id", "doc_id", "text_hash", "input_ids"]
    # One row group at a time: read-ahead would hold up to 16 batches of ids per file, for 4 files.
    for part in lake.scan_partition(lake_root, tables.CHUNKS, batch, columns=columns, batch_size=READ_CHUNKS, read_ahead=False):
        n = part.num_rows
        if not n:
            continue
        ids = part.column("input_ids")
        if ids.type != _RUN_SCHEMA.field("input_ids").type:
            ids = ids.cast(_RUN_SCHEMA.field("input_ids").type)
        lengths = pc.list_value_length(ids).cast(pa.int32())
        rows = pa.array(np.arange(next_row, next_row + n, dtype=np.int64))
        next_row += n
        yield [pa.RecordBatch.from_arrays(
            [part.column("chunk_id"), part.column("doc_id"), part.column("text_hash"), lengths, ids, rows], schema=_RUN_SCHEMA,
        ), 0]


def _tokenized(lake_root: str, batch: str, tokenizer: TokenizerInfo, workers: int) -> Iterator[list]:
    """[run rows, texts tokenized] for every slice of chunks, in chunks order. Identical texts in
    a slice are tokenized once; the pool gets only the texts, the other columns wait here."""
    waiting: deque = deque()
    next_row = 0

    def texts() -> Iterator[pa.Array]:
        nonlocal next_row
        scan = lake.scan_partition(lake_root, tables.CHUNKS, batch, columns=["chunk_id", "doc_id", "text", "text_hash"], batch_size=4096)
        for part in text_slices(scan, max_rows=SLICE_CHUNKS, max_bytes=SLICE_TEXT_BYTES):
            hashes = fixed_width(part.column("text_hash"))
            _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
            rows = np.arange(next_row, next_row + part.num_rows, dtype=np.int64)
            next_row += part.num_rows
            distinct = len(first) < part.num_rows
            waiting.append((part.drop_columns(["text"]), rows, inverse if distinct else None))
            yield part.column("text").take(pa.array(first)) if distinct else part.column("text")

    results = parallel.ordered_map(
        parallel.tokenize_texts, texts(), workers,
        initializer=parallel.init_tokenizer, initargs=(tokenizer.tokenizer.to_str(), tokenizer.max_seq_length),
    )
    for done in results:
        part, rows, inverse = waiting.popleft()
        offsets = np.zeros(len(done.lengths) + 1, dtype=np.int64)
        np.cumsum(done.lengths, out=offsets[1:])
        ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(done.ids, pa.int32()))
        lengths = done.lengths
        if inverse is not None:
            ids = ids.take(pa.array(inverse))
            lengths = lengths[inverse]
        yield [pa.RecordBatch.from_arrays([
            part.column("chunk_id"),
            part.column("doc_id"),
            part.column("text_hash"),
            pa.array(lengths.astype(np.int32, copy=False)),
            ids,
            pa.array(rows),
        ], schema=_RUN_SCHEMA), len(done.lengths)]
