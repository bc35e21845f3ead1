"""The lake as a catalog shows it: what each column means, and row counts from the Delta log.

No Dagster here. `columns(table, schema)` pairs each column of an Arrow schema (from the schema
module) with a readable type and its description; `row_counts(...)` reads the partition's and the
table's row counts from the `num_records` statistics of the Delta log's file actions, so reporting
them never scans data (a file written without statistics is counted by reading its `batch` column).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# table -> column -> what it holds. The column *types* come from the schema module.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "raw_documents": {
        "batch": "The landed batch (partition key): the folder or prefix the document came from.",
        "doc_id": "Stable id: the file's path inside the batch folder (% and # percent-encoded), or path#id for a record of a .jsonl, .csv or .parquet file.",
        "source": "The file the document was read from, relative to the batch folder.",
        "text": "The document's text, decoded as UTF-8 (invalid bytes replaced and flagged).",
        "content_hash": "Hash of the text: a changed document gets a new hash.",
        "size_bytes": "Size of the document's text in bytes.",
        "flags": "Comma-separated repairs made while reading (e.g. invalid UTF-8 or NUL characters replaced); empty when clean.",
        "ingested_at": "When this partition was ingested (UTC).",
    },
    "rejected_documents": {
        "batch": "The landed batch (partition key).",
        "source": "The file that could not be read, relative to the batch folder.",
        "record": "Where in a .jsonl, .csv or .parquet file: the record's id, or its line or row; empty for a whole file.",
        "reason": "Why it was rejected (empty, binary, broken JSON, missing text, over the size cap, ...).",
        "rejected_at": "When this partition was ingested (UTC).",
    },
    "chunks": {
        "batch": "The landed batch (partition key).",
        "doc_id": "The document the chunk belongs to (raw_documents.doc_id).",
        "chunk_id": "Stable id: hash of (doc_id, chunk_index, text hash).",
        "chunk_index": "Position of the chunk in its document, from 0.",
        "text": "The chunk's text: at most the model's max sequence length in tokens, special tokens included.",
        "text_hash": "Hash of the chunk's text: identical texts share it and are embedded once.",
        "n_tokens": "Tokens in the chunk under the model's tokenizer, special tokens included.",
        "char_start": "Offset of the chunk's first character in the document's text.",
        "char_end": "Offset just past the chunk's last character in the document's text.",
        "input_ids": "The chunk's token ids as the model reads them (special tokens included, truncated to its max sequence length), made while chunking; null in rows written before chunks stored ids.",
        "tokenizer": "Fingerprint of the tokenizer that produced input_ids (null where input_ids is).",
    },
    "length_buckets": {
        "batch": "The landed batch (partition key).",
        "chunk_id": "The chunk (chunks.chunk_id).",
        "doc_id": "The chunk's document.",
        "text_hash": "Hash of the chunk's text.",
        "position": "Embedding order: sorted by length, identical texts adjacent.",
        "bucket": "Length bucket: ceil(n_tokens / 16).",
        "n_tokens": "Number of token ids.",
        "input_ids": "The token ids the model reads, special tokens included (tokenized once, on CPU).",
        "tokenizer": "Fingerprint of the tokenizer that produced input_ids.",
    },
    "embeddings": {
        "batch": "The landed batch (partition key).",
        "doc_id": "The chunk's document.",
        "chunk_id": "The chunk (chunks.chunk_id): exactly one vector per current chunk.",
        "text_hash": "Hash of the chunk's text: a text is embedded once per model fingerprint.",
        "embedding": "The vector: float32, the model's dimension, unit length where the model normalizes.",
        "model": "Fingerprint of everything that changes a vector: model@revision/pooling/norm/max length/precision/backend.",
        "embedded_at": "When the vector was computed (UTC); kept when a vector is reused.",
    },
    "document_embeddings": {
        "batch": "The landed batch (partition key).",
        "doc_id": "The document (raw_documents.doc_id).",
        "n_chunks": "How many chunk vectors were averaged.",
        "embedding": "Token-weighted mean of the document's chunk vectors, re-normalized (float32).",
        "model": "Fingerprint of the model that produced the chunk vectors.",
    },
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str


def type_name(data_type: pa.DataType) -> str:
    """A short, readable type: string, int64, float32[384], list<int32>, timestamp[us, UTC]."""
    if pa.types.is_fixed_size_list(data_type):
        size = data_type.list_size
        return f"{type_name(data_type.value_type)}[{size if size else 'dimension'}]"
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"list<{type_name(data_type.value_type)}>"
    if pa.types.is_large_string(data_type) or pa.types.is_string(data_type):
        return "string"
    if pa.types.is_floating(data_type):
        return f"float{data_type.bit_width}"
    if pa.types.is_timestamp(data_type):
        return f"timestamp[{data_type.unit}, {data_type.tz}]" if data_type.tz else f"timestamp[{data_type.unit}]"
    return str(data_type)


def columns(table: str, schema: pa.Schema) -> list[Column]:
    """Every column of `schema` with its readable type and its description for `table`."""
    described = DESCRIPTIONS.get(table, {})
    return [Column(field.name, type_name(field.type), described.get(field.name, "")) for field in schema]


def row_counts(lake_root: str, table: str, batch: str) -> tuple[int, int] | None:
    """(rows in the partition, rows in the whole table) from the Delta log; None if no table."""
    from deltalake.exceptions import TableNotFoundError

    from embedding_assets.lib import lake

    try:
        delta_table = lake.open_table(lake_root, table)
    except TableNotFoundError:
        return None
    actions = pa.table(delta_table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0, 0
    records = actions.column("num_records").to_pylist()
    batches = actions.column("partition.batch").to_pylist()
    if any(n is None for n in records):  # a file without statistics: count what the log cannot say
        counted = lake.read_table(lake_root, table, columns=["batch"])
        values = counted.column("batch").to_pylist() if counted is not None else []
        return sum(1 for b in values if b == batch), len(values)
    return sum(n for n, b in zip(records, batches) if b == batch), sum(records)
