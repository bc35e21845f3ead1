"""Sorting a partition's rows in bounded memory: sorted runs in Arrow IPC files, merged on read.

`SortedRuns` takes record batches as they come, sorts each run of at most `run_rows` rows (or
`run_bytes`) in memory and writes it to a temporary folder; `merged()` reads the runs back a small
record batch at a time and yields every row in key order. The merge is vectorized: each run holds
one read batch; every buffered row whose key is at most the smallest of the runs' last buffered
keys is safe to emit (no run can still hold a smaller one), and those rows are sorted together
with numpy. Memory is two copies of one run while spilling it (the batches it came in, then one contiguous
copy, gathered from in sorted order a read batch at a time) and one read batch (at most `read_rows`
rows, about READ_BYTES) per run while merging; past
`fan_in` runs, runs are first merged into larger runs on disk, so the merge's memory stays bounded.

Keys are numpy columns computed from a record batch by the caller's `key` function (most
significant first: ints, or fixed-width byte strings such as `keys.fixed_width`), and must be
unique per row (add a sequence number as the last key for a stable sort).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

Key = Callable[[pa.RecordBatch], Sequence[np.ndarray]]

RUN_ROWS = 65_536
RUN_BYTES = 32 << 20
READ_ROWS = 2_048
READ_BYTES = 1 << 20  # a run's record batches are at most about this large (merge memory: runs x this)
FAN_IN = 64


class SortedRuns:
    """Rows sorted by `key`, spilled to sorted runs in a temporary folder (removed by `close`)."""

    def __init__(self, schema: pa.Schema, key: Key, *, run_rows: int = RUN_ROWS, run_bytes: int = RUN_BYTES,
                 read_rows: int = READ_ROWS, fan_in: int = FAN_IN, folder: str | None = None):
        self.schema, self.key = schema, key
        self.run_rows, self.run_bytes, self.read_rows, self.fan_in = run_rows, run_bytes, read_rows, max(2, fan_in)
        self.folder = tempfile.mkdtemp(prefix="embedding_assets-sort-", dir=folder)
        self.runs: list[str] = []
        self.files = 0
        self.held: list[pa.RecordBatch] = []
        self.held_rows = self.held_bytes = 0
        self.rows = 0

    def __enter__(self) -> "SortedRuns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.held = []
        shutil.rmtree(self.folder, ignore_errors=True)

    def add(self, record_batch: pa.RecordBatch) -> None:
        if record_batch.num_rows == 0:
            return
        self.held.append(record_batch)
        self.held_rows += record_batch.num_rows
        self.held_bytes += record_batch.nbytes
        self.rows += record_batch.num_rows
        if self.held_rows >= self.run_rows or self.held_bytes >= self.run_bytes:
            self._spill()

    def merged(self) -> Iterator[pa.RecordBatch]:
        """Every row added, in key order, in record batches of at most `read_rows` rows."""
        if self.held:
            self._spill()
        runs = self.runs
        while len(runs) > self.fan_in:
            group, runs = runs[:self.fan_in], runs[self.fan_in:]
            path = self._path()
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, self.schema) as writer:
                for part in _merge(group, self.key, self.read_rows):
                    writer.write_batch(part)
            for old in group:
                os.remove(old)
            runs = [*runs, path]
        self.runs = runs
        yield from _merge(runs, self.key, self.read_rows)

    def _path(self) -> str:
        self.files += 1
        return os.path.join(self.folder, f"run-{self.files:06d}.arrow")

    def _spill(self) -> None:
        held, nbytes = self.held, self.held_bytes
        self.held, self.held_rows, self.held_bytes = [], 0, 0
        order = _order([np.concatenate(columns) for columns in zip(*(self.key(b) for b in held))])
        # One contiguous copy of the run (the record batches it came in are let go), from which the
        # sorted rows are gathered a read batch at a time as they are written: a take of the whole
        # run at once would hold a second copy and, for list columns, its builders' spare room.
        table = pa.Table.from_batches(held, schema=self.schema)
        del held
        table = table.combine_chunks()
        step = max(1, min(self.read_rows, int(READ_BYTES * table.num_rows / max(nbytes, 1))))
        path = self._path()
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, self.schema) as writer:
            for start in range(0, len(order), step):
                for batch in table.take(pa.array(order[start:start + step])).to_batches():
                    writer.write_batch(batch)
        self.runs.append(path)


def _order(keys: Sequence[np.ndarray]) -> np.ndarray:
    return np.lexsort(tuple(reversed(list(keys))))


class _Run:
    """One run being merged: its reader and its current record batch, from row `pos` on."""

    def __init__(self, path: str, key: Key):
        self.file = pa.OSFile(path, "rb")
        self.reader = pa.ipc.open_stream(self.file)
        self.key = key
        self.batch: pa.RecordBatch | None = None
        self.keys: list[np.ndarray] = []
        self.pos = 0
        self.done = False

    def fill(self) -> None:
        while not self.done and (self.batch is None or self.pos >= self.batch.num_rows):
            try:
                self.batch = self.reader.read_next_batch()
            except StopIteration:
                self.batch, self.keys, self.done = None, [], True
                self.file.close()
                return
            self.keys = [np.asarray(k) for k in self.key(self.batch)]
            self.pos = 0

    def last(self) -> tuple:
        return tuple(k[-1] for k in self.keys)


def _merge(paths: list[str], key: Key, read_rows: int) -> Iterator[pa.RecordBatch]:
    runs = [_Run(p, key) for p in paths]
    try:
        while True:
            for run in runs:
                run.fill()
            live = [r for r in runs if not r.done]
            if not live:
                return
            bound = min(r.last() for r in live)
            parts, part_keys = [], []
            for run in live:
                n = _count_at_most(run.keys, bound, run.pos)
                if n:
                    parts.append(run.batch.slice(run.pos, n))
                    part_keys.append([k[run.pos:run.pos + n] for k in run.keys])
                    run.pos += n
            if len(parts) == 1:
                out = parts[0]
            else:
                table = pa.Table.from_batches(parts).combine_chunks()
                keys = [np.concatenate([pk[i] for pk in part_keys]) for i in range(len(part_keys[0]))]
                out = table.take(pa.array(_order(keys))).combine_chunks().to_batches()[0]
            for start in range(0, out.num_rows, read_rows):
                yield out.slice(start, read_rows)
    finally:
        for run in runs:
            if not run.done:
                run.file.close()


def _count_at_most(keys: list[np.ndarray], bound: tuple, pos: int) -> int:
    """How many rows from `pos` on (sorted) have a key <= `bound` (lexicographic over the columns)."""
    less = np.zeros(len(keys[0]) - pos, dtype=bool)
    equal = np.ones(len(keys[0]) - pos, dtype=bool)
    for column, value in zip(keys, bound):
        column = column[pos:]
        less |= equal & (column < value)
        equal &= column == value
    return int(np.count_nonzero(less | equal))
