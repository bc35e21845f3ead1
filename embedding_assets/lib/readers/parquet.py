"""Parquet record files (.parquet): an 'id' column (string or integer) and a 'text' column (string).

Other columns are ignored. A file is either read whole or rejected whole when it would decode past
the cap; a rejected record is named by its id or by 'row N' (1-based).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding_assets.lib.readers.base import Document, LandedFile, Rejection, format_cap, over_cap_after_decoding
from embedding_assets.lib.readers.records import Records, columns_problem

SUFFIXES = (".parquet",)

_BATCH_ROWS = 1024


def read(file: LandedFile) -> Iterator[Document | Rejection]:
    relpath, cap = file.relpath, file.cap
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

    records = Records(relpath, file.file_paths, "row")
    batches = parquet.iter_batches(batch_size=_BATCH_ROWS, columns=["id", "text"], use_threads=False)
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


def _decoded_size_problem(parquet: pq.ParquetFile, cap: int) -> str | None:
    size = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=["id", "text"], use_threads=False):
        size += batch.num_rows
        for name in ("id", "text"):
            column = _as_binary(batch.column(name))
            if _is_binary_type(column.type):
                size += pc.sum(pc.binary_length(column)).as_py() or 0
            else:
                size += 8 * len(column)
        if size > cap:
            return over_cap_after_decoding(cap)
    return None


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
