"""Finding landed batches: one folder (or object-storage prefix) per batch under the landing root.

A batch is ready once it holds a `_READY` marker, or once none of its files changed for the settle
time, so a batch still being copied in is not picked up half-written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from embedding_assets.lib.lake import BATCH_NAME


@dataclass(frozen=True)
class LandedBatch:
    name: str
    newest_mtime: float
    ready_marker: bool
    n_files: int

    def ready(self, settle_seconds: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.n_files > 0 and (self.ready_marker or now - self.newest_mtime >= settle_seconds)


def landed_batches(landing_root: str) -> tuple[list[LandedBatch], list[str]]:
    """(batches found, folder names that cannot be batch names) under the landing root.

    The landing root is a local folder or an object-storage prefix (s3://, gs://, az://).
    """
    from embedding_assets.lib.object_store import list_batches

    found = [LandedBatch(i.name, i.newest_mtime, i.ready_marker, i.n_files) for i in list_batches(landing_root).values()]
    good = sorted((b for b in found if BATCH_NAME.match(b.name) and ".." not in b.name), key=lambda b: b.name)
    bad = sorted(b.name for b in found if not (BATCH_NAME.match(b.name) and ".." not in b.name))
    return good, bad


def new_batches(landing_root: str, known: set[str], settle_seconds: float, now: float | None = None) -> tuple[list[str], list[str], list[str]]:
    """(ready batches not in `known`, batches still settling, invalid folder names)."""
    found, bad = landed_batches(landing_root)
    ready = [b.name for b in found if b.name not in known and b.ready(settle_seconds, now)]
    waiting = [b.name for b in found if b.name not in known and not b.ready(settle_seconds, now)]
    return ready, waiting, bad
