"""The Delta sink: vectors in the lake's `embeddings` table, checkpoints in `_embeddings_staging`.

Checkpoints are exactly-once appends to the staging table; publishing replaces the embeddings
partition in one commit, so readers see the old complete set or the new one, never a mix.

Reads stream through `lake.scan_partition`, which decodes one record batch at a time on the
consuming thread (a threaded scan read ahead by +630 MB of RSS over a 500k-vector partition read by
the swap, which writes as it reads).
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables


class DeltaSink:
    def __init__(self, lake_root: str):
        self.lake_root = lake_root

    def _table(self, staged: bool) -> str:
        return tables.STAGING if staged else tables.EMBEDDINGS

    def read(self, batch: str, columns: list[str], *, staged: bool = False, filter=None) -> pa.Table | None:
        return lake.read_partition(self.lake_root, self._table(staged), batch, columns=columns, filter=filter)

    def scan(self, batch: str, columns: list[str], *, staged: bool = False, filter=None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        return lake.scan_partition(self.lake_root, self._table(staged), batch, columns=columns, filter=filter, batch_size=batch_size)

    def checkpoint_version(self, app_id: str) -> int:
        return lake.transaction_version(self.lake_root, tables.STAGING, app_id)

    def checkpoint(self, rows: pa.Table, app_transaction: tuple[str, int]) -> None:
        lake.append(self.lake_root, tables.STAGING, rows, app_transaction=app_transaction)

    def publish(self, batch: str, rows: pa.RecordBatchReader) -> None:
        lake.replace_partition(self.lake_root, tables.EMBEDDINGS, batch, rows)

    def finish(self, batch: str) -> None:
        # Checkpoints are spent once the partition is published (those of an abandoned fingerprint
        # too: the partition lock means no other run of this batch is writing them).
        lake.delete_partition(self.lake_root, tables.STAGING, batch)
        lake.compact_partition(self.lake_root, tables.EMBEDDINGS, batch)
        lake.vacuum(self.lake_root, tables.STAGING, retention_hours=1)
