"""The embedding domain's assets: chunks -> length_buckets -> embeddings -> document_embeddings.

Each is a Delta table under the lake root, partitioned by batch; each materialization replaces
one partition and reports what it did as metadata (the standard table entries first: row counts,
column schema, URI). The work itself is in `embedding_assets.lib`.
"""

import dagster as dg

from embedding_assets.defs.deployment import GPU_POOL, cpu_step_tags, gpu_step_tags
from embedding_assets.defs.embedding.checks import EMBEDDING_CHECKS, check_embeddings
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.defs.stage import STAGE, damage_is_final, definition_metadata, progress, table_metadata
from embedding_assets.lib import lake as delta
from embedding_assets.lib import stages
from embedding_assets.lib.lake import tables
from embedding_assets.lib.telemetry import Telemetry

# Figures of the run that last embedded something: carried onto a materialization that embedded
# nothing (everything up to date), so the latest materialization and the plots keep real numbers.
MEASURED = ("tokens", "padded_tokens", "padded_fraction", "tokens_per_s", "batches", "oom_splits")


@dg.asset(
    **STAGE,
    deps=[tables.RAW],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
    metadata=definition_metadata(tables.CHUNKS),
)
def chunks(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource) -> dg.MaterializeResult:
    """Documents split with the model's own tokenizer into chunks of at most the model's max
    sequence length (special tokens included), preferring paragraph, then sentence, then word
    boundaries, with overlap. chunk_id is stable: a hash of (doc_id, chunk_index, text hash)."""
    batch, lake_root = context.partition_key, lake.lake_root
    tokenizer = model.tokenizer()
    with damage_is_final():
        result = stages.chunk_batch(lake_root, batch, tokenizer, lake.chunk_limit, lake.overlap, log=context.log.info)
    result["model"] = model.model_name
    progress(context, "chunks", result, "documents", "chunks", "tokens")
    return dg.MaterializeResult(metadata=table_metadata(result, tables.CHUNKS, lake_root, batch))


@dg.asset(
    **STAGE,
    deps=[chunks],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
    metadata=definition_metadata(tables.BUCKETS),
)
def length_buckets(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource) -> dg.MaterializeResult:
    """Every chunk tokenized once on CPU (input_ids stored), assigned a 16-token length bucket and
    ordered by length (identical texts adjacent), so the embedder batches with almost no padding
    and never tokenizes."""
    batch, lake_root = context.partition_key, lake.lake_root
    with damage_is_final():
        result = stages.bucket_batch(lake_root, batch, model.tokenizer(), log=context.log.info)
    progress(context, "length_buckets", result, "chunks", "tokens", "buckets")
    return dg.MaterializeResult(metadata=table_metadata(result, tables.BUCKETS, lake_root, batch))


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            tables.EMBEDDINGS,
            deps=[length_buckets],
            description="One vector per chunk (Arrow fixed-size float32 lists when written) with the model fingerprint. "
            "Only chunks whose text has no vector under the current fingerprint are embedded; progress is committed at "
            "least every EMBEDDING_COMMIT_SECONDS, and the partition is swapped in with one commit that also drops "
            "vectors of chunks that no longer exist. On CUDA the metadata records peak memory, utilization (with "
            "nvidia-ml-py) and tokens/s per device; on CPU, CPU use and threads.",
            kinds={"deltalake", "pytorch"},
            metadata=definition_metadata(tables.EMBEDDINGS),
        )
    ],
    **STAGE,
    op_tags=gpu_step_tags(),
    pool=GPU_POOL,
    check_specs=EMBEDDING_CHECKS,
    can_subset=True,  # the checks can run alone, for a chosen partition
    name=tables.EMBEDDINGS,
)
def embeddings(context: dg.AssetExecutionContext, lake: LakeResource, model: ModelResource):
    """Embeds what the partition lacks, swaps it in, then runs the blocking checks (or the checks alone)."""
    batch, lake_root = context.partition_key, lake.lake_root
    engine = model.engine(log=context.log.info, lake_root=lake_root)
    selected_checks = set(context.selected_asset_check_keys)
    if dg.AssetKey(tables.EMBEDDINGS) not in context.selected_asset_keys:
        # The checks alone, for this partition: nothing is embedded or written.
        context.log.info(f"checking embeddings {batch} under {engine.fingerprint}")
        yield from check_embeddings(lake_root, batch, engine, selected_checks)
        return
    try:
        with damage_is_final(), delta.partition_lock(lake_root, tables.EMBEDDINGS, batch), Telemetry(engine.device.split(",")) as telemetry:
            with telemetry.count_tokens(engine):
                result = stages.embed_batch(lake_root, batch, engine, commit_seconds=lake.commit_interval, log=context.log.info)
    except delta.PartitionBusy as exc:
        raise dg.Failure(f"{exc}; this step retries once that run is done", allow_retries=True) from None
    if result.get("skipped"):
        _carry_measured_figures(context, result)
    else:
        result.update(telemetry.figures())
    progress(context, "embeddings", result, "chunks", "embedded_texts", "reused_vectors", "tokens")
    checks = check_embeddings(lake_root, batch, engine, selected_checks)
    yield dg.MaterializeResult(metadata=table_metadata(result, tables.EMBEDDINGS, lake_root, batch, engine.dimension), check_results=checks)


def _carry_measured_figures(context: dg.AssetExecutionContext, result: dict) -> None:
    """An up-to-date partition embedded nothing: report the figures of the run that last did.

    Zeros would become the latest point of every plot and hide what the hardware does; the
    figures are copied from the latest materialization of this partition that has them, and
    `figures_from_run` names the run that measured them.
    """
    for key in ("tokens", "tokens_per_s", "padded_fraction"):
        result.pop(key, None)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(tables.EMBEDDINGS), asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return
    previous = records[0].asset_materialization.metadata
    if "tokens_per_s" not in previous:
        return
    for key, value in previous.items():
        if key in MEASURED or ("/" in key and not key.startswith("dagster/")):
            result[key] = value.value
    source = previous.get("figures_from_run")
    result["figures_from_run"] = source.value if source is not None else records[0].run_id
    context.log.info(f"embeddings {context.partition_key} up to date: throughput figures carried from run {result['figures_from_run']}")


@dg.asset(
    **STAGE,
    deps=[embeddings],
    op_tags=cpu_step_tags(),
    kinds={"deltalake"},
    metadata=definition_metadata(tables.DOCUMENTS),
)
def document_embeddings(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """One vector per document: the token-weighted mean of its chunk vectors, re-normalized;
    read from the embeddings and length_buckets tables."""
    batch, lake_root = context.partition_key, lake.lake_root
    with damage_is_final():
        result = stages.document_vectors(lake_root, batch, log=context.log.info)
    progress(context, "document_embeddings", result, "documents", "chunks")
    return dg.MaterializeResult(metadata=table_metadata(result, tables.DOCUMENTS, lake_root, batch, result["dimension"]))


ASSETS = [chunks, length_buckets, embeddings, document_embeddings]
