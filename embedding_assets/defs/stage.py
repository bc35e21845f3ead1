"""What every stage asset shares: one partition per batch, one group, the retry policy, metadata.

Both domains (`defs.ingest` and `defs.embedding`) build their assets from `STAGE` and report
through `table_metadata`, so a table asset reads the same in the UI whichever domain owns it:
Dagster's standard table entries (`dagster/row_count` for the whole table and
`dagster/partition_row_count` for the partition, both from the Delta log; `dagster/column_schema`
from the schema module with each column's description; `dagster/uri` and `dagster/table_name`, the
table's URI) and then the stage's own numbers.
"""

import contextlib

import numpy as np

import dagster as dg

from embedding_assets.defs.partitions import batches
from embedding_assets.lib import catalog
from embedding_assets.lib.lake import tables
from embedding_assets.lib import lake as delta

GROUP = "embedding"
# Transient failures (a storage hiccup, a pod eviction) are retried with backoff; a bad batch
# fails with `dg.Failure(allow_retries=False)` instead.
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
STAGE = {"partitions_def": batches, "group_name": GROUP, "retry_policy": RETRY}


@contextlib.contextmanager
def damage_is_final():
    """A damaged Delta table (`lake.DamagedTable`: an empty or garbled commit, a missing log) is not
    transient: the step fails at once with the table, version and fix, instead of being retried."""
    try:
        yield
    except delta.DamagedTable as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None

_FIXED_SCHEMAS = {
    tables.RAW: tables.RAW_DOCUMENTS,
    tables.REJECTED: tables.REJECTED_DOCUMENTS,
    tables.CHUNKS: tables.CHUNKS_SCHEMA,
    tables.BUCKETS: tables.LENGTH_BUCKETS,
}


def arrow_schema(table: str, dimension: int = 0):
    """The table's Arrow schema from the schema module (vector tables at `dimension`; 0 = not known yet)."""
    if table == tables.EMBEDDINGS:
        return tables.embeddings_schema(dimension)
    if table == tables.DOCUMENTS:
        return tables.document_embeddings_schema(dimension)
    return _FIXED_SCHEMAS[table]


def column_schema(table: str, dimension: int = 0) -> dg.TableSchema:
    """The table's columns with types and descriptions, as Dagster shows them (the Columns section)."""
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, c.type, description=c.description or None) for c in catalog.columns(table, arrow_schema(table, dimension))]
    )


def definition_metadata(table: str) -> dict:
    """Static metadata of a table asset: its column schema, shown before anything is materialized."""
    return {"dagster/column_schema": column_schema(table)}


def table_metadata(numbers: dict, table: str, lake_root: str, batch: str, dimension: int = 0) -> dict:
    """A stage's result as Dagster metadata: the standard table entries, then every number it reported."""
    uri = delta.table_uri(lake_root, table)
    metadata: dict = {
        "dagster/uri": dg.MetadataValue.text(uri),
        "dagster/table_name": dg.MetadataValue.text(uri),
        "dagster/column_schema": dg.MetadataValue.table_schema(column_schema(table, dimension)),
    }
    counts = catalog.row_counts(lake_root, table, batch)
    if counts is not None:
        metadata["dagster/partition_row_count"] = dg.MetadataValue.int(counts[0])
        metadata["dagster/row_count"] = dg.MetadataValue.int(counts[1])
    metadata.update(number_metadata(numbers))
    return metadata


def number_metadata(numbers: dict) -> dict:
    """Plain numbers and strings as typed metadata values (floats rounded, lists as Markdown)."""
    metadata: dict = {}
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


def progress(context: dg.AssetExecutionContext, stage: str, numbers: dict, *keys: str) -> None:
    """One line per step, however short it was: what the stage did for the partition, and how long it took."""
    done = ", ".join(f"{numbers[k]:,} {k.replace('_', ' ')}" for k in keys if isinstance(numbers.get(k), (int, np.integer)))
    seconds = numbers.get("duration_s")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    context.log.info(f"{stage} {context.partition_key}: {done or 'done'}{took}")
