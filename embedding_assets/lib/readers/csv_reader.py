"""CSV record files (.csv): a header row with a 'text' column and, optionally, an 'id' column.

Each data row is one document. Its doc_id is '<path>#<id>' (path percent-encoded, see records), or '<path>#<N>' when the file has no
'id' column, N being the row's number among the data rows (1-based: the header is not counted, nor
are blank lines). Other columns are ignored; header names are matched without surrounding spaces.

A rejected record is named by its id or by 'row N'. Invalid UTF-8 in a text cell is replaced and
flagged, as in every other format; an id that is not valid UTF-8, a row whose number of fields
differs from the header's, and an empty text are rejected row by row; a file without a 'text'
column is rejected whole.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator

from embedding_assets.lib.readers.base import UTF8_BOM, Document, LandedFile, Rejection, has_surrogates, nfc, text_format
from embedding_assets.lib.readers.records import Records, columns_problem

SUFFIXES = (".csv",)


@text_format
def read(file: LandedFile) -> Iterator[Document | Rejection]:
    # surrogateescape keeps each invalid byte as one recoverable character, so a bad byte spoils
    # only its own cell: a text cell is then decoded with replacement, an id cell rejected.
    start = 3 if file.data[:3] == UTF8_BOM else 0
    content = str(memoryview(file.data)[start:], "utf-8", "surrogateescape")
    stream = io.StringIO(content, newline="")
    del content
    # The csv module refuses fields over 128 KiB by default; a text cell may be as long as a file.
    if csv.field_size_limit() < file.cap:
        csv.field_size_limit(min(file.cap, sys.maxsize))
    rows = csv.reader(stream)
    header = next((fields for fields in rows if fields), [])
    names = [_shown(name.strip()) for name in header]
    problem = columns_problem(names, required=("text",), optional=("id",))
    if problem is not None:
        yield Rejection(file.relpath, None, problem)
        return
    text_at = names.index("text")
    id_at = names.index("id") if "id" in names else None
    records = Records(file.relpath, "row", file.max_chars)
    row = 0
    for fields in rows:
        if not fields:
            continue
        row += 1
        if len(fields) != len(names):
            reason = f"the row's field count ({len(fields)}) differs from the header's ({len(names)})"
            yield records.reject(row, None, reason)
            continue
        raw_id, id_problem = (row, None) if id_at is None else _id_cell(fields[id_at])
        text, flags = _text_cell(fields[text_at])
        yield records.build(row, raw_id, id_problem, text, flags)


def _text_cell(value: str) -> tuple[str, list[str]]:
    if has_surrogates(value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), ["invalid-utf8-replaced"]
    return value, []


def _id_cell(value: str) -> tuple[str | None, str | None]:
    if has_surrogates(value):
        return None, "id is not valid UTF-8"
    return value, None


def _shown(name: str) -> str:
    """A header name as data: bad bytes become U+FFFD, NFC."""
    return nfc(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
