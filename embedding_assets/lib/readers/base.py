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

# 16 million characters: a book is ~1 million; the chunker holds a few times a document's size,
# so this keeps one document of a step well under a GiB while leaving room for any real document.
DEFAULT_MAX_DOCUMENT_CHARS = 16_000_000
# A character is at most 4 bytes of UTF-8 (an invalid byte decodes to one character), so a text of
# more than 4 * cap bytes is over the cap before it is decoded.
MAX_UTF8_BYTES_PER_CHAR = 4


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
    max_chars: int = DEFAULT_MAX_DOCUMENT_CHARS  # the per-document size cap, in characters


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


def path_doc_id(relpath: str) -> str:
    """The doc_id of a whole file: its path with '%' and '#' percent-encoded, so '#' only ever
    separates a record file's path from a record id and no two (path, id) pairs share a doc_id."""
    return relpath.replace("%", "%25").replace("#", "%23")


def record_doc_id(relpath: str, record_id: str) -> str:
    """The doc_id of a record: '<encoded path>#<id>' (split at the first '#' to get both back)."""
    return f"{path_doc_id(relpath)}#{record_id}"


def over_document_cap(size: int, max_chars: int, unit: str = "characters") -> str:
    return (
        f"document is {size:,} {unit}, over the {max_chars:,}-character cap per document "
        "(EMBEDDING_MAX_DOCUMENT_CHARS); split it into smaller documents"
    )


def to_document(
    doc_id: str, source: str, record: str | None, text: str, flags: list[str], max_chars: int = DEFAULT_MAX_DOCUMENT_CHARS
) -> Document | Rejection:
    """Clean and normalize a text into a Document, or reject it as empty or over the size cap."""
    if len(text) > max_chars:
        return Rejection(source, record, over_document_cap(len(text), max_chars))
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
        flags.append("surrogates-replaced")
    if "\x00" in text:
        text = text.replace("\x00", "")
        flags.append("nul-removed")
    text = nfc(text)
    if not text or text.isspace():
        return Rejection(source, record, EMPTY)
    if len(text) > max_chars:
        return Rejection(source, record, over_document_cap(len(text), max_chars))
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
