"""The embedding domain's assets: chunks -> length_buckets -> embeddings -> document_embeddings.

Each is a Delta table under the lake root, partitioned by batch; each materialization replaces
one partition and reports what it did as metadata. The work itself is in `embedding_assets.lib`.
"""

import dagster as dg

from embedding_assets.defs.deployment import GPU_POOL, cpu_step_tags, gpu_step_tags
from embedding_assets.defs.embedding.checks import EMBEDDING_CHECKS, check_embeddings
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.defs.stage import STAGE, table_metadata
from embedding_assets.lib import lake as delta
from embedding_assets.lib import stages
from embedding_assets.lib.lake import tables


@dg.asset(
    **STAGE,
    deps=["raw_documents"],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
)
def chunks(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource) -> dg.MaterializeResult:
    """Documents split with the model's own tokenizer into chunks of at most the model's max
    sequence length (special tokens included), preferring paragraph, then sentence, then word
    boundaries, with overlap. chunk_id is stable: a hash of (doc_id, chunk_index, text hash)."""
    tokenizer = model.tokenizer()
    result = stages.chunk_batch(lake.lake, context.partition_key, tokenizer, lake.chunk_tokens, lake.chunk_overlap, log=context.log.info)
    result["model"] = model.model
    return dg.MaterializeResult(metadata=table_metadata(result, tables.CHUNKS, lake.lake))


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
    result = stages.bucket_batch(lake.lake, context.partition_key, model.tokenizer(), log=context.log.info)
    return dg.MaterializeResult(metadata=table_metadata(result, tables.BUCKETS, lake.lake))


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
        with delta.partition_lock(lake.lake, tables.EMBEDDINGS, batch):
            result = stages.embed_batch(lake.lake, batch, engine, commit_seconds=lake.commit_seconds, log=context.log.info)
    except delta.PartitionBusy as exc:
        raise dg.Failure(f"{exc}; this step retries once that run is done", allow_retries=True) from exc
    checks = check_embeddings(lake.lake, batch, engine)
    yield dg.MaterializeResult(metadata=table_metadata(result, tables.EMBEDDINGS, lake.lake), check_results=checks)


@dg.asset(
    **STAGE,
    deps=[embeddings],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
)
def document_embeddings(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One vector per document: the token-weighted mean of its chunk vectors, re-normalized;
    read from the embeddings and length_buckets tables."""
    result = stages.document_vectors(lake.lake, context.partition_key, log=context.log.info)
    return dg.MaterializeResult(metadata=table_metadata(result, tables.DOCUMENTS, lake.lake))


ASSETS = [chunks, length_buckets, embeddings, document_embeddings]
