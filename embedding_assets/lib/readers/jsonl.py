"""JSON Lines record files (.jsonl): one JSON object per line, with an 'id' and a 'text' field.

Blank lines are skipped; a rejected record is named by its id or by 'line N' (1-based).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from embedding_assets.lib.readers.base import UTF8_BOM, Document, LandedFile, Rejection, decode_utf8, text_format
from embedding_assets.lib.readers.records import Records, json_type, record_id_of

SUFFIXES = (".jsonl",)


@text_format
def read(file: LandedFile) -> Iterator[Document | Rejection]:
    data = file.data
    records = Records(file.relpath, file.file_paths, "line")
    start, end_of_data, line_no = 0, len(data), 0
    if data[:3] == UTF8_BOM:
        start = 3
    while start < end_of_data:
        end = data.find(b"\n", start)
        if end == -1:
            end = end_of_data
        line = bytes(data[start:end])
        start = end + 1
        line_no += 1
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
