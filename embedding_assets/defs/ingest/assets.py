"""The ingest domain's asset: one landed batch folder -> the raw_documents partition."""

import dagster as dg

from embedding_assets.defs.deployment import cpu_step_tags
from embedding_assets.defs.resources import LakeResource
from embedding_assets.defs.stage import STAGE, table_metadata
from embedding_assets.lib import stages
from embedding_assets.lib.lake import tables


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
        result = stages.ingest_batch(lake.landing, lake.lake, context.partition_key, lake.max_file_bytes, log=context.log.warning)
    except (stages.AllDocumentsRejected, FileNotFoundError, NotADirectoryError) as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    return dg.MaterializeResult(metadata=table_metadata(result, tables.RAW, lake.lake))


ASSETS = [raw_documents]
