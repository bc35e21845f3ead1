"""What every stage asset shares: one partition per batch, one group, the retry policy, metadata.

Both domains (`defs.ingest` and `defs.embedding`) build their assets from `STAGE` and report
through `table_metadata`, so a table asset reads the same in the UI whichever domain owns it.
"""

import numpy as np

import dagster as dg

from embedding_assets.defs.partitions import batches
from embedding_assets.lib import lake as delta

GROUP = "embedding"
# Transient failures (a storage hiccup, a pod eviction) are retried with backoff; a bad batch
# fails with `dg.Failure(allow_retries=False)` instead.
RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
STAGE = {"partitions_def": batches, "group_name": GROUP, "retry_policy": RETRY}


def table_metadata(numbers: dict, table: str, lake_root: str) -> dict:
    """A stage's result as Dagster metadata: the table's location plus every number it reported."""
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
