"""Which files a batch holds for the readers, and which reader reads each: decided here only.

A format is a module with `SUFFIXES` (lower case, with the dot) and `read(LandedFile)`; a new format
is one new module and one line in `FORMATS`. Every format is also read gzip-compressed
(name.<suffix>.gz). Names starting with '.' or '_' (a `_READY` marker, a `.partial` upload, a
`_tmp/` folder) are not files of the batch; object-storage listing and download use the same rule.
"""

from __future__ import annotations

import os

from embedding_assets.lib.readers import csv_reader, html, jsonl, parquet, text
from embedding_assets.lib.readers.base import Reader, Rejected
from embedding_assets.lib.readers.compression import SUFFIX as COMPRESSED_SUFFIX
from embedding_assets.lib.readers.compression import max_stored_bytes, split_compression

__all__ = ["FORMATS", "READERS", "SUPPORTED_SUFFIXES", "considered", "is_hidden", "max_stored_bytes", "reader_for"]

# In the order the supported suffixes are listed to a person.
FORMATS = (
    text,
    html,
    jsonl,
    parquet,
    csv_reader,
)

READERS: dict[str, Reader] = {suffix: fmt.read for fmt in FORMATS for suffix in fmt.SUFFIXES}
SUPPORTED_SUFFIXES = tuple(READERS)
_SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES) + f" (each optionally gzip-compressed as {COMPRESSED_SUFFIX})"


def is_hidden(name: str) -> bool:
    """A file or folder name the readers never consider (and that never names a batch)."""
    return name.startswith((".", "_"))


def considered(relpath: str) -> bool:
    """Whether the readers consider a '/'-separated path inside a batch (no hidden segment)."""
    return not any(is_hidden(part) for part in relpath.split("/") if part)


def reader_for(relpath: str) -> tuple[Reader, bool]:
    """(the reader for a path, whether it is gzip-compressed); Rejected for an unsupported type."""
    name = relpath.rsplit("/", 1)[-1].lower()
    inner, compressed = split_compression(name)
    suffix = os.path.splitext(inner)[1]
    reader = READERS.get(suffix)
    if reader is not None:
        return reader, compressed
    shown = (suffix + COMPRESSED_SUFFIX if suffix else COMPRESSED_SUFFIX) if compressed else suffix
    if not shown:
        raise Rejected(f"unsupported file type (the name has no suffix); supported: {_SUPPORTED_TEXT}")
    raise Rejected(f"unsupported file type '{shown}'; supported: {_SUPPORTED_TEXT}")
