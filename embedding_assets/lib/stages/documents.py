"""document_embeddings: one vector per document, the token-weighted mean of its chunk vectors.

Streams: the embeddings partition is written in bucket order, not document order, so its rows
(document, weight, vector) are sorted by document with `spill.SortedRuns` (sorted runs in a
temporary folder, merged on read) and summed one run of a document's rows at a time, in float32;
documents are written as they complete (one commit). Each chunk's weight is its token count,
looked up by text hash in a sorted fixed-width array built from length_buckets: the one piece of
state that spans the partition, a 64-byte key and an int32 per distinct text.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import pyarrow as pa

from embedding_assets.lib import lake
from embedding_assets.lib.keys import fixed_width
from embedding_assets.lib.lake import tables
from embedding_assets.lib.spill import SortedRuns
from embedding_assets.lib.stages.common import Log

RUN_ROWS = 65_536  # embeddings rows sorted in memory at a time, or RUN_BYTES of them
RUN_BYTES = 16 << 20
READ_ROWS = 4_096
OUT_ROWS = 8_192  # documents per written record batch


def document_vectors(lake_root: str, batch: str, log: Log = print) -> dict:
    """One vector per document: the token-weighted mean of its chunk vectors, re-normalized.
    An empty embeddings partition gives an empty document_embeddings partition."""
    started = time.perf_counter()
    if not lake.exists(lake_root, tables.EMBEDDINGS):
        raise RuntimeError(f"embeddings has no rows for batch {batch!r}: materialize embeddings first")
    hashes, weights = _token_counts(lake_root, batch)
    models: list[str] = []  # distinct fingerprints, in order of appearance (one, normally)
    dimension = None
    stats = {"documents": 0, "chunks": 0}
    row = 0

    with SortedRuns(None, _sort_key, run_rows=RUN_ROWS, run_bytes=RUN_BYTES, read_rows=READ_ROWS) as runs:
        for part in lake.scan_partition(lake_root, tables.EMBEDDINGS, batch, columns=["doc_id", "text_hash", "embedding", "model"], batch_size=READ_ROWS):
            n = part.num_rows
            if not n:
                continue
            for model in part.column("model").unique().to_pylist():
                if model not in models:
                    models.append(model)
            vectors = tables.arrow_to_vectors(part.column("embedding"))
            dimension = vectors.shape[1]
            found = _lookup(hashes, fixed_width(part.column("text_hash")))
            weight = np.where(found >= 0, weights[np.maximum(found, 0)] if len(weights) else 1, 1).astype(np.float32)
            rows = pa.record_batch({
                "doc_id": part.column("doc_id"),
                "weight": pa.array(weight),
                "embedding": tables.vectors_to_arrow(vectors, dimension),
                "row": pa.array(np.arange(row, row + n, dtype=np.int64)),
            })
            row += n
            if runs.schema is None:
                runs.schema = rows.schema
            runs.add(rows)
        del hashes, weights
        stats["chunks"] = row
        schema = _output_schema(lake_root, dimension)
        model = models[0] if models else ""

        def documents() -> Iterator[pa.RecordBatch]:
            for doc_ids, counts, sums in _sums(runs.merged() if runs.schema is not None else iter(())):
                norms = np.linalg.norm(sums, axis=1, keepdims=True)
                vectors = sums / np.where(norms == 0, 1, norms)
                n = len(doc_ids)
                stats["documents"] += n
                yield pa.RecordBatch.from_arrays([
                    tables.constant_column(batch, n),
                    pa.array(doc_ids, pa.string()),
                    pa.array(counts.astype(np.int32)),
                    tables.vectors_to_arrow(vectors.astype(np.float32, copy=False), dimension),
                    tables.constant_column(model, n),
                ], schema=schema)

        lake.replace_partition(lake_root, tables.DOCUMENTS, batch, pa.RecordBatchReader.from_batches(schema, documents()))
    if not stats["chunks"]:
        log(f"embeddings has no rows for batch {batch!r}: wrote an empty document_embeddings partition")
    return {**stats, "model": model, "dimension": dimension or 0, "empty_upstream": not stats["chunks"], "duration_s": time.perf_counter() - started}


def _sort_key(part: pa.RecordBatch) -> list[np.ndarray]:
    return [fixed_width(part.column("doc_id")), part.column("row").to_numpy()]


def _token_counts(lake_root: str, batch: str) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct text hash of length_buckets (sorted, fixed-width) and its token count.

    O(distinct texts) state, as compact numpy arrays: 64 bytes of key and 4 of count per text.
    """
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for part in lake.scan_partition(lake_root, tables.BUCKETS, batch, columns=["text_hash", "n_tokens"], batch_size=65_536):
        if not part.num_rows:
            continue
        hashes = fixed_width(part.column("text_hash"))
        distinct, first = np.unique(hashes, return_index=True)
        keys.append(distinct)
        counts.append(part.column("n_tokens").to_numpy()[first])
    if not keys:
        return np.empty(0, dtype="S1"), np.empty(0, dtype=np.int32)
    width = max(k.dtype.itemsize for k in keys)
    hashes = np.concatenate([k.astype(f"S{width}", copy=False) for k in keys])
    counts_all = np.concatenate(counts)
    distinct, first = np.unique(hashes, return_index=True)  # identical texts have identical counts
    return distinct, counts_all[first].astype(np.int32, copy=False)


def _lookup(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query key in `sorted_keys`, or -1."""
    if not len(sorted_keys) or not len(query):
        return np.full(len(query), -1, dtype=np.int64)
    width = max(sorted_keys.dtype.itemsize, query.dtype.itemsize)
    sorted_keys, query = sorted_keys.astype(f"S{width}", copy=False), query.astype(f"S{width}", copy=False)
    position = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return np.where(sorted_keys[position] == query, position, -1)


def _sums(merged: Iterator[pa.RecordBatch]) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
    """(doc_ids, chunk counts, weighted float32 sums) of complete documents, in doc_id order, a few
    thousand documents at a time: rows arrive sorted by document; the last document of a read
    batch is carried over until its rows end."""
    carry_id, carry_count, carry_sum = None, 0, None
    out_ids: list = []
    out_counts: list[np.ndarray] = []
    out_sums: list[np.ndarray] = []
    held = 0
    for part in merged:
        ids = fixed_width(part.column("doc_id"))
        vectors = tables.arrow_to_vectors(part.column("embedding"))
        weighted = vectors * part.column("weight").to_numpy()[:, None]
        starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        sums = np.add.reduceat(weighted, starts, axis=0)
        counts = np.diff(np.append(starts, len(ids)))
        names = part.column("doc_id").take(pa.array(starts)).to_pylist()
        if carry_id is not None:
            if names[0] == carry_id:
                sums[0] += carry_sum
                counts[0] += carry_count
            else:
                out_ids.append(carry_id)
                out_counts.append(np.array([carry_count]))
                out_sums.append(carry_sum[None, :])
                held += 1
        carry_id, carry_count, carry_sum = names[-1], int(counts[-1]), sums[-1].copy()
        if len(names) > 1:
            out_ids.extend(names[:-1])
            out_counts.append(counts[:-1])
            out_sums.append(sums[:-1])
            held += len(names) - 1
        if held >= OUT_ROWS:
            yield out_ids, np.concatenate(out_counts), np.concatenate(out_sums)
            out_ids, out_counts, out_sums, held = [], [], [], 0
    if carry_id is not None:
        out_ids.append(carry_id)
        out_counts.append(np.array([carry_count]))
        out_sums.append(carry_sum[None, :])
    if out_ids:
        yield out_ids, np.concatenate(out_counts), np.concatenate(out_sums)


def _output_schema(lake_root: str, dimension: int | None) -> pa.Schema:
    if dimension is not None:
        return tables.document_embeddings_schema(dimension)
    # No rows: the vector column's type as the embeddings table declares it (no dimension known).
    declared = pa.schema(lake.open_table(lake_root, tables.EMBEDDINGS).schema().to_arrow())
    schema = tables.document_embeddings_schema(1)
    return schema.set(schema.get_field_index("embedding"), pa.field("embedding", declared.field("embedding").type))
