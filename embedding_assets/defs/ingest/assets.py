"""The ingest domain's assets: one landed batch folder -> raw_documents and rejected_documents.

One step reads the batch and writes both tables, so they are one multi-asset. Before reading, the
step takes the batch's landing fingerprint (`lib.storage.landing.batch_fingerprint`) and records
it as raw_documents' data version: the landing sensor compares it with the files' current
fingerprint to tell an up-to-date partition from a changed one, and a file changed during the read
makes the two differ, so the next tick runs the batch again.
"""

import warnings
from collections import Counter

import dagster as dg

from embedding_assets.defs.deployment import cpu_step_tags
from embedding_assets.defs.partitions import batches
from embedding_assets.defs.resources import LakeResource
from embedding_assets.defs.stage import GROUP, RETRY, damage_is_final, definition_metadata, progress, table_metadata
from embedding_assets.lib import lake as delta
from embedding_assets.lib import catalog, stages
from embedding_assets.lib.lake import tables
from embedding_assets.lib.storage.landing import batch_fingerprint
from embedding_assets.lib.storage.names import validate_batch

with warnings.catch_warnings():  # partitioned checks are a preview feature of Dagster 1.13
    warnings.simplefilter("ignore", dg.PreviewWarning)
    REJECT_FRACTION_CHECK = dg.AssetCheckSpec(
        "reject_fraction_below_threshold",
        asset=tables.REJECTED,
        partitions_def=batches,
        description="Warns when more than EMBEDDING_MAX_REJECT_FRACTION of a batch's files and records were rejected.",
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            tables.RAW,
            description="One row per readable document of the batch: doc_id (path in the batch, or path#id for record "
            "files), source, text, content_hash, size_bytes, flags. Its data version is the batch's landing fingerprint.",
            kinds={"deltalake"},
            metadata=definition_metadata(tables.RAW),
        ),
        dg.AssetSpec(
            tables.REJECTED,
            description="One row per file or record of the batch that could not be read, with the reason "
            "(empty, binary, broken JSON, missing text, over the size cap, ...). Rejections never stop the batch.",
            kinds={"deltalake"},
            metadata=definition_metadata(tables.REJECTED),
        ),
    ],
    check_specs=[REJECT_FRACTION_CHECK],
    partitions_def=batches,
    group_name=GROUP,
    retry_policy=RETRY,
    op_tags=cpu_step_tags(),
    can_subset=True,
    name="ingest",
)
def ingest(context: dg.AssetExecutionContext, lake: LakeResource):
    """Reads landing/<batch> into raw_documents and rejected_documents."""
    batch = context.partition_key
    lake_root, landing = lake.lake_root, lake.landing_root
    if not context.selected_asset_keys:
        # The check alone ("Execute" in the UI): judge what the last ingest wrote, read nothing new.
        counts = [catalog.row_counts(lake_root, table, batch) for table in (tables.RAW, tables.REJECTED)]
        documents, rejected = ((c[0] if c else 0) for c in counts)
        context.log.info(f"checking rejected_documents {batch}: {rejected} rejected, {documents} read")
        yield _reject_check(batch, documents, rejected, lake.reject_threshold)
        return
    try:
        validate_batch(batch)
    except ValueError as exc:  # a partition no landing folder can have: no retry will help
        raise _failure(str(exc), {"batch": repr(batch)}) from None
    fingerprint = batch_fingerprint(landing, batch)
    context.log.info(f"ingesting batch {batch} from {landing} (landing fingerprint {fingerprint})")
    failure = None
    try:
        with damage_is_final():
            result = stages.ingest_batch(landing, lake_root, batch, lake.file_cap, log=context.log.warning)
    except stages.AllDocumentsRejected as exc:
        result, failure = None, str(exc)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _failure(f"batch {batch!r}: no landing folder {delta.table_uri(landing, batch)} ({exc.strerror or exc})", {"landing": landing}) from None

    rejected = delta.read_partition(lake_root, tables.REJECTED, batch, columns=["source", "record", "reason"])
    n_rejected = 0 if rejected is None else rejected.num_rows
    n_documents = 0 if result is None else result["documents"]
    selected = context.selected_asset_keys
    if dg.AssetKey(tables.REJECTED) in selected:
        reasons = Counter(_reason_kind(r) for r in (rejected.column("reason").to_pylist() if rejected is not None else []))
        numbers = {"rejected": n_rejected, "documents": n_documents, **{f"reason: {k}": v for k, v in sorted(reasons.items())}}
        checks = []
        if REJECT_FRACTION_CHECK.key in context.selected_asset_check_keys:
            checks.append(_reject_check(batch, n_documents, n_rejected, lake.reject_threshold))
        yield dg.MaterializeResult(asset_key=tables.REJECTED, metadata=table_metadata(numbers, tables.REJECTED, lake_root, batch), check_results=checks)
    if failure is not None:
        raise _failure(failure, {"rejected": n_rejected, "rejections": _rejection_list(rejected), "landing_fingerprint": fingerprint})
    result["landing_fingerprint"] = fingerprint
    if dg.AssetKey(tables.RAW) in selected:
        yield dg.MaterializeResult(
            asset_key=tables.RAW,
            metadata=table_metadata(result, tables.RAW, lake_root, batch),
            data_version=dg.DataVersion(fingerprint) if fingerprint else None,
        )
    progress(context, "raw_documents", result, "documents", "rejected")


def _failure(description: str, metadata: dict) -> dg.Failure:
    """A bad batch: a Failure that says what was wrong, not retried (the input, not the run, is at fault)."""
    return dg.Failure(description=description, metadata=metadata, allow_retries=False)


def _rejection_list(rejected, limit: int = 50) -> dg.MetadataValue:
    """The first `limit` rejections as a Markdown list: file, record, reason."""
    if rejected is None:
        return dg.MetadataValue.md("none")
    rows = zip(*(rejected.column(c).to_pylist() for c in ("source", "record", "reason")))
    lines = [f"- `{source}{' ' + record if record else ''}`: {reason}" for source, record, reason in rows]
    return dg.MetadataValue.md("\n".join(lines[:limit]) or "none")


def _reason_kind(reason: str) -> str:
    """The kind of a rejection reason, without the file-specific detail in parentheses."""
    return reason.split(" (", 1)[0].split(":", 1)[0].strip()[:60]


def _reject_check(batch: str, documents: int, rejected: int, threshold: float) -> dg.AssetCheckResult:
    total = documents + rejected
    fraction = rejected / total if total else 0.0
    return dg.AssetCheckResult(
        check_name=REJECT_FRACTION_CHECK.name,
        asset_key=tables.REJECTED,
        passed=fraction <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{rejected} of {total} files and records of batch {batch!r} rejected ({fraction:.1%}; warn above {threshold:.1%})",
        metadata={"partition": batch, "rejected": rejected, "read": documents, "reject_fraction": dg.MetadataValue.float(round(fraction, 4)), "threshold": dg.MetadataValue.float(threshold)},
    )


ASSETS = [ingest]
