"""What record files (.jsonl, .parquet, .csv) share: ids, duplicates, doc_ids, and where a record is.

A record file holds many documents; each has an id, unique in its file, and its doc_id is
'<path>#<id>' with '%' and '#' of the path percent-encoded (`base.record_doc_id`), so it can never
equal a whole file's doc_id or another file's record's. A record identifier in `Rejection.record` is the record's id when it has a valid one,
else '<unit> N' (e.g. 'line 3' in a .jsonl file, 'row 3' in a .parquet or .csv file).
"""

from __future__ import annotations

from dataclasses import replace

from embedding_assets.lib.readers.base import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    Document,
    Rejection,
    decode_utf8,
    has_surrogates,
    nfc,
    record_doc_id,
    to_document,
)


class Records:
    """Per-file record bookkeeping: ids, duplicates, doc_ids."""

    def __init__(self, relpath: str, unit: str, max_chars: int = DEFAULT_MAX_DOCUMENT_CHARS) -> None:
        self.relpath = relpath
        self.unit = unit  # 'line' or 'row'
        self.max_chars = max_chars
        self.first_seen: dict[str, int] = {}

    def reject(self, where: int, record_id: str | None, reason: str) -> Rejection:
        """A record rejection; when the id names the record, the reason says where it is."""
        if record_id is None:
            return Rejection(self.relpath, f"{self.unit} {where}", reason)
        return Rejection(self.relpath, record_id, f"{reason} ({self.unit} {where})")

    def build(
        self, where: int, raw_id: object, id_problem: str | None, text: object, flags: list[str]
    ) -> Document | Rejection:
        """The record at `where` as a Document, or the Rejection that says why it is not one."""
        if id_problem is not None:
            return self.reject(where, None, id_problem)
        record_id, problem = record_id_of(raw_id)
        if problem is not None:
            return self.reject(where, None, problem)
        assert record_id is not None
        if text is None:
            return self.reject(where, record_id, "text is null")
        if isinstance(text, (bytes, bytearray)):
            text, text_flags = decode_utf8(text)
            flags = flags + text_flags
        elif not isinstance(text, str):
            return self.reject(where, record_id, f"text must be a string, got {json_type(text)}")
        first = self.first_seen.get(record_id)
        if first is not None:
            place = "on line" if self.unit == "line" else "in row"
            return Rejection(
                self.relpath, record_id, f"duplicate id '{record_id}' {place} {where} (first seen {place} {first})"
            )
        doc_id = record_doc_id(self.relpath, record_id)
        result = to_document(doc_id, self.relpath, record_id, text, flags, self.max_chars)
        if isinstance(result, Document):
            self.first_seen[record_id] = where
        else:
            result = replace(result, reason=f"{result.reason} ({self.unit} {where})")
        return result


def record_id_of(value: object) -> tuple[str | None, str | None]:
    """(normalized id, problem) for a record's raw id value."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"id must be a string or an integer, got {json_type(value)}"
    if isinstance(value, int):
        return str(value), None
    if has_surrogates(value) or "\x00" in value:
        return None, "id contains a lone surrogate or a NUL character"
    if not value or value.isspace():
        return None, "id is empty"
    return nfc(value), None


def columns_problem(names: list[str], required: tuple[str, ...] = ("id", "text"), optional: tuple[str, ...] = ()) -> str | None:
    """Why a table with these column names lacks a required column or repeats one it reads, or None."""
    missing = [name for name in required if name not in names]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        return f"missing required column(s) {listed}; found columns: {', '.join(names) or '(none)'}"
    for name in (*required, *optional):
        if names.count(name) > 1:
            return f"column '{name}' appears more than once"
    return None


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
