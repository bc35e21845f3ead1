"""length_buckets: every chunk tokenized once on CPU, bucketed by length and ordered for batching
(the "disaggregated tokenization" stage: the embeddings stage never tokenizes)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets.lib.encoders import TokenizerInfo
from embedding_assets.lib.stages.common import Log

BUCKET_WIDTH = 16


def bucket_batch(lake_root: str, batch: str, tokenizer: TokenizerInfo, log: Log = print) -> dict:
    """Tokenizes every chunk once, buckets it by length and orders the partition for batching."""
    started = time.perf_counter()
    chunks = lake.read_partition(lake_root, tables.CHUNKS, batch, columns=["chunk_id", "doc_id", "text", "text_hash"])
    if chunks is None or chunks.num_rows == 0:
        raise RuntimeError(f"chunks has no rows for batch {batch!r}: materialize chunks first")
    texts = chunks.column("text").to_pylist()
    ids: list[list[int]] = []
    step = 2048
    last_log = time.monotonic()
    for start in range(0, len(texts), step):
        ids.extend(tokenizer.encode_batch(texts[start:start + step]))
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log(f"tokenizing {batch}: {min(start + step, len(texts))}/{len(texts)} chunks")
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    hashes = chunks.column("text_hash").to_numpy(zero_copy_only=False)
    # Sort by length, then by text so identical texts sit side by side (embedded once).
    order = np.lexsort((hashes, lengths))
    flat = np.fromiter((t for i in order for t in ids[i]), dtype=np.int32, count=int(lengths.sum()))
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths[order], out=offsets[1:])
    n = len(order)
    table = pa.table({
        "batch": pa.array([batch] * n, pa.string()),
        "chunk_id": chunks.column("chunk_id").take(order),
        "doc_id": chunks.column("doc_id").take(order),
        "text_hash": chunks.column("text_hash").take(order),
        "position": pa.array(np.arange(n, dtype=np.int64)),
        "bucket": pa.array(((lengths[order] + BUCKET_WIDTH - 1) // BUCKET_WIDTH).astype(np.int32)),
        "n_tokens": pa.array(lengths[order]),
        "input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32())),
        "tokenizer": pa.array([tokenizer.fingerprint] * n, pa.string()),
    }, schema=tables.LENGTH_BUCKETS)
    lake.replace_partition(lake_root, tables.BUCKETS, batch, table)
    buckets = np.unique((lengths + BUCKET_WIDTH - 1) // BUCKET_WIDTH)
    return {
        "chunks": n,
        "tokens": int(lengths.sum()),
        "distinct_texts": int(len(np.unique(hashes))),
        "buckets": int(len(buckets)),
        "bucket_width_tokens": BUCKET_WIDTH,
        "max_tokens": int(lengths.max()) if n else 0,
        "tokenizer": tokenizer.fingerprint,
        "duration_s": time.perf_counter() - started,
    }
