"""The assets: raw_documents -> chunks -> length_buckets -> embeddings -> document_embeddings.

Each is a Delta table under the lake root, partitioned by batch; each materialization replaces
one partition and reports what it did as metadata. The work itself is in `embedding_assets.lib`.
"""


import numpy as np

import dagster as dg

from embedding_assets.defs.deployment import GPU_POOL, cpu_step_tags, gpu_step_tags
from embedding_assets.defs.partitions import batches
from embedding_assets.defs.resources import LakeResource, ModelResource
from embedding_assets.lib import lake as delta
from embedding_assets.lib import pipeline

GROUP = "embedding"
# Transient failures (a storage hiccup, a pod eviction) are retried with backoff; a bad batch
# fails with `dg.Failure(allow_retries=False)` instead.
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# What every stage shares: one partition per batch, one group, the retry policy.
STAGE = {"partitions_def": batches, "group_name": GROUP, "retry_policy": RETRY}


def _metadata(numbers: dict, table: str, lake_root: str) -> dict:
    metadata = {"table": dg.MetadataValue.path(delta.table_uri(lake_root, table))}
    for key, value in numbers.items():
        if isinstance(value, bool) or value is None:
            metadata[key] = value
        elif isinstance(value, float):
            metadata[key] = dg.MetadataValue.float(round(value, 4))
        elif isinstance(value, (int, np.integer)):
            metadata[key] = dg.MetadataValue.int(int(value))
        elif isinstance(value, list):
            metadata[key] = dg.MetadataValue.md("\n".join(f"- `{v}`" for v in value) or "none")
        else:
            metadata[key] = dg.MetadataValue.text(str(value))
    return metadata


@dg.asset(
    **STAGE,
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
)
def raw_documents(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One row per readable document of the batch: doc_id (path in the batch, or path#id for
    record files), source, text, content_hash, size_bytes, flags. Unreadable input goes to the
    `rejected_documents` table with file, record and reason, and never stops the batch."""
    try:
        result = pipeline.ingest_batch(lake.landing, lake.lake, context.partition_key, lake.max_file_bytes, log=context.log.warning)
    except (pipeline.AllDocumentsRejected, FileNotFoundError, NotADirectoryError) as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    return dg.MaterializeResult(metadata=_metadata(result, pipeline.RAW, lake.lake))


@dg.asset(
    **STAGE,
    deps=[raw_documents],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
)
def chunks(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource) -> dg.MaterializeResult:
    """Documents split with the model's own tokenizer into chunks of at most the model's max
    sequence length (special tokens included), preferring paragraph, then sentence, then word
    boundaries, with overlap. chunk_id is stable: a hash of (doc_id, chunk_index, text hash)."""
    tokenizer = model.tokenizer()
    result = pipeline.chunk_batch(lake.lake, context.partition_key, tokenizer, lake.chunk_tokens, lake.chunk_overlap, log=context.log.info)
    result["model"] = model.model
    return dg.MaterializeResult(metadata=_metadata(result, pipeline.CHUNKS, lake.lake))


@dg.asset(
    **STAGE,
    deps=[chunks],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
)
def length_buckets(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource) -> dg.MaterializeResult:
    """Every chunk tokenized once on CPU (input_ids stored), assigned a 16-token length bucket and
    ordered by length (identical texts adjacent), so the embedder batches with almost no padding
    and never tokenizes."""
    result = pipeline.bucket_batch(lake.lake, context.partition_key, model.tokenizer(), log=context.log.info)
    return dg.MaterializeResult(metadata=_metadata(result, pipeline.BUCKETS, lake.lake))


EMBEDDING_CHECKS = [
    dg.AssetCheckSpec("one_vector_per_chunk", asset="embeddings", blocking=True, description="Exactly one vector for every current chunk of the partition."),
    dg.AssetCheckSpec("finite_values", asset="embeddings", blocking=True, description="No NaN or infinite component."),
    dg.AssetCheckSpec("expected_dimension", asset="embeddings", blocking=True, description="Every vector has the model's dimension."),
    dg.AssetCheckSpec("unit_norm", asset="embeddings", blocking=True, description="Vectors are unit length where the model normalizes."),
    dg.AssetCheckSpec("single_fingerprint", asset="embeddings", blocking=True, description="The partition holds vectors of one model fingerprint only."),
]


@dg.asset(
    **STAGE,
    deps=[length_buckets],
    op_tags=gpu_step_tags(),
    pool=GPU_POOL,
    check_specs=EMBEDDING_CHECKS,
    kinds={"deltalake", "pytorch"},
)
def embeddings(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource):
    """One vector per chunk (Arrow fixed-size float32 lists when written) with the model
    fingerprint. Only chunks whose text has no vector under the current fingerprint are embedded;
    progress is committed at least every EMBEDDING_COMMIT_SECONDS, and the partition is swapped in
    with one commit that also drops vectors of chunks that no longer exist."""
    batch = context.partition_key
    engine = model.engine(log=context.log.info)
    try:
        with delta.partition_lock(lake.lake, pipeline.EMBEDDINGS, batch):
            result = pipeline.embed_batch(lake.lake, batch, engine, commit_seconds=lake.commit_seconds, log=context.log.info)
    except delta.PartitionBusy as exc:
        raise dg.Failure(f"{exc}; this step retries once that run is done", allow_retries=True) from exc
    checks = list(check_embeddings(lake.lake, batch, engine))
    yield dg.MaterializeResult(metadata=_metadata(result, pipeline.EMBEDDINGS, lake.lake), check_results=checks)


def check_embeddings(lake_root: str, batch: str, engine) -> list[dg.AssetCheckResult]:
    from embedding_assets.lib.checks import embedding_checks

    results = []
    for name, passed, details in embedding_checks(lake_root, batch, engine.dimension, engine.fingerprint, normalized=engine_normalizes(engine)):
        results.append(dg.AssetCheckResult(check_name=name, passed=passed, metadata={k: v for k, v in details.items()}))
    return results


def engine_normalizes(engine) -> bool:
    pooling = getattr(engine.backends[0], "pooling", None)
    return bool(pooling and pooling.normalize)


@dg.asset(
    **STAGE,
    deps=[embeddings],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
)
def document_embeddings(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One vector per document: the token-weighted mean of its chunk vectors, re-normalized;
    read from the embeddings and length_buckets tables."""
    result = pipeline.document_vectors(lake.lake, context.partition_key, log=context.log.info)
    return dg.MaterializeResult(metadata=_metadata(result, pipeline.DOCUMENTS, lake.lake))


ASSETS = [raw_documents, chunks, length_buckets, embeddings, document_embeddings]
