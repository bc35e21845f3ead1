"""Blocking checks on the embeddings partition a step has just written."""

import dagster as dg

from embedding_assets.lib.checks import embedding_checks

EMBEDDING_CHECKS = [
    dg.AssetCheckSpec("one_vector_per_chunk", asset="embeddings", blocking=True, description="Exactly one vector for every current chunk of the partition."),
    dg.AssetCheckSpec("finite_values", asset="embeddings", blocking=True, description="No NaN or infinite component."),
    dg.AssetCheckSpec("expected_dimension", asset="embeddings", blocking=True, description="Every vector has the model's dimension."),
    dg.AssetCheckSpec("unit_norm", asset="embeddings", blocking=True, description="Vectors are unit length where the model normalizes."),
    dg.AssetCheckSpec("single_fingerprint", asset="embeddings", blocking=True, description="The partition holds vectors of one model fingerprint only."),
]


def check_embeddings(lake_root: str, batch: str, engine) -> list[dg.AssetCheckResult]:
    """The results of every check in `EMBEDDING_CHECKS` for one partition, under `engine`'s model."""
    normalized = engine.backends[0].pooling.normalize
    return [
        dg.AssetCheckResult(check_name=name, passed=passed, metadata=dict(details))
        for name, passed, details in embedding_checks(lake_root, batch, engine.dimension, engine.fingerprint, normalized=normalized)
    ]
