"""The lake's tables: their names and Arrow schemas (the contract downstream readers rely on),
and the conversion between float32 vector matrices and Arrow vector columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

RAW = "raw_documents"
REJECTED = "rejected_documents"
CHUNKS = "chunks"
BUCKETS = "length_buckets"
EMBEDDINGS = "embeddings"
# The checkpoints of runs of the embeddings stage: one row per data file written into the embeddings
# partition's folder and not yet published (see `sinks.delta`).
STAGING = "_embeddings_checkpoints"
DOCUMENTS = "document_embeddings"

TS = pa.timestamp("us", tz="UTC")

RAW_DOCUMENTS = pa.schema([
    ("batch", pa.string()),
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("text", pa.large_string()),
    ("content_hash", pa.string()),
    ("size_bytes", pa.int64()),
    ("flags", pa.string()),
    ("ingested_at", TS),
])

REJECTED_DOCUMENTS = pa.schema([
    ("batch", pa.string()),
    ("source", pa.string()),
    ("record", pa.string()),
    ("reason", pa.string()),
    ("rejected_at", TS),
])

# Not `CHUNKS`: that is the table's name.
CHUNKS_SCHEMA = pa.schema([
    ("batch", pa.string()),
    ("doc_id", pa.string()),
    ("chunk_id", pa.string()),
    ("chunk_index", pa.int32()),
    ("text", pa.large_string()),
    ("text_hash", pa.string()),
    ("n_tokens", pa.int32()),
    ("char_start", pa.int64()),
    ("char_end", pa.int64()),
    # Added later (nullable; null in rows written before): the chunk's token ids as the model
    # reads them (special tokens included, truncated to its max sequence length), and the
    # fingerprint of the tokenizer that made them. length_buckets reuses them instead of tokenizing.
    ("input_ids", pa.large_list(pa.int32())),
    ("tokenizer", pa.string()),
])

LENGTH_BUCKETS = pa.schema([
    ("batch", pa.string()),
    ("chunk_id", pa.string()),
    ("doc_id", pa.string()),
    ("text_hash", pa.string()),
    ("position", pa.int64()),  # embedding order: sorted by length, identical texts adjacent
    ("bucket", pa.int32()),
    ("n_tokens", pa.int32()),
    ("input_ids", pa.large_list(pa.int32())),
    ("tokenizer", pa.string()),
])


def embeddings_schema(dimension: int) -> pa.Schema:
    return pa.schema([
        ("batch", pa.string()),
        ("doc_id", pa.string()),
        ("chunk_id", pa.string()),
        ("text_hash", pa.string()),
        ("embedding", pa.list_(pa.float32(), dimension)),
        ("model", pa.string()),
        ("embedded_at", TS),
    ])


# One row per checkpointed data file of the embeddings table: its path in the table, its size, row
# count and Delta statistics (its add action, once published), and the fingerprint of its vectors.
STAGING_SCHEMA = pa.schema([
    ("batch", pa.string()),
    ("model", pa.string()),
    ("path", pa.string()),
    ("size_bytes", pa.int64()),
    ("num_rows", pa.int64()),
    ("stats", pa.string()),
    ("modification_time", pa.int64()),
    ("written_at", TS),
])


def document_embeddings_schema(dimension: int) -> pa.Schema:
    return pa.schema([
        ("batch", pa.string()),
        ("doc_id", pa.string()),
        ("n_chunks", pa.int32()),
        ("embedding", pa.list_(pa.float32(), dimension)),
        ("model", pa.string()),
    ])


def constant_column(value, n: int, type: pa.DataType = pa.string()) -> pa.Array:
    """A column of `n` copies of `value`, built in Arrow (no Python list of `n` objects)."""
    return pa.array([value], type).take(np.zeros(n, dtype=np.int64))


def vectors_to_arrow(vectors, dimension: int) -> pa.FixedSizeListArray:
    """A float32 matrix as an Arrow fixed-size list column, without per-row Python objects."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dimension)


def arrow_to_vectors(column) -> np.ndarray:
    """A vector column as a float32 matrix.

    Delta has no fixed-size list type, so a column written as FixedSizeList reads back as a plain
    list; both are accepted (all rows must have the same length).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        size = getattr(column.type, "list_size", 0)
        return np.zeros((0, size), dtype=np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size % len(column):
        raise ValueError("vector column has rows of different lengths")
    return flat.reshape(len(column), flat.size // len(column))
