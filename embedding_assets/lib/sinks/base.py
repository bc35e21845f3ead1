"""What a vector sink is: where the embeddings stage keeps its checkpoints and publishes vectors.

A run of the embeddings stage reads what the sink already holds (to embed only what is missing),
writes checkpoints while it embeds, then publishes one vector per chunk for the partition in one
step and lets the sink tidy up. Rows are always in the embeddings schema (one row per chunk).

A checkpoint is a set of *parts*: rows the sink holds durably but readers do not see yet. A part
is recorded exactly once per app transaction, so a killed run resumes from the parts it recorded.
Publishing replaces the partition's vectors with some parts kept as they are (the sink moves no
vector for them) plus rows written then; a sink that cannot keep a part copies its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class Part:
    """Checkpointed rows of one partition, as the sink recorded them."""

    key: str  # the sink's name for the part (a Delta sink: the data file's path in the table)
    model: str  # the fingerprint of its vectors
    rows: int
    size_bytes: int = 0
    extra: str = ""  # what the sink needs to publish the part as it is (a Delta sink: the file's statistics)
    modification_time: int = 0


class CheckpointWriter(Protocol):
    lanes: int  # how many threads may call `write` at once, each with its own lane number (at least 1)

    def write(self, rows: pa.RecordBatch, lane: int = 0) -> None:
        """Adds rows (embeddings schema) to the checkpoint in progress; nothing is durable yet."""

    def commit(self, app_transaction: tuple[str, int]) -> int:
        """Records every row written since the last commit as parts, exactly once per (app id,
        version); returns the rows recorded. Rows of a failed commit are dropped. Called while no
        `write` runs."""

    def close(self) -> None:
        """Drops rows written and not committed."""


class VectorSink(Protocol):
    def scan(self, batch: str, columns: list[str], *, filter=None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """The partition's published rows, streamed in record batches (bounded memory)."""

    def checkpoint_version(self, app_id: str) -> int:
        """The last checkpoint version committed under `app_id`, or -1."""

    def checkpoint_writer(self, batch: str, schema: pa.Schema) -> CheckpointWriter:
        """A writer of checkpoint parts for the partition (rows of `schema`, the embeddings schema)."""

    def parts(self, batch: str) -> list[Part]:
        """The partition's checkpointed parts not published yet, every fingerprint."""

    def scan_part(self, part: Part, columns: list[str], *, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """One part's rows, streamed."""

    def publish(self, batch: str, keep: list[Part], rows: pa.RecordBatchReader) -> None:
        """Replaces the partition's published vectors with the `keep` parts plus `rows`, all at once."""

    def finish(self, batch: str) -> None:
        """Drops the partition's checkpoint records and the parts that were not published; never
        touches a published vector."""
