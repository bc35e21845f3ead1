"""Compressed forms of every format (name.<suffix>.gz): decompressed chunk by chunk under the cap.

The size cap applies to the decompressed content, so a small .gz that would inflate past it (a
decompression bomb) is rejected as soon as it passes the cap, never inflated whole.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO

from embedding_assets.lib.readers.base import Rejected, over_cap_after_decoding

SUFFIX = ".gz"

_CHUNK = 1 << 20
_GZIP_MARGIN = 4096  # a .gz of incompressible text is a little larger than the text itself


def split_compression(name: str) -> tuple[str, bool]:
    """(the name without its compression suffix, whether it had one); `name` in lower case."""
    if name.endswith(SUFFIX):
        return name[: -len(SUFFIX)], True
    return name, False


def max_stored_bytes(name: str, cap: int) -> int:
    """The largest stored size a file may have when its content may be at most `cap` bytes."""
    if name.lower().endswith(SUFFIX):
        return cap + cap // 100 + _GZIP_MARGIN
    return cap


def decompress_capped(raw: BinaryIO, cap: int) -> bytearray:
    """Decompress a gzip stream chunk by chunk, stopping as soon as it passes `cap` bytes."""
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            while True:
                chunk = stream.read(min(_CHUNK, cap + 1 - len(out)))
                if not chunk:
                    return out
                out += chunk
                if len(out) > cap:
                    raise Rejected(over_cap_after_decoding(cap))
    except EOFError as exc:
        raise Rejected(f"truncated gzip stream: {exc}") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise Rejected(f"corrupt gzip stream: {exc}") from None
