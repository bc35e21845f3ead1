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
    """
    lengths = np.asarray(lengths)
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


def collate(token_ids: Sequence[np.ndarray], rows: np.ndarray | None = None, pad_id: int = 0, keys: np.ndarray | None = None) -> Batch:
    """Pads a list of id arrays into one int64 matrix and its attention mask."""
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    width = int(lengths.max()) if len(lengths) else 0
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for i, t in enumerate(token_ids):
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
    if rows is None:
        rows = np.arange(len(token_ids))
    return Batch(rows=rows, input_ids=ids, attention_mask=mask, keys=keys)


def iter_batches(token_ids: Sequence[np.ndarray], token_budget: int) -> Iterator[Batch]:
    """Collated batches over `token_ids` (sorted by length), in input order."""
    lengths = [len(t) for t in token_ids]
    for start, end in plan_batches(lengths, token_budget):
        yield collate(token_ids[start:end], rows=np.arange(start, end))


def padded_fraction(real_tokens: int, padded_tokens: int) -> float:
    return 0.0 if padded_tokens == 0 else 1.0 - real_tokens / padded_tokens
