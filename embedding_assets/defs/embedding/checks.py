"""Blocking checks on the embeddings partition a step has just written.

The checks are partitioned like the asset (Dagster shows each result against its batch) and are
executed by the embeddings step itself, right after the swap; the asset can be subset, so the
checks can also run alone for a chosen partition ("Execute" on a check in the UI, which runs the
step with only the checks selected), reading the table and embedding nothing.
"""

import warnings

import dagster as dg

from embedding_assets.defs.partitions import batches
from embedding_assets.lib.checks import embedding_checks

_SPECS = {
    "one_vector_per_chunk": "Exactly one vector for every current chunk of the partition.",
    "finite_values": "No NaN or infinite component.",
    "expected_dimension": "Every vector has the model's dimension.",
    "unit_norm": "Vectors are unit length where the model normalizes.",
    "single_fingerprint": "The partition holds vectors of one model fingerprint only: the model resource's current one.",
}
with warnings.catch_warnings():  # partitioned checks are a preview feature of Dagster 1.13
    warnings.simplefilter("ignore", dg.PreviewWarning)
    EMBEDDING_CHECKS = [
        dg.AssetCheckSpec(name, asset="embeddings", blocking=True, description=description, partitions_def=batches)
        for name, description in _SPECS.items()
    ]

def check_embeddings(lake_root: str, batch: str, engine, selected: set | None = None) -> list[dg.AssetCheckResult]:
    """The results of the checks in `EMBEDDING_CHECKS` (all, or those in `selected`) for one partition."""
    normalized = engine.backends[0].pooling.normalize
    wanted = {spec.key for spec in EMBEDDING_CHECKS} if selected is None else set(selected)
    results = []
    for name, passed, details in embedding_checks(lake_root, batch, engine.dimension, engine.fingerprint, normalized=normalized):
        if dg.AssetCheckKey(dg.AssetKey("embeddings"), name) not in wanted:
            continue
        results.append(dg.AssetCheckResult(check_name=name, asset_key="embeddings", passed=passed, metadata={"partition": batch, **details}))
    return results
