"""What a vector sink is: where the embeddings stage keeps its checkpoints and publishes vectors.

A run of the embeddings stage reads what the sink already holds (to embed only what is missing),
appends checkpoints while it embeds (exactly once per app transaction, so a killed run resumes),
then publishes one vector per chunk for the partition in one step and lets the sink tidy up.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import pyarrow as pa


class VectorSink(Protocol):
    def read(self, batch: str, columns: list[str], *, staged: bool = False, filter=None) -> pa.Table | None:
        """Published (or, with `staged`, checkpointed) rows of one partition; None if there are none yet."""

    def scan(self, batch: str, columns: list[str], *, staged: bool = False, filter=None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """The same rows, streamed in record batches (bounded memory)."""

    def checkpoint_version(self, app_id: str) -> int:
        """The last checkpoint version committed under `app_id`, or -1."""

    def checkpoint(self, rows: pa.Table, app_transaction: tuple[str, int]) -> None:
        """Appends checkpoint rows (one partition) exactly once per (app id, version)."""

    def publish(self, batch: str, rows: pa.RecordBatchReader) -> None:
        """Replaces the partition's published vectors with `rows`, all at once."""

    def finish(self, batch: str) -> None:
        """Drops the partition's spent checkpoints and tidies the published partition."""
