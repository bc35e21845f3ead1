"""Read one landed batch folder into documents and rejections.

A batch is a folder of text files (.txt, .md, .rst, .html, .htm), record files (.jsonl,
.parquet), and any of those gzip-compressed (.gz). `read_batch` walks it in sorted order and
yields, per file, either `Document`s or `Rejection`s; it never raises for a bad file, so one bad
file never stops the batch. The input is untrusted: links are never followed out of the batch,
no file is read past `max_file_bytes` (after decompression), and every text and id is cleaned
(no lone surrogates, no NUL) and NFC-normalized.

Record identifiers in `Rejection.record`: the record's id when it has a valid one, else
'line N' (.jsonl, 1-based line number) or 'row N' (.parquet, 1-based row number).

Storage access is two small functions, `_list_entries` (list the files) and `_read_capped`
(open one file's bytes under the cap), so object storage can later sit behind them.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import stat
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "SUPPORTED_SUFFIXES",
    "Document",
    "Rejection",
    "list_batch_files",
    "read_batch",
]

DEFAULT_MAX_FILE_BYTES = 256 * 2**20
SUPPORTED_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm", ".jsonl", ".parquet")
_PLAIN_SUFFIXES = frozenset({".txt", ".md", ".rst"})
_HTML_SUFFIXES = frozenset({".html", ".htm"})

_CHUNK = 1 << 20
_SNIFF_BYTES = 8192
_BINARY_CONTROL_SHARE = 0.30
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f") + b"\x7f"
_UTF8_BOM = b"\xef\xbb\xbf"
_SURROGATES = re.compile("[\ud800-\udfff]")
_PARQUET_BATCH_ROWS = 1024

_SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES) + " (each optionally gzip-compressed as .gz)"
_EMPTY = "empty document (no text after decoding)"


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


class _Rejected(Exception):
    """Raised inside this module to turn a whole file into one Rejection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Entry:
    relpath: str  # NFC, '/'-separated: what Document.source and Rejection.source carry
    path: str  # what _read_capped opens: the target itself for a link inside the batch
    problem: str | None = None


def read_batch(
    batch_dir: str | os.PathLike[str], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Iterator[Document | Rejection]:
    """Yield the documents and rejections of one batch folder, file by file in sorted order.

    Raises FileNotFoundError / NotADirectoryError right away (not on first iteration) when
    `batch_dir` itself is missing or not a folder; bad files only ever become Rejections.
    """
    root = _check_root(batch_dir)
    if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be a positive integer, got {max_file_bytes!r}")
    return _iter_batch(root, max_file_bytes)


def list_batch_files(batch_dir: str | os.PathLike[str]) -> list[str]:
    """The relative paths read_batch considers (hidden names excluded), sorted, '/'-separated."""
    return [entry.relpath for entry in _list_entries(_check_root(batch_dir))]


def _iter_batch(root: str, cap: int) -> Iterator[Document | Rejection]:
    entries = _list_entries(root)
    file_paths = frozenset(entry.relpath for entry in entries)
    for entry in entries:
        try:
            yield from _read_entry(entry, cap, file_paths)
        except Exception as exc:  # noqa: BLE001
            # Untrusted input can reach corners of the parsers we did not foresee; one such
            # file must not end the batch, and the reason still tells a person where to look.
            reason = f"unexpected error while reading the file: {type(exc).__name__}: {exc}"
            yield Rejection(entry.relpath, None, reason)


def _check_root(batch_dir: str | os.PathLike[str]) -> str:
    root = os.fsdecode(os.fspath(batch_dir))
    if not stat.S_ISDIR(os.stat(root).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)
    return root


# --- storage: list files, read one file's bytes under a cap -------------------------------------


def _list_entries(root: str) -> list[_Entry]:
    """Every non-hidden file under root, sorted by NFC relative path, with any problem noted."""
    root_real = os.path.realpath(root)
    found: list[tuple[str, str, _Entry]] = []
    stack = [("", root)]
    while stack:
        rel_dir, dir_path = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                children = list(it)
        except OSError as exc:
            shown = _shown_name(rel_dir) or "."
            found.append((shown, rel_dir, _Entry(shown, dir_path, _os_reason("cannot list folder", exc))))
            continue
        for child in children:
            if child.name.startswith((".", "_")):
                continue
            raw_rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            shown = _shown_name(raw_rel)
            entry = _classify_child(child.path, shown, root_real)
            if entry is None:
                stack.append((raw_rel, child.path))
            else:
                found.append((shown, raw_rel, entry))
    found.sort(key=lambda item: (item[0], item[1]))
    entries: list[_Entry] = []
    seen: set[str] = set()
    for shown, _raw, entry in found:
        if shown in seen and entry.problem is None:
            entry = replace(
                entry,
                problem="another file has the same name after Unicode (NFC) normalization; rename one of them",
            )
        seen.add(shown)
        entries.append(entry)
    return entries


def _classify_child(path: str, shown: str, root_real: str) -> _Entry | None:
    """An entry for a file, link or oddity; None for a real folder to descend into."""
    name = os.path.basename(path)
    if _SURROGATES.search(name):
        # os.scandir hands undecodable bytes back as lone surrogates (surrogateescape).
        return _Entry(shown, path, "file name is not valid UTF-8; rename it")
    try:
        st = os.lstat(path)
    except OSError as exc:
        return _Entry(shown, path, _os_reason("cannot read file information", exc))
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISREG(st.st_mode):
        return _Entry(shown, path)
    if stat.S_ISLNK(st.st_mode):
        return _classify_link(path, shown, root_real)
    return _Entry(shown, path, f"not a regular file ({_file_kind(st.st_mode)})")


def _classify_link(path: str, shown: str, root_real: str) -> _Entry:
    # Containment is decided before the target is touched, so a rejection never tells
    # whether some path outside the batch exists.
    target = os.path.realpath(path)
    if os.path.commonpath([root_real, target]) != root_real:
        return _Entry(shown, path, "symbolic link points outside the batch folder")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return _Entry(shown, path, "broken symbolic link (its target does not exist)")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _Entry(shown, path, "symbolic link loop (following it never reaches a file)")
        return _Entry(shown, path, _os_reason("cannot follow symbolic link", exc))
    if stat.S_ISDIR(st.st_mode):
        # Following folder links invites cycles and reads the same files twice; the target
        # folder is inside the batch and is read under its own name anyway.
        reason = "symbolic link to a folder is not followed; its target is read under its own path"
        return _Entry(shown, path, reason)
    if not stat.S_ISREG(st.st_mode):
        return _Entry(shown, path, f"symbolic link to a non-regular file ({_file_kind(st.st_mode)})")
    return _Entry(shown, target)


def _read_capped(entry: _Entry, cap: int, gzipped: bool) -> bytes | bytearray:
    """The file's content (decompressed for .gz), at most `cap` bytes, else _Rejected."""
    # O_NOFOLLOW: the path was checked at listing time; a link swapped in since must not be
    # followed. O_NONBLOCK: a FIFO swapped in must not block the open.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(entry.path, flags)
    except OSError as exc:
        raise _Rejected(_os_reason("cannot open file", exc)) from None
    with open(fd, "rb") as raw:
        try:
            st = os.fstat(raw.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _Rejected(f"not a regular file ({_file_kind(st.st_mode)})")
            if st.st_size > cap:
                raise _Rejected(_too_big(st.st_size, cap))
            if gzipped:
                return _gunzip_capped(raw, cap)
            data = raw.read(cap + 1)
        except OSError as exc:
            raise _Rejected(_os_reason("cannot read file", exc)) from None
    if len(data) > cap:
        raise _Rejected(_too_big(len(data), cap))
    return data


def _gunzip_capped(raw, cap: int) -> bytearray:
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
                    raise _Rejected(
                        f"decompressed size exceeds the {_format_cap(cap)} cap (possible decompression bomb)"
                    )
    except EOFError as exc:
        raise _Rejected(f"truncated gzip stream: {exc}") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _Rejected(f"corrupt gzip stream: {exc}") from None


# --- per file --------------------------------------------------------------------------------------


def _read_entry(entry: _Entry, cap: int, file_paths: frozenset[str]) -> Iterator[Document | Rejection]:
    if entry.problem is not None:
        yield Rejection(entry.relpath, None, entry.problem)
        return
    kind, gzipped, problem = _file_type(entry.relpath)
    if problem is not None:
        yield Rejection(entry.relpath, None, problem)
        return
    try:
        data = _read_capped(entry, cap, gzipped)
    except _Rejected as rejected:
        yield Rejection(entry.relpath, None, rejected.reason)
        return

    if kind == ".parquet":
        yield from _parquet_records(entry.relpath, data, cap, file_paths)
        return
    binary = _binary_reason(data)
    if binary is not None:
        yield Rejection(entry.relpath, None, binary)
        return
    if kind == ".jsonl":
        yield from _jsonl_records(entry.relpath, data, file_paths)
        return

    text, flags = _decode_utf8(data)
    del data
    if kind in _HTML_SUFFIXES:
        try:
            text = _html_to_text(text)
        except Exception as exc:  # noqa: BLE001
            yield Rejection(entry.relpath, None, f"could not extract text from HTML: {exc}")
            return
    yield _finish(entry.relpath, entry.relpath, None, text, flags)


def _file_type(relpath: str) -> tuple[str, bool, str | None]:
    """(suffix, gzipped, problem) for a path; problem names an unsupported type."""
    name = relpath.rsplit("/", 1)[-1].lower()
    gzipped = name.endswith(".gz")
    inner = name[:-3] if gzipped else name
    suffix = os.path.splitext(inner)[1]
    if suffix in SUPPORTED_SUFFIXES:
        return suffix, gzipped, None
    shown = (suffix + ".gz" if suffix else ".gz") if gzipped else suffix
    if not shown:
        return "", gzipped, f"unsupported file type (the name has no suffix); supported: {_SUPPORTED_TEXT}"
    return "", gzipped, f"unsupported file type '{shown}'; supported: {_SUPPORTED_TEXT}"


def _binary_reason(data: bytes | bytearray) -> str | None:
    head = bytes(data[:_SNIFF_BYTES])
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "binary file (not text): it looks like UTF-16 or UTF-32; re-encode it as UTF-8"
    if b"\x00" in head:
        return "binary file (not text): it contains NUL bytes"
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if head and controls > _BINARY_CONTROL_SHARE * len(head):
        return "binary file (not text): more than 30% of its first 8 KiB are control characters"
    return None


def _decode_utf8(data: bytes | bytearray) -> tuple[str, list[str]]:
    view = memoryview(data)
    if view[:3] == _UTF8_BOM:
        view = view[3:]
    try:
        return str(view, "utf-8"), []
    except UnicodeDecodeError:
        return str(view, "utf-8", "replace"), ["invalid-utf8-replaced"]


def _finish(doc_id: str, source: str, record: str | None, text: str, flags: list[str]) -> Document | Rejection:
    """Clean and normalize a text into a Document, or reject it as empty."""
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
        flags.append("surrogates-replaced")
    if "\x00" in text:
        text = text.replace("\x00", "")
        flags.append("nul-removed")
    text = _nfc(text)
    if not text or text.isspace():
        return Rejection(source, record, _EMPTY)
    encoded = text.encode("utf-8")
    return Document(
        doc_id=doc_id,
        source=source,
        text=text,
        content_hash=hashlib.sha256(encoded).hexdigest(),
        size_bytes=len(encoded),
        flags=",".join(dict.fromkeys(flags)),
    )


# --- record files ----------------------------------------------------------------------------------


class _Records:
    """Per-file record bookkeeping shared by .jsonl and .parquet: ids, duplicates, doc_ids."""

    def __init__(self, relpath: str, file_paths: frozenset[str], unit: str) -> None:
        self.relpath = relpath
        self.file_paths = file_paths
        self.unit = unit  # 'line' or 'row'
        self.first_seen: dict[str, int] = {}

    def reject(self, where: int, record_id: str | None, reason: str) -> Rejection:
        """A record rejection; when the id names the record, the reason says where it is."""
        if record_id is None:
            return Rejection(self.relpath, f"{self.unit} {where}", reason)
        return Rejection(self.relpath, record_id, f"{reason} ({self.unit} {where})")

    def build(
        self, where: int, raw_id: object, id_problem: str | None, text: object, flags: list[str]
    ) -> Document | Rejection:
        if id_problem is not None:
            return self.reject(where, None, id_problem)
        record_id, problem = _record_id(raw_id)
        if problem is not None:
            return self.reject(where, None, problem)
        assert record_id is not None
        if text is None:
            return self.reject(where, record_id, "text is null")
        if isinstance(text, (bytes, bytearray)):
            text, text_flags = _decode_utf8(text)
            flags = flags + text_flags
        elif not isinstance(text, str):
            return self.reject(where, record_id, f"text must be a string, got {_json_type(text)}")
        first = self.first_seen.get(record_id)
        if first is not None:
            place = "on line" if self.unit == "line" else "in row"
            return Rejection(
                self.relpath, record_id, f"duplicate id '{record_id}' {place} {where} (first seen {place} {first})"
            )
        doc_id = f"{self.relpath}#{record_id}"
        if doc_id in self.file_paths:
            reason = f"doc_id '{doc_id}' is also the path of a file in the batch; rename the file or the id"
            return self.reject(where, record_id, reason)
        result = _finish(doc_id, self.relpath, record_id, text, flags)
        if isinstance(result, Document):
            self.first_seen[record_id] = where
        else:
            result = replace(result, reason=f"{result.reason} ({self.unit} {where})")
        return result


def _record_id(value: object) -> tuple[str | None, str | None]:
    """(normalized id, problem) for a record's raw id value."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"id must be a string or an integer, got {_json_type(value)}"
    if isinstance(value, int):
        return str(value), None
    if _SURROGATES.search(value) or "\x00" in value:
        return None, "id contains a lone surrogate or a NUL character"
    if not value or value.isspace():
        return None, "id is empty"
    return _nfc(value), None


def _jsonl_records(
    relpath: str, data: bytes | bytearray, file_paths: frozenset[str]
) -> Iterator[Document | Rejection]:
    records = _Records(relpath, file_paths, "line")
    start, end_of_data, line_no = 0, len(data), 0
    if data[:3] == _UTF8_BOM:
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
        text_line, flags = _decode_utf8(line)
        try:
            obj = json.loads(text_line)
        except (ValueError, RecursionError) as exc:
            yield records.reject(line_no, None, f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield records.reject(line_no, None, f"record must be a JSON object, got {_json_type(obj)}")
            continue
        if "id" not in obj:
            yield records.reject(line_no, None, "missing required field 'id'")
            continue
        if "text" not in obj:
            record_id, problem = _record_id(obj["id"])
            if problem is not None:
                yield records.reject(line_no, None, problem)
            else:
                yield records.reject(line_no, record_id, "missing required field 'text'")
            continue
        yield records.build(line_no, obj["id"], None, obj["text"], flags)


def _parquet_records(
    relpath: str, data: bytes | bytearray, cap: int, file_paths: frozenset[str]
) -> Iterator[Document | Rejection]:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(pa.py_buffer(data)))
        schema = parquet.schema_arrow
        metadata = parquet.metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        yield Rejection(relpath, None, f"corrupt parquet file: {exc}")
        return
    problem = _parquet_schema_problem(schema)
    if problem is None:
        problem = _parquet_size_problem(metadata, cap)
    if problem is not None:
        yield Rejection(relpath, None, problem)
        return

    # Sizes in the metadata are written by whoever made the file (and dictionary pages make
    # them small anyway), so measure what really decodes before yielding any document: a file
    # is either read whole or rejected whole.
    try:
        problem = _parquet_decoded_size_problem(parquet, cap)
    except Exception as exc:  # noqa: BLE001
        problem = f"corrupt parquet file: {exc}"
    if problem is not None:
        yield Rejection(relpath, None, problem)
        return

    records = _Records(relpath, file_paths, "row")
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=["id", "text"], use_threads=False)
    row = 0
    while True:
        try:
            batch = next(batches)
            ids = _as_binary(batch.column("id")).to_pylist()
            texts = _as_binary(batch.column("text")).to_pylist()
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001
            yield Rejection(relpath, None, f"corrupt parquet file (stopped after row {row}): {exc}")
            return
        for raw_id, text in zip(ids, texts):
            row += 1
            id_problem = None
            if isinstance(raw_id, bytes):
                try:
                    raw_id = raw_id.decode("utf-8")
                except UnicodeDecodeError:
                    id_problem = "id is not valid UTF-8"
            elif raw_id is None:
                id_problem = "id is null"
            yield records.build(row, raw_id, id_problem, text, [])


def _parquet_decoded_size_problem(parquet: pq.ParquetFile, cap: int) -> str | None:
    size = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=["id", "text"], use_threads=False):
        size += batch.num_rows
        for name in ("id", "text"):
            column = _as_binary(batch.column(name))
            if _is_binary_type(column.type):
                size += pc.sum(pc.binary_length(column)).as_py() or 0
            else:
                size += 8 * len(column)
        if size > cap:
            return f"decompressed size exceeds the {_format_cap(cap)} cap (possible decompression bomb)"
    return None


def _parquet_schema_problem(schema: pa.Schema) -> str | None:
    names = schema.names
    missing = [name for name in ("id", "text") if name not in names]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        return f"missing required column(s) {listed}; found columns: {', '.join(names) or '(none)'}"
    for name in ("id", "text"):
        if names.count(name) > 1:
            return f"column '{name}' appears more than once"
    id_type = _value_type(schema.field("id").type)
    if not (pa.types.is_integer(id_type) or _is_string_type(id_type)):
        return f"column 'id' has type {id_type}; expected a string or integer type"
    text_type = _value_type(schema.field("text").type)
    if not (_is_string_type(text_type) or _is_binary_type(text_type)):
        return f"column 'text' has type {text_type}; expected a string type"
    return None


def _parquet_size_problem(metadata: pq.FileMetaData, cap: int) -> str | None:
    if metadata.num_rows > cap:
        return f"the file declares {metadata.num_rows} rows, more than the {_format_cap(cap)} cap allows"
    size = 0
    for group_index in range(metadata.num_row_groups):
        group = metadata.row_group(group_index)
        for column_index in range(group.num_columns):
            column = group.column(column_index)
            if column.path_in_schema in ("id", "text"):
                size += column.total_uncompressed_size
    if size > cap:
        return f"decompressed size exceeds the {_format_cap(cap)} cap (possible decompression bomb)"
    return None


def _as_binary(array: pa.Array) -> pa.Array:
    """A string column as binary (a zero-copy cast), so bad UTF-8 is ours to handle, not a raise."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string(array.type):
        return array.cast(pa.binary())
    if pa.types.is_large_string(array.type):
        return array.cast(pa.large_binary())
    if _is_string_type(array.type):
        return array.cast(pa.large_binary())
    return array


def _value_type(data_type: pa.DataType) -> pa.DataType:
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def _is_string_type(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)


def _is_binary_type(data_type: pa.DataType) -> bool:
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type)


# --- HTML ------------------------------------------------------------------------------------------

_SKIPPED_TAGS = frozenset({"script", "style", "template", "title"})
_HEAD_TAGS = frozenset({"base", "link", "meta", "noscript", "script", "style", "template", "title"})
_PARAGRAPH_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "details", "dialog", "div", "dl",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hgroup", "hr", "html", "legend", "main", "nav", "ol", "p", "pre", "section",
        "table", "ul",
    }
)
_LINE_TAGS = frozenset({"br", "caption", "dd", "dt", "li", "option", "summary", "tr"})
_CELL_TAGS = frozenset({"td", "th"})


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.in_head = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "head":
            self.in_head = True
        elif self.in_head and tag not in _HEAD_TAGS:
            # Browsers close <head> implicitly at the first body element.
            self.in_head = False
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self.in_head = False
        if tag in _SKIPPED_TAGS and self.skip_depth:
            self.skip_depth -= 1
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in _PARAGRAPH_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.in_head:
            if not data.strip():
                return
            self.in_head = False
        if self.pre_depth:
            self.parts.append(data.replace("\r\n", "\n").replace("\r", "\n"))
        else:
            self.parts.append(data.replace("\n", " ").replace("\r", " "))

    def _break(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self.parts.append("\n\n")
        elif tag in _LINE_TAGS:
            self.parts.append("\n")
        elif tag in _CELL_TAGS:
            self.parts.append(" ")

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).split("\n")]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip("\n")


def _html_to_text(markup: str) -> str:
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return parser.text()


# --- small helpers ---------------------------------------------------------------------------------


def _nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def _shown_name(raw_rel: str) -> str:
    """A relative path as data: valid UTF-8 (bad bytes become U+FFFD), NFC, '/'-separated."""
    if _SURROGATES.search(raw_rel):
        raw_rel = raw_rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _nfc(raw_rel.replace(os.sep, "/"))


def _os_reason(what: str, exc: OSError) -> str:
    return f"{what}: {exc.strerror or exc}"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "an unknown kind of file"


def _format_cap(cap: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if cap % size == 0:
            return f"{cap // size} {unit}"
    return f"{cap}-byte"


def _too_big(size: int, cap: int) -> str:
    return f"file is {size} bytes, over the {_format_cap(cap)} cap; split it into smaller files"


def _json_type(value: object) -> str:
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
