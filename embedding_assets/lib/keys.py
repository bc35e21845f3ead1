"""Vectorized lookups of string keys (text hashes, chunk ids) without per-row Python objects.

A partition's keys are held once as a sorted fixed-width byte array (numpy `S<width>`, 64 bytes
per sha256 hex digest), and whole Arrow columns are looked up with `np.searchsorted`: a few
bytes per row and O(log n) per lookup, where a Python set or dict costs ~100 bytes per row and a
per-batch `pc.index_in` re-hashes the whole partition for every record batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def fixed_width(keys: pa.Array | pa.ChunkedArray, width: int | None = None) -> np.ndarray:
    """An Arrow string column as a numpy `S<width>` array (zero-copy when every key has one length)."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if keys.null_count:
        raise ValueError("keys must not be null")
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=f"S{width or 1}")
    if keys.type == pa.large_string():
        keys = keys.cast(pa.string())
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset:keys.offset + n + 1]
    lengths = np.diff(offsets)
    longest = int(lengths.max())
    if width is not None and longest > width:
        raise ValueError(f"a key of {longest} bytes does not fit the index's {width}-byte keys")
    width = width or max(longest, 1)
    if int(lengths.min()) == width:
        data = keys.buffers()[2]
        return np.frombuffer(data, dtype=f"S{width}", count=n, offset=int(offsets[0]))
    return np.array([k.encode("utf-8") for k in keys.to_pylist()], dtype=f"S{width}")


class KeyIndex:
    """The keys of one table column, sorted, to find the rows that hold a given key.

    Rows with the same key form one group; `group` numbers groups 0..distinct-1 (in key order),
    so callers can keep one flag per distinct key in a numpy array.
    """

    def __init__(self, keys: pa.Array | pa.ChunkedArray):
        column = fixed_width(keys)
        self.width = column.dtype.itemsize
        self.order = np.argsort(column, kind="stable")  # row numbers in key order
        ordered = column[self.order]
        is_first = np.ones(len(ordered), dtype=bool)
        is_first[1:] = ordered[1:] != ordered[:-1]
        self.starts = np.flatnonzero(is_first)  # position in `order` where each group starts
        self.distinct = ordered[self.starts]  # sorted distinct keys
        self.counts = np.diff(np.append(self.starts, len(ordered)))
        self.rows = len(ordered)

    def __len__(self) -> int:
        return len(self.distinct)

    def group(self, keys: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
        """The group number of each key, or -1 where the key is not in the index."""
        query = keys if isinstance(keys, np.ndarray) else fixed_width(keys)
        if len(query) == 0 or len(self.distinct) == 0:
            return np.full(len(query), -1, dtype=np.int64)
        if query.dtype.itemsize > self.width:
            # A longer key cannot be in the index; compare at the index's width after ruling that out.
            too_long = np.char.str_len(query) > self.width
            query = query.astype(f"S{self.width}")
        else:
            too_long = np.zeros(len(query), dtype=bool)
            query = query.astype(f"S{self.width}", copy=False)
        position = np.searchsorted(self.distinct, query)
        inside = position < len(self.distinct)
        found = np.zeros(len(query), dtype=bool)
        found[inside] = self.distinct[position[inside]] == query[inside]
        found &= ~too_long
        return np.where(found, position, -1)

    def rows_of(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row of the given groups: (row numbers, index into `groups` of each row's group)."""
        counts = self.counts[groups]
        owner = np.repeat(np.arange(len(groups)), counts)
        first = np.repeat(self.starts[groups], counts)
        within = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.order[first + within], owner


def claim_new(index: KeyIndex, claimed: np.ndarray, keys: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `keys` of the first occurrence of each indexed key not yet claimed, and their
    groups; marks those groups claimed (`claimed` holds one flag per group of `index`)."""
    groups = index.group(keys)
    keep = (groups >= 0) & first_in_batch(groups)
    keep[keep] = ~claimed[groups[keep]]
    picked = np.flatnonzero(keep)
    claimed[groups[picked]] = True
    return picked, groups[picked]


def first_in_batch(groups: np.ndarray) -> np.ndarray:
    """A mask keeping the first occurrence of each group number in `groups`."""
    keep = np.zeros(len(groups), dtype=bool)
    if len(groups):
        _, first = np.unique(groups, return_index=True)
        keep[first] = True
    return keep
