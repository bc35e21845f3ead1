"""What every reader shares: the documents and rejections it yields, and the text clean-up.

A reader is a function `read(file: LandedFile) -> Iterator[Document | Rejection]` over one file's
bytes (already decompressed and capped by the batch walk); a text format wraps it in `text_format`.
Every text and id it yields is cleaned the same way: no lone surrogates, no NUL, NFC-normalized,
and an empty text becomes a Rejection.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

UTF8_BOM = b"\xef\xbb\xbf"
_SURROGATES = re.compile("[\ud800-\udfff]")
_SNIFF_BYTES = 8192
_BINARY_CONTROL_SHARE = 0.30
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f") + b"\x7f"

EMPTY = "empty document (no text after decoding)"


@dataclass(frozen=True, slots=True)
class Document:
    """One document of the batch; `doc_id` is stable across reads of the same batch."""

    doc_id: str
    source: str
    text: str
    content_hash: str
    size_bytes: int
    flags: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A file or record that was not turned into a document, and why."""

    source: str
    record: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class LandedFile:
    """One file of the batch as a reader sees it."""

    relpath: str  # NFC, '/'-separated: the Document.source / Rejection.source of what it yields
    data: bytes | bytearray  # the whole content, decompressed, at most `cap` bytes
    cap: int  # the batch's size cap, for formats that decode further (Parquet pages)
    file_paths: frozenset[str]  # every file of the batch: a record's doc_id must not be one of them


Reader = Callable[[LandedFile], Iterator[Document | Rejection]]


def text_format(read: Reader) -> Reader:
    """For a format that is text: a file that looks binary is rejected before `read` sees it."""

    @functools.wraps(read)
    def checked(file: LandedFile) -> Iterator[Document | Rejection]:
        reason = binary_reason(file.data)
        if reason is not None:
            return iter([Rejection(file.relpath, None, reason)])
        return read(file)

    return checked


class Rejected(Exception):
    """Raised while reading a file to turn the whole file into one Rejection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_document(doc_id: str, source: str, record: str | None, text: str, flags: list[str]) -> Document | Rejection:
    """Clean and normalize a text into a Document, or reject it as empty."""
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
        flags.append("surrogates-replaced")
    if "\x00" in text:
        text = text.replace("\x00", "")
        flags.append("nul-removed")
    text = nfc(text)
    if not text or text.isspace():
        return Rejection(source, record, EMPTY)
    encoded = text.encode("utf-8")
    return Document(
        doc_id=doc_id,
        source=source,
        text=text,
        content_hash=hashlib.sha256(encoded).hexdigest(),
        size_bytes=len(encoded),
        flags=",".join(dict.fromkeys(flags)),
    )


def binary_reason(data: bytes | bytearray) -> str | None:
    """Why `data` is not text (UTF-16/32, NUL bytes, mostly control characters), or None."""
    head = bytes(data[:_SNIFF_BYTES])
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "binary file (not text): it looks like UTF-16 or UTF-32; re-encode it as UTF-8"
    if b"\x00" in head:
        return "binary file (not text): it contains NUL bytes"
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if head and controls > _BINARY_CONTROL_SHARE * len(head):
        return "binary file (not text): more than 30% of its first 8 KiB are control characters"
    return None


def decode_utf8(data: bytes | bytearray) -> tuple[str, list[str]]:
    """(text, flags): UTF-8 without a leading BOM; bad bytes become U+FFFD and are flagged."""
    view = memoryview(data)
    if view[:3] == UTF8_BOM:
        view = view[3:]
    try:
        return str(view, "utf-8"), []
    except UnicodeDecodeError:
        return str(view, "utf-8", "replace"), ["invalid-utf8-replaced"]


def has_surrogates(text: str) -> bool:
    return _SURROGATES.search(text) is not None


def nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def format_cap(cap: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if cap % size == 0:
            return f"{cap // size} {unit}"
    return f"{cap}-byte"


def over_cap_after_decoding(cap: int) -> str:
    return f"decompressed size exceeds the {format_cap(cap)} cap (possible decompression bomb)"
