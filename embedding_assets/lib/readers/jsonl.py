"""JSON Lines record files (.jsonl): one JSON object per line, with an 'id' and a 'text' field.

Blank lines are skipped; a rejected record is named by its id or by 'line N' (1-based). A line
longer than a record within the per-document cap can be (`max_line_bytes`) is rejected by its length
before it is decoded or parsed, so one huge line never becomes a huge Python object.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from embedding_assets.lib.readers.base import UTF8_BOM, Document, LandedFile, Rejection, decode_utf8, text_format
from embedding_assets.lib.readers.records import Records, json_type, record_id_of

SUFFIXES = (".jsonl",)

# The longest line a record within the per-document cap can take: JSON may escape each character of
# the text as \uXXXX (6 bytes), plus room for the id and the other fields. A longer line is rejected
# by its length, found by scanning for the newline, before it is copied, decoded or parsed.
ESCAPED_BYTES_PER_CHAR = 6
LINE_SLACK_BYTES = 64 * 1024


def max_line_bytes(max_chars: int) -> int:
    return ESCAPED_BYTES_PER_CHAR * max_chars + LINE_SLACK_BYTES


@text_format
def read(file: LandedFile) -> Iterator[Document | Rejection]:
    data = file.data
    records = Records(file.relpath, "line", file.max_chars)
    line_cap = max_line_bytes(file.max_chars)
    start, end_of_data, line_no = 0, len(data), 0
    if data[:3] == UTF8_BOM:
        start = 3
    while start < end_of_data:
        end = data.find(b"\n", start)
        if end == -1:
            end = end_of_data
        line_no += 1
        if end - start > line_cap:
            size, start = end - start, end + 1
            reason = (
                f"record is {size:,} bytes on one line, over the {line_cap:,}-byte limit for one record "
                f"(the {file.max_chars:,}-character cap per document, EMBEDDING_MAX_DOCUMENT_CHARS); not parsed"
            )
            yield records.reject(line_no, None, reason)
            continue
        line = bytes(data[start:end])
        start = end + 1
        if not line.strip():
            continue
        text_line, flags = decode_utf8(line)
        try:
            obj = json.loads(text_line)
        except (ValueError, RecursionError) as exc:
            yield records.reject(line_no, None, f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield records.reject(line_no, None, f"record must be a JSON object, got {json_type(obj)}")
            continue
        if "id" not in obj:
            yield records.reject(line_no, None, "missing required field 'id'")
            continue
        if "text" not in obj:
            record_id, problem = record_id_of(obj["id"])
            if problem is not None:
                yield records.reject(line_no, None, problem)
            else:
                yield records.reject(line_no, record_id, "missing required field 'text'")
            continue
        yield records.build(line_no, obj["id"], None, obj["text"], flags)
