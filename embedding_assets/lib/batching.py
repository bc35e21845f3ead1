"""Token-budget batches over length-sorted, pre-tokenized inputs.

A batch costs its row count times its longest row (every row is padded to that length), so batches
are formed by a budget of padded tokens, not a fixed row count: short texts go in large batches,
long ones in small ones, and, because rows arrive sorted by length, almost nothing is padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

DEFAULT_TOKEN_BUDGET = 8192
MAX_ROWS_PER_BATCH = 1024


@dataclass(frozen=True)
class Batch:
    rows: np.ndarray  # positions of the batch's rows in the input
    input_ids: np.ndarray  # int64 [rows, padded_length], 0-padded
    attention_mask: np.ndarray  # int64, 1 where a token is real
    keys: np.ndarray | None = None  # optional caller ids of the rows (e.g. text hashes), kept through splits

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


def plan_batches(
    lengths: Sequence[int] | np.ndarray, token_budget: int, max_rows: int = MAX_ROWS_PER_BATCH, max_padding: float = 0.05
) -> list[tuple[int, int]]:
    """Consecutive [start, end) slices whose padded size stays within the budget.

    `lengths` should already be sorted (ascending): the planner keeps the input order so rows can be
    written back in place. A batch also ends early when the next row would push its padding past
    `max_padding`, once the batch is big enough (an eighth of the budget) to keep the device busy.
    A single row longer than the budget gets a batch of its own.

    Sorted input is planned a batch at a time with numpy (no per-row Python work); unsorted input
    takes the row-by-row rule, which gives the same slices on sorted input.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) > 1 and np.any(lengths[1:] < lengths[:-1]):
        return _plan_rowwise(lengths, token_budget, max_rows, max_padding)
    return _plan_sorted(lengths, token_budget, max_rows, max_padding)


def _plan_rowwise(lengths: np.ndarray, token_budget: int, max_rows: int, max_padding: float) -> list[tuple[int, int]]:
    slices: list[tuple[int, int]] = []
    start, longest, real = 0, 0, 0
    worth_a_batch = token_budget // 8
    for i, length in enumerate(lengths.tolist()):
        candidate = max(longest, length)
        rows = i - start + 1
        padded = candidate * rows
        too_padded = padded and 1 - (real + length) / padded > max_padding and longest * (rows - 1) >= worth_a_batch
        if i > start and (padded > token_budget or rows > max_rows or too_padded):
            slices.append((start, i))
            start, candidate, real = i, length, 0
        longest = candidate
        real += length
    if start < len(lengths):
        slices.append((start, len(lengths)))
    return slices


def _plan_sorted(lengths: np.ndarray, token_budget: int, max_rows: int, max_padding: float) -> list[tuple[int, int]]:
    """`_plan_rowwise` over ascending lengths, one vectorized search per batch.

    With ascending lengths the longest row of a batch [s, i] is row i, so row i (i > s) starts a new
    batch when L[i] * r > budget, r > max_rows, or the padding 1 - sum(L[s..i]) / (L[i] * r) passes
    `max_padding` while L[i-1] * (r - 1) >= budget // 8 (r = i - s + 1): the same float expressions as
    the row-by-row rule, so the slices are identical.
    """
    n = len(lengths)
    slices: list[tuple[int, int]] = []
    if n == 0:
        return slices
    cumulative = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=cumulative[1:])
    worth_a_batch = token_budget // 8
    start = 0
    while start < n:
        # Rows past `stop` never join this batch: row start + max_rows breaks the row cap, and with
        # ascending lengths row start + budget // L[start] already pads past the budget.
        stop = min(n, start + max_rows + 1)
        if lengths[start] > 0:
            stop = min(stop, start + token_budget // int(lengths[start]) + 1)
        i = np.arange(start + 1, stop)
        if not len(i):  # a row at least as long as the budget: a batch of its own
            slices.append((start, stop))
            start = stop
            continue
        rows = i - start + 1
        padded = lengths[i] * rows
        real = cumulative[i + 1] - cumulative[start]
        with np.errstate(divide="ignore", invalid="ignore"):
            too_padded = (padded > 0) & (1 - real / np.where(padded > 0, padded, 1) > max_padding) & (lengths[i - 1] * (rows - 1) >= worth_a_batch)
        cut = (padded > token_budget) | (rows > max_rows) | too_padded
        hit = int(np.argmax(cut)) if len(cut) else 0
        if len(cut) and cut[hit]:
            end = int(i[hit])
        else:
            end = stop
        slices.append((start, end))
        start = end
    return slices


def collate(token_ids: Sequence[np.ndarray], rows: np.ndarray | None = None, pad_id: int = 0, keys: np.ndarray | None = None) -> Batch:
    """Pads a list of id arrays into one int64 matrix and its attention mask."""
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    values = np.concatenate([np.asarray(t) for t in token_ids]) if len(token_ids) else np.empty(0, dtype=np.int64)
    return collate_flat(values, lengths, rows=rows, pad_id=pad_id, keys=keys)


def collate_flat(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray | None = None, pad_id: int = 0, keys: np.ndarray | None = None, starts: np.ndarray | None = None) -> Batch:
    """Pads rows held as one flat id buffer into one int64 matrix and its attention mask.

    Row j is `values[starts[j] : starts[j] + lengths[j]]` (`starts` defaults to the rows laid end to
    end). One vectorized gather fills the padded matrix: no per-row Python work.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    width = int(lengths.max()) if n else 0
    mask = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
    if starts is None:
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    if n and width:
        index = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
        ids[mask] = values[index[mask]]
    if rows is None:
        rows = np.arange(n)
    return Batch(rows=rows, input_ids=ids, attention_mask=mask.astype(np.int64), keys=keys)


# Elements of one shared buffer of `collate_slices` (ids and mask, int64 each): below 1 MiB, so
# the buffers come from the heap and are reused, not mapped and zero-filled afresh for each group.
GROUP_ELEMENTS = 96 * 1024


def collate_slices(values: np.ndarray, lengths: np.ndarray, starts: np.ndarray, slices: Sequence[tuple[int, int]], keys: np.ndarray | None = None, pad_id: int = 0) -> Iterator[Batch]:
    """`collate_flat` of many consecutive [start, end) slices of rows at once.

    Row j is `values[starts[j] : starts[j] + lengths[j]]`. The padded matrices and masks of a group
    of consecutive batches (up to GROUP_ELEMENTS padded tokens) are filled by one gather into one
    buffer (each batch a view of its part), so the per-batch work is a reshape: the same batches as
    `collate_flat` slice by slice, with a few numpy calls per group instead of per batch.
    """
    if not len(slices):
        return
    lengths = np.asarray(lengths, dtype=np.int64)
    first = np.array([s for s, _ in slices], dtype=np.int64)
    last = np.array([e for _, e in slices], dtype=np.int64)
    rows_per = last - first
    begin, end = int(first[0]), int(last[-1])
    widths = np.maximum.reduceat(lengths[begin:end], first - begin) if end > begin else np.zeros(len(slices), dtype=np.int64)
    widths = np.where(rows_per > 0, widths, 0)
    sizes = rows_per * widths
    group_start = 0
    while group_start < len(slices):
        group_end, group_size = group_start + 1, int(sizes[group_start])
        while group_end < len(slices) and group_size + int(sizes[group_end]) <= GROUP_ELEMENTS:
            group_size += int(sizes[group_end])
            group_end += 1
        yield from _collate_group(values, lengths, starts, first[group_start:group_end], rows_per[group_start:group_end], widths[group_start:group_end], sizes[group_start:group_end], keys, pad_id)
        group_start = group_end


def _collate_group(values, lengths, starts, first, rows_per, widths, sizes, keys, pad_id) -> Iterator[Batch]:
    offsets = np.cumsum(sizes) - sizes
    ids = np.full(int(sizes.sum()), pad_id, dtype=np.int64)
    mask = np.zeros(int(sizes.sum()), dtype=np.int64)
    begin, end = int(first[0]), int(first[-1] + rows_per[-1])
    row_lengths = lengths[begin:end]
    total = int(row_lengths.sum())
    if total:
        slice_of_row = np.repeat(np.arange(len(first)), rows_per)
        row_base = offsets[slice_of_row] + (np.arange(begin, end) - first[slice_of_row]) * widths[slice_of_row]
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(row_lengths) - row_lengths, row_lengths)
        dest = np.repeat(row_base, row_lengths) + within
        ids[dest] = values[np.repeat(np.asarray(starts[begin:end], dtype=np.int64), row_lengths) + within]
        mask[dest] = 1
    for k in range(len(first)):
        start, n, width, offset = int(first[k]), int(rows_per[k]), int(widths[k]), int(offsets[k])
        yield Batch(
            rows=np.arange(start, start + n), input_ids=ids[offset:offset + n * width].reshape(n, width),
            attention_mask=mask[offset:offset + n * width].reshape(n, width), keys=None if keys is None else keys[start:start + n],
        )


def iter_batches(token_ids: Sequence[np.ndarray], token_budget: int) -> Iterator[Batch]:
    """Collated batches over `token_ids` (sorted by length), in input order."""
    lengths = [len(t) for t in token_ids]
    for start, end in plan_batches(lengths, token_budget):
        yield collate(token_ids[start:end], rows=np.arange(start, end))


def padded_fraction(real_tokens: int, padded_tokens: int) -> float:
    return 0.0 if padded_tokens == 0 else 1.0 - real_tokens / padded_tokens
