"""document_embeddings: one vector per document, the token-weighted mean of its chunk vectors.

polars does the key work (each chunk's token count joined by text hash, rows grouped by document)
without a Python object per row; the vectors stay one float32 numpy matrix, summed per document
with `np.add.reduceat` (polars would sum fixed-size arrays element by element, in float64).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets.lib.stages.common import Log


def document_vectors(lake_root: str, batch: str, log: Log = print) -> dict:
    """One vector per document: the token-weighted mean of its chunk vectors, re-normalized."""
    import polars as pl

    started = time.perf_counter()
    emb = lake.read_partition(lake_root, tables.EMBEDDINGS, batch, columns=["doc_id", "text_hash", "embedding", "model"])
    if emb is None or emb.num_rows == 0:
        raise RuntimeError(f"embeddings has no rows for batch {batch!r}: materialize embeddings first")
    meta = lake.read_partition(lake_root, tables.BUCKETS, batch, columns=["text_hash", "n_tokens"])
    tokens = pl.from_arrow(meta).unique(subset="text_hash", keep="last")  # identical texts have identical counts
    rows = (
        pl.from_arrow(emb.select(["doc_id", "text_hash"]))
        .with_row_index("row")
        .join(tokens, on="text_hash", how="left")
        .sort(["doc_id", "row"])  # by document, chunks in table order
    )
    order = rows.get_column("row").to_numpy()
    weights = rows.get_column("n_tokens").fill_null(1).cast(pl.Float32).to_numpy()
    documents = rows.group_by("doc_id", maintain_order=True).len()
    counts = documents.get_column("len").to_numpy()
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    vectors = tables.arrow_to_vectors(emb.column("embedding"))
    weighted = vectors[order] * weights[:, None]
    sums = np.add.reduceat(weighted, starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    doc_vectors = sums / np.where(norms == 0, 1, norms)
    dimension = vectors.shape[1]
    model = pc.unique(emb.column("model")).to_pylist()
    n = len(documents)
    table = pa.table({
        "batch": pa.array([batch] * n, pa.string()),
        "doc_id": documents.get_column("doc_id").to_arrow().cast(pa.string()),
        "n_chunks": pa.array(counts.astype(np.int32)),
        "embedding": tables.vectors_to_arrow(doc_vectors, dimension),
        "model": pa.array([model[0]] * n, pa.string()),
    }, schema=tables.document_embeddings_schema(dimension))
    lake.replace_partition(lake_root, tables.DOCUMENTS, batch, table)
    return {"documents": n, "chunks": emb.num_rows, "model": model[0], "duration_s": time.perf_counter() - started}
