"""Vectorized lookups of string keys (text hashes, chunk ids) without per-row Python objects.

A partition's keys are held once as a sorted fixed-width byte array (numpy `S<width>`, 64 bytes
per sha256 hex digest), and whole Arrow columns are looked up with `np.searchsorted`: a few
bytes per row and O(log n) per lookup, where a Python set or dict costs ~100 bytes per row and a
per-batch `pc.index_in` re-hashes the whole partition for every record batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def fixed_width(keys: pa.Array | pa.ChunkedArray | np.ndarray, width: int | None = None) -> np.ndarray:
    """An Arrow string column as a numpy `S<width>` array (zero-copy when every key has one length)."""
    if isinstance(keys, np.ndarray):
        if keys.dtype.kind != "S":
            raise ValueError(f"keys must be fixed-width bytes, not {keys.dtype}")
        return keys
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


def to_arrow(keys: np.ndarray) -> pa.Array:
    """A numpy `S<width>` key array as an Arrow string array, without Python objects per key.

    numpy pads shorter keys with NUL bytes; keys are ASCII identifiers (hex digests), so the
    padding is cut off by each key's length.
    """
    n, width = len(keys), keys.dtype.itemsize
    data = np.ascontiguousarray(keys).view(np.uint8).reshape(n, width) if n else np.zeros((0, width), np.uint8)
    lengths = np.full(n, width, dtype=np.int64) if not n or data[:, -1].all() else (data != 0).sum(axis=1)
    if n and (lengths == width).all():
        offsets = np.arange(n + 1, dtype=np.int64) * width
        payload = data.reshape(-1)
    else:
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        payload = data[np.arange(width)[None, :] < lengths[:, None]]
    if offsets[-1] >= 2**31:
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(payload.tobytes())).cast(pa.string())
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(payload.tobytes()))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _pair_table() -> np.ndarray:
    """Two ASCII characters read as one little-endian uint16 -> the byte their lowercase hex spells,
    or 256 where they are not two lowercase hex digits."""
    table = np.full(1 << 16, 256, dtype=np.uint16)
    high, low = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    chars = _HEX_DIGITS.astype(np.uint16)
    table[chars[high] | (chars[low] << 8)] = (high << 4) | low
    return table


_PAIR_TO_BYTE = _pair_table()
# byte -> its two lowercase hex digits, as the uint16 whose little-endian bytes they are
_BYTE_TO_PAIR = (_HEX_DIGITS[np.arange(256) >> 4].astype(np.uint16) | (_HEX_DIGITS[np.arange(256) & 15].astype(np.uint16) << 8)).astype("<u2")


def pack_hex(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowercase hex keys of one even width as raw bytes (half the width), and a mask of the keys
    that were such hex (the others are packed as garbage and must be ignored). One table lookup
    per pair of characters."""
    n, width = len(keys), keys.dtype.itemsize
    if not width:
        return np.zeros(n, dtype="S1"), np.zeros(n, dtype=bool)
    pairs = _PAIR_TO_BYTE[np.ascontiguousarray(keys).view("<u2").reshape(n, width // 2)]
    ok = (pairs < 256).all(axis=1)
    packed = pairs.astype(np.uint8)
    return packed.view(f"S{width // 2}").reshape(n), ok


def unpack_hex(packed: np.ndarray) -> np.ndarray:
    """The inverse of `pack_hex`: raw bytes back to lowercase hex keys (one table lookup per byte)."""
    n, width = len(packed), packed.dtype.itemsize
    data = np.ascontiguousarray(packed).view(np.uint8).reshape(n, width)
    return _BYTE_TO_PAIR[data].view(f"S{2 * width}").reshape(n)


def compact(keys: np.ndarray) -> tuple[np.ndarray, bool]:
    """(keys, packed): hex digests of one even width are held as raw bytes, half the memory."""
    width = keys.dtype.itemsize
    if len(keys) and width % 2 == 0:
        packed, ok = pack_hex(keys)
        if ok.all():
            return packed, True
    return keys, False


def _prefix(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as a big-endian integer: ordered like the keys themselves."""
    n, width = len(keys), keys.dtype.itemsize
    head = np.zeros((n, 8), dtype=np.uint8)
    if n and width:
        head[:, : min(8, width)] = np.ascontiguousarray(keys).view(np.uint8).reshape(n, width)[:, :8]
    return head.view(">u8").reshape(n).astype(np.uint64)


class CompactKeys:
    """Collects key columns part by part, packing hex digests as they come (the hex form of the
    whole column is never held at once); `result()` gives (keys, packed) like `compact`."""

    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.packed = True

    def add(self, keys: pa.Array | pa.ChunkedArray | np.ndarray) -> None:
        column = fixed_width(keys)
        if self.packed:
            if column.dtype.itemsize % 2 == 0 and len(column):
                raw, ok = pack_hex(column)
                if ok.all() and (not self.parts or self.parts[0].dtype.itemsize == raw.dtype.itemsize):
                    self.parts.append(raw)
                    return
            elif not len(column):
                return
            self.parts = [unpack_hex(part) for part in self.parts]
            self.packed = False
        self.parts.append(column.copy())  # a copy: the record batch behind a zero-copy view is let go

    def result(self) -> tuple[np.ndarray, bool]:
        if not self.parts:
            return np.empty(0, dtype="S1"), False
        keys = np.concatenate(self.parts)
        self.parts = []
        return keys, self.packed


class KeyIndex:
    """The keys of one table column, sorted, to find the rows that hold a given key.

    Rows with the same key form one group; `group` numbers groups 0..distinct-1 (in key order),
    so callers can keep one flag per distinct key in a numpy array.
    """

    def __init__(self, keys: pa.Array | pa.ChunkedArray | np.ndarray, *, packed: bool | None = None):
        # Hex digests (sha256 text hashes, chunk ids) are held as raw bytes: half the memory.
        # `packed=True`: `keys` are already raw bytes (from `CompactKeys`).
        if packed is None:
            column, self.packed = compact(fixed_width(keys))
        else:
            column, self.packed = keys, packed
        self.width = column.dtype.itemsize
        # Row numbers in key order: a stable sort by the keys' first 8 bytes as integers (faster than a
        # string sort) is the stable key order unless two different keys share those bytes.
        prefixes = _prefix(column)
        self.order = np.argsort(prefixes, kind="stable")
        sorted_prefixes = prefixes[self.order]
        ordered = column[self.order]
        if len(column) > 1 and self.width > 8:
            tie = sorted_prefixes[1:] == sorted_prefixes[:-1]
            if tie.any() and not (ordered[1:][tie] == ordered[:-1][tie]).all():
                self.order = np.argsort(column, kind="stable")
                ordered = column[self.order]
                sorted_prefixes = None
        is_first = np.ones(len(ordered), dtype=bool)
        is_first[1:] = ordered[1:] != ordered[:-1]
        self.starts = np.flatnonzero(is_first)  # position in `order` where each group starts
        # sorted distinct keys (the sorted keys themselves when no key repeats: no second copy)
        self.distinct = ordered if len(self.starts) == len(ordered) else ordered[self.starts]
        self.counts = np.diff(np.append(self.starts, len(ordered)))
        # first 8 bytes of each distinct key, as integers (lazily, unless the sort just made them)
        self._prefixes: np.ndarray | None = sorted_prefixes if sorted_prefixes is not None and len(self.starts) == len(ordered) else None
        self.rows = len(ordered)

    def __len__(self) -> int:
        return len(self.distinct)

    def group(self, keys: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
        """The group number of each key, or -1 where the key is not in the index."""
        query = keys if isinstance(keys, np.ndarray) else fixed_width(keys)
        if len(query) == 0 or len(self.distinct) == 0:
            return np.full(len(query), -1, dtype=np.int64)
        if self.packed:  # every indexed key is a hex digest of 2 * width characters
            if query.dtype.itemsize < 2 * self.width:
                return np.full(len(query), -1, dtype=np.int64)
            too_long = np.char.str_len(query) > 2 * self.width if query.dtype.itemsize > 2 * self.width else False
            query, is_hex = pack_hex(query.astype(f"S{2 * self.width}", copy=False))
            return np.where(is_hex & ~too_long, self._find(query), -1)
        return self._find(query)

    def keys(self, groups: np.ndarray | None = None) -> np.ndarray:
        """The keys (as given, e.g. hex) of the given groups (of every group when None)."""
        distinct = self.distinct if groups is None else self.distinct[groups]
        return unpack_hex(distinct) if self.packed else distinct

    def _find(self, query: np.ndarray) -> np.ndarray:
        if query.dtype.itemsize > self.width:
            # A longer key cannot be in the index; compare at the index's width after ruling that out.
            too_long = np.char.str_len(query) > self.width
            query = query.astype(f"S{self.width}")
        else:
            too_long = np.zeros(len(query), dtype=bool)
            query = query.astype(f"S{self.width}", copy=False)
        # Search by the keys' first 8 bytes as integers (a string searchsorted is ~10x slower), then
        # confirm the whole key; keys that share their first 8 bytes take the string search.
        if self._prefixes is None:
            self._prefixes = _prefix(self.distinct)
        n = len(self.distinct)
        wanted = _prefix(query)
        position = np.searchsorted(self._prefixes, wanted)
        inside = position < n
        found = np.zeros(len(query), dtype=bool)
        found[inside] = self.distinct[position[inside]] == query[inside]
        shared = ~found & inside
        shared[shared] = self._prefixes[position[shared]] == wanted[shared]
        if shared.any():
            again = np.searchsorted(self.distinct, query[shared])
            position[shared] = again
            hit = again < n
            found[np.flatnonzero(shared)[hit]] = self.distinct[again[hit]] == query[shared][hit]
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
