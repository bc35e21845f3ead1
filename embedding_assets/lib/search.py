"""Semantic search over the lake: exact top-k by cosine, streamed over the embeddings table."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables


@dataclass(frozen=True)
class Hit:
    score: float
    batch: str
    doc_id: str
    chunk_id: str
    text: str


def search(lake_root: str, engine, query: str, k: int = 5, batch: str | None = None) -> list[Hit]:
    """The k chunks closest to `query`, over one batch or the whole lake, for the engine's model."""
    if not lake.exists(lake_root, tables.EMBEDDINGS):
        raise RuntimeError(f"no embeddings table under {lake_root}: materialize embeddings first")
    query_vector = engine.encode_texts([query])[0]
    same_model = pc.field("model") == engine.fingerprint
    where = same_model if batch is None else (same_model & (pc.field("batch") == batch))
    dataset = lake.dataset(lake_root, tables.EMBEDDINGS)
    best: list[tuple[float, str, str, str]] = []
    for record_batch in dataset.to_batches(columns=["batch", "doc_id", "chunk_id", "embedding"], filter=where, batch_size=65536):
        if record_batch.num_rows == 0:
            continue
        scores = tables.arrow_to_vectors(record_batch.column("embedding")) @ query_vector
        top = np.argsort(-scores)[:k]
        batches_, docs, chunk_ids = (record_batch.column(c).to_pylist() for c in ("batch", "doc_id", "chunk_id"))
        for i in top:
            item = (float(scores[i]), batches_[i], docs[i], chunk_ids[i])
            if len(best) < k:
                heapq.heappush(best, item)
            else:
                heapq.heappushpop(best, item)
    if not best:
        fingerprints = pc.unique(dataset.to_table(columns=["model"]).column("model")).to_pylist()
        raise RuntimeError(
            f"no vectors for model {engine.fingerprint}{' in batch ' + batch if batch else ''}; the lake holds {fingerprints or 'none'}"
        )
    best.sort(reverse=True)
    texts = _chunk_texts(lake_root, {(b, c) for _, b, _, c in best})
    return [Hit(score, b, d, c, texts.get(c, "")) for score, b, d, c in best]


def _chunk_texts(lake_root: str, keys: set[tuple[str, str]]) -> dict[str, str]:
    ids = sorted({c for _, c in keys})
    batches_ = sorted({b for b, _ in keys})
    table = lake.read_table(lake_root, tables.CHUNKS, columns=["chunk_id", "text"], filter=pc.field("batch").isin(batches_) & pc.field("chunk_id").isin(ids))
    return dict(zip(table.column("chunk_id").to_pylist(), table.column("text").to_pylist())) if table is not None else {}
