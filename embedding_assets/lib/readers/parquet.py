"""Parquet record files (.parquet): an 'id' column (string or integer) and a 'text' column (string).

Other columns are ignored. A file is either read whole or rejected whole when it would decode past
the cap; a rejected record is named by its id or by 'row N' (1-based).

Decoding is capped before anything large is allocated. The sizes the footer declares (rows, and
the uncompressed size of each column chunk) are checked first. Then the string columns are read
dictionary-encoded (`read_dictionary`), in batches of _BATCH_ROWS rows: a batch then holds its row
indices and the distinct values, never one copy per row, so a small dictionary whose values
thousands of rows repeat (a dictionary bomb) cannot expand while being read. The decoded size of
each batch is the sum of its rows' value lengths, computed from the dictionary without expanding it,
and the file is rejected as soon as the running total passes the cap. Only then are documents
built, a slice of at most _SLICE_BYTES of decoded text at a time (or one row); a row whose text is
over the per-document cap is rejected without being expanded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding_assets.lib.readers.base import (
    MAX_UTF8_BYTES_PER_CHAR,
    Document,
    LandedFile,
    Rejection,
    format_cap,
    over_cap_after_decoding,
    over_document_cap,
)
from embedding_assets.lib.readers.records import Records, columns_problem, record_id_of

SUFFIXES = (".parquet",)

_BATCH_ROWS = 1024
_SLICE_BYTES = 8 << 20  # decoded text expanded at once when building documents (or one row)
_COLUMNS = ["id", "text"]


def read(file: LandedFile) -> Iterator[Document | Rejection]:
    relpath, cap, max_chars = file.relpath, file.cap, file.max_chars
    try:
        parquet = pq.ParquetFile(pa.BufferReader(pa.py_buffer(file.data)))
        schema = parquet.schema_arrow
        metadata = parquet.metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        yield Rejection(relpath, None, f"corrupt parquet file: {exc}")
        return
    problem = _schema_problem(schema)
    if problem is None:
        problem = _declared_size_problem(metadata, cap)
    if problem is not None:
        yield Rejection(relpath, None, problem)
        return
    strings = [name for name in _COLUMNS if not pa.types.is_integer(_value_type(schema.field(name).type))]
    parquet = pq.ParquetFile(pa.BufferReader(pa.py_buffer(file.data)), read_dictionary=strings)

    # Sizes in the metadata are written by whoever made the file (and dictionary pages make
    # them small anyway), so measure what really decodes before yielding any document: a file
    # is either read whole or rejected whole.
    try:
        problem = _decoded_size_problem(parquet, cap)
    except Exception as exc:  # noqa: BLE001
        problem = f"corrupt parquet file: {exc}"
    if problem is not None:
        yield Rejection(relpath, None, problem)
        return

    records = Records(relpath, "row", max_chars)
    batches = _batches(parquet)
    max_text_bytes = MAX_UTF8_BYTES_PER_CHAR * max_chars
    row = 0
    while True:
        try:
            batch = next(batches)
            id_column, text_column = batch.column("id"), batch.column("text")
            text_lengths = _lengths(text_column)
            too_long = text_lengths > max_text_bytes
            row_bytes = _lengths(id_column) + np.where(too_long, 0, text_lengths)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001
            yield Rejection(relpath, None, f"corrupt parquet file (stopped after row {row}): {exc}")
            return
        for begin, end in _slices(row_bytes):
            try:
                ids = _expand(id_column.slice(begin, end - begin)).to_pylist()
                texts = _expand(text_column.slice(begin, end - begin), skip=too_long[begin:end]).to_pylist()
            except Exception as exc:  # noqa: BLE001
                yield Rejection(relpath, None, f"corrupt parquet file (stopped after row {row}): {exc}")
                return
            for offset, (raw_id, text) in enumerate(zip(ids, texts)):
                row += 1
                id_problem = None
                if isinstance(raw_id, bytes):
                    try:
                        raw_id = raw_id.decode("utf-8")
                    except UnicodeDecodeError:
                        id_problem = "id is not valid UTF-8"
                elif raw_id is None:
                    id_problem = "id is null"
                if too_long[begin + offset]:
                    record_id = None if id_problem is not None else record_id_of(raw_id)[0]
                    size = int(text_lengths[begin + offset])
                    yield records.reject(row, record_id, over_document_cap(size, max_chars, "bytes"))
                    continue
                yield records.build(row, raw_id, id_problem, text, [])
            del ids, texts


def _batches(parquet: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    return parquet.iter_batches(batch_size=_BATCH_ROWS, columns=_COLUMNS, use_threads=False)


def _decoded_size_problem(parquet: pq.ParquetFile, cap: int) -> str | None:
    size, rows = 0, 0
    for batch in _batches(parquet):
        rows += batch.num_rows
        size += batch.num_rows
        for name in _COLUMNS:
            size += int(_lengths(batch.column(name)).sum())
        if size > cap:
            return (
                f"decoded size of columns 'id' and 'text' exceeds the {format_cap(cap)} cap by row {rows} "
                "(values repeated from a small dictionary expand far beyond the file's size: possible "
                "decompression bomb); not expanded"
            )
    return None


def _lengths(column: pa.Array) -> np.ndarray:
    """Each row's decoded size in bytes (int64), from the dictionary without expanding it; 8 per
    integer; 0 for a null."""
    if pa.types.is_dictionary(column.type):
        value_lengths = pc.binary_length(_as_binary(column.dictionary)).fill_null(0)
        indices = column.indices.fill_null(0) if column.null_count else column.indices
        lengths = np.asarray(value_lengths.to_numpy(zero_copy_only=False), dtype=np.int64)[
            np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        ] if len(value_lengths) else np.zeros(len(column), dtype=np.int64)
        if column.null_count:
            lengths[np.asarray(column.is_null().to_numpy(zero_copy_only=False))] = 0
        return lengths
    column = _as_binary(column)
    if _is_binary_type(column.type):
        return np.asarray(pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.full(len(column), 8, dtype=np.int64)


def _slices(row_bytes: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges of at most _SLICE_BYTES decoded bytes each (or one row)."""
    begin, n = 0, len(row_bytes)
    while begin < n:
        end, total = begin + 1, int(row_bytes[begin])
        while end < n and total + int(row_bytes[end]) <= _SLICE_BYTES:
            total += int(row_bytes[end])
            end += 1
        yield begin, end
        begin = end


def _expand(column: pa.Array, skip: np.ndarray | None = None) -> pa.Array:
    """A slice of a column as plain values (binary for strings); rows in `skip` become null unexpanded."""
    if pa.types.is_dictionary(column.type):
        indices = column.indices
        if skip is not None and skip.any():
            indices = pc.if_else(pa.array(skip), pa.nulls(len(indices), indices.type), indices)
        return pc.take(_as_binary(column.dictionary), indices)
    return _as_binary(column)


def _schema_problem(schema: pa.Schema) -> str | None:
    problem = columns_problem(schema.names)
    if problem is not None:
        return problem
    id_type = _value_type(schema.field("id").type)
    if not (pa.types.is_integer(id_type) or _is_string_type(id_type)):
        return f"column 'id' has type {id_type}; expected a string or integer type"
    text_type = _value_type(schema.field("text").type)
    if not (_is_string_type(text_type) or _is_binary_type(text_type)):
        return f"column 'text' has type {text_type}; expected a string type"
    return None


def _declared_size_problem(metadata: pq.FileMetaData, cap: int) -> str | None:
    if metadata.num_rows > cap:
        return f"the file declares {metadata.num_rows} rows, more than the {format_cap(cap)} cap allows"
    size = 0
    for group_index in range(metadata.num_row_groups):
        group = metadata.row_group(group_index)
        for column_index in range(group.num_columns):
            column = group.column(column_index)
            if column.path_in_schema in ("id", "text"):
                size += column.total_uncompressed_size
    if size > cap:
        return over_cap_after_decoding(cap)
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
