"""Quality checks on one embeddings partition (the Dagster asset checks call these)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables


def embedding_checks(lake_root: str, batch: str, dimension: int, fingerprint: str, normalized: bool) -> list[tuple[str, bool, dict]]:
    """(check name, passed, details) for every check on the partition."""
    emb = lake.read_partition(lake_root, tables.EMBEDDINGS, batch, columns=["chunk_id", "embedding", "model"])
    meta = lake.read_partition(lake_root, tables.BUCKETS, batch, columns=["chunk_id"])
    if emb is None:
        return [(name, False, {"reason": "no embeddings table"}) for name in ("one_vector_per_chunk", "finite_values", "expected_dimension", "unit_norm", "single_fingerprint")]
    chunk_ids = emb.column("chunk_id")
    current = set(meta.column("chunk_id").to_pylist()) if meta is not None else set()
    have = chunk_ids.to_pylist()
    duplicates = len(have) - len(set(have))
    missing = len(current - set(have))
    extra = len(set(have) - current)
    lengths = pc.list_value_length(emb.column("embedding"))
    wrong_dim = int(pc.sum(pc.not_equal(lengths, dimension)).as_py() or 0)
    vectors = tables.arrow_to_vectors(emb.column("embedding")) if not wrong_dim else np.zeros((0, dimension), np.float32)
    nonfinite = int((~np.isfinite(vectors).all(axis=1)).sum()) if len(vectors) else 0
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    off_unit = int((np.abs(norms - 1.0) > 1e-3).sum()) if normalized else 0
    models = pc.unique(emb.column("model")).to_pylist()
    return [
        ("one_vector_per_chunk", duplicates == 0 and missing == 0 and extra == 0, {"rows": len(have), "chunks": len(current), "duplicates": duplicates, "missing": missing, "extra": extra}),
        ("finite_values", nonfinite == 0 and not wrong_dim, {"non_finite_vectors": nonfinite}),
        ("expected_dimension", wrong_dim == 0, {"dimension": dimension, "wrong_dimension_rows": wrong_dim}),
        ("unit_norm", off_unit == 0, {"normalized_model": normalized, "off_unit_vectors": off_unit, "max_norm_error": float(np.abs(norms - 1).max()) if len(norms) and normalized else 0.0}),
        ("single_fingerprint", models == [fingerprint], {"fingerprints": ", ".join(models), "expected": fingerprint}),
    ]
