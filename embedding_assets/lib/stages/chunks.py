"""chunks: every document of a partition split into token-bounded chunks with the model's tokenizer."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from embedding_assets.lib import lake
from embedding_assets.lib.chunking import Chunker, chunk_id, text_hash
from embedding_assets.lib.lake import tables
from embedding_assets.lib.encoders import TokenizerInfo
from embedding_assets.lib.stages.common import Log

def chunk_batch(lake_root: str, batch: str, tokenizer: TokenizerInfo, max_tokens: int | None, overlap: int, log: Log = print) -> dict:
    """Splits every document of the partition into token-bounded chunks."""
    started = time.perf_counter()
    raw = lake.read_partition(lake_root, tables.RAW, batch, columns=["doc_id", "text"])
    if raw is None or raw.num_rows == 0:
        raise RuntimeError(f"raw_documents has no rows for batch {batch!r}: materialize raw_documents first")
    max_tokens = min(max_tokens or tokenizer.max_seq_length, tokenizer.max_seq_length)
    chunker = Chunker(tokenizer.tokenizer, max_tokens=max_tokens, overlap=overlap)
    columns: dict[str, list] = {k: [] for k in ("doc_id", "chunk_id", "chunk_index", "text", "text_hash", "n_tokens", "char_start", "char_end")}
    last_log = time.monotonic()
    doc_ids, texts = raw.column("doc_id").to_pylist(), raw.column("text")
    empty = 0
    for i, doc_id in enumerate(doc_ids):
        chunks = chunker.split(texts[i].as_py())
        if not chunks:
            empty += 1
            log(f"{doc_id}: no tokens to embed (the text holds nothing the tokenizer keeps)")
        for c in chunks:
            h = text_hash(c.text)
            columns["doc_id"].append(doc_id)
            columns["chunk_id"].append(chunk_id(doc_id, c.chunk_index, h))
            columns["chunk_index"].append(c.chunk_index)
            columns["text"].append(c.text)
            columns["text_hash"].append(h)
            columns["n_tokens"].append(c.n_tokens)
            columns["char_start"].append(c.char_start)
            columns["char_end"].append(c.char_end)
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log(f"chunking {batch}: {i + 1}/{len(doc_ids)} documents, {len(columns['chunk_id'])} chunks")
    n = len(columns["chunk_id"])
    table = pa.table({"batch": [batch] * n, **columns}, schema=tables.CHUNKS_SCHEMA)
    lake.replace_partition(lake_root, tables.CHUNKS, batch, table)
    tokens = int(np.sum(columns["n_tokens"])) if n else 0
    return {
        "documents": len(doc_ids),
        "chunks": n,
        "tokens": tokens,
        "max_chunk_tokens": int(max(columns["n_tokens"])) if n else 0,
        "mean_chunk_tokens": tokens / n if n else 0.0,
        "documents_without_tokens": empty,
        "chunk_tokens_limit": max_tokens,
        "overlap_tokens": overlap,
        "duration_s": time.perf_counter() - started,
    }
