"""Quality checks on one embeddings partition (the Dagster asset checks call these).

Computed streaming: the partition is read a record batch at a time; the vector checks keep a few
counters, and the chunk id comparison keeps the ids of both tables as sorted fixed-width byte
arrays (`keys.fixed_width`, 32 bytes per chunk id: the one piece of state that spans the
partition), never Python sets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib import lake
from embedding_assets.lib.keys import fixed_width
from embedding_assets.lib.lake import tables

CHECKS = ("one_vector_per_chunk", "finite_values", "expected_dimension", "unit_norm", "single_fingerprint")
READ_ROWS = 8_192


def embedding_checks(lake_root: str, batch: str, dimension: int, fingerprint: str, normalized: bool) -> list[tuple[str, bool, dict]]:
    """(check name, passed, details) for every check on the partition."""
    if not lake.exists(lake_root, tables.EMBEDDINGS):
        return [(name, False, {"reason": "no embeddings table"}) for name in CHECKS]
    have_ids: list[np.ndarray] = []
    models: list[str] = []  # in order of appearance
    rows = wrong_dim = nonfinite = off_unit = 0
    max_norm_error = 0.0
    for part in lake.scan_partition(lake_root, tables.EMBEDDINGS, batch, columns=["chunk_id", "embedding", "model"], batch_size=READ_ROWS):
        if not part.num_rows:
            continue
        rows += part.num_rows
        have_ids.append(_sorted_keys(part.column("chunk_id")))
        for model in part.column("model").unique().to_pylist():
            if model not in models:
                models.append(model)
        column = part.column("embedding")
        wrong = int(pc.sum(pc.not_equal(pc.list_value_length(column), dimension)).as_py() or 0)
        wrong_dim += wrong
        if wrong_dim:
            continue  # the vector checks are not computed on a partition with rows of another dimension
        vectors = tables.arrow_to_vectors(column)
        nonfinite += int((~np.isfinite(vectors).all(axis=1)).sum())
        if normalized:
            errors = np.abs(np.linalg.norm(vectors, axis=1) - 1.0)
            off_unit += int((errors > 1e-3).sum())
            max_norm_error = float(np.max([max_norm_error, errors.max()]))  # NaN stays NaN
    if wrong_dim:
        nonfinite = off_unit = 0
        max_norm_error = 0.0
    have = _merge_sorted(have_ids)
    current = _merge_sorted([
        _sorted_keys(part.column("chunk_id"))
        for part in lake.scan_partition(lake_root, tables.BUCKETS, batch, columns=["chunk_id"], batch_size=65_536)
        if part.num_rows
    ])
    have_distinct, current_distinct = _distinct(have), _distinct(current)
    duplicates = len(have) - len(have_distinct)
    missing = int((~_contains(have_distinct, current_distinct)).sum())
    extra = int((~_contains(current_distinct, have_distinct)).sum())
    # An empty partition (every document of the batch deleted) holds no vector of another model.
    single = models == [fingerprint] or (rows == 0 and not models)
    return [
        ("one_vector_per_chunk", duplicates == 0 and missing == 0 and extra == 0, {"rows": rows, "chunks": len(current_distinct), "duplicates": duplicates, "missing": missing, "extra": extra}),
        ("finite_values", nonfinite == 0 and not wrong_dim, {"non_finite_vectors": nonfinite}),
        ("expected_dimension", wrong_dim == 0, {"dimension": dimension, "wrong_dimension_rows": wrong_dim}),
        ("unit_norm", off_unit == 0, {"normalized_model": normalized, "off_unit_vectors": off_unit, "max_norm_error": max_norm_error if normalized else 0.0}),
        ("single_fingerprint", single, {"fingerprints": ", ".join(models), "expected": fingerprint}),
    ]


def _sorted_keys(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.sort(fixed_width(column))


def _merge_sorted(parts: list[np.ndarray]) -> np.ndarray:
    """One sorted array of every key (each part sorted; widths may differ)."""
    if not parts:
        return np.empty(0, dtype="S1")
    width = max(p.dtype.itemsize for p in parts)
    keys = np.concatenate([p.astype(f"S{width}", copy=False) for p in parts])
    keys.sort(kind="stable")
    return keys


def _distinct(keys: np.ndarray) -> np.ndarray:
    if not len(keys):
        return keys
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep]


def _contains(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """For each needle, whether the sorted `haystack` holds it."""
    if not len(haystack) or not len(needles):
        return np.zeros(len(needles), dtype=bool)
    width = max(haystack.dtype.itemsize, needles.dtype.itemsize)
    haystack, needles = haystack.astype(f"S{width}", copy=False), needles.astype(f"S{width}", copy=False)
    position = np.minimum(np.searchsorted(haystack, needles), len(haystack) - 1)
    return haystack[position] == needles
