"""Shared helpers for the reader tests: write a batch, read it, pick out documents and rejections."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding_assets.lib.readers import Document, Rejection, read_batch
from embedding_assets.lib.readers.batch import check_root, list_entries


def read(batch: Path, **kwargs) -> list[Document | Rejection]:
    return list(read_batch(batch, **kwargs))


def documents(items) -> dict[str, Document]:
    out = {}
    for item in items:
        if isinstance(item, Document):
            assert item.doc_id not in out, f"doc_id {item.doc_id} yielded twice"
            out[item.doc_id] = item
    return out


def rejections(items) -> list[Rejection]:
    return [item for item in items if isinstance(item, Rejection)]


def rejection(items, source: str, record: str | None = None) -> Rejection:
    found = [r for r in rejections(items) if r.source == source and r.record == record]
    assert len(found) == 1, f"expected one rejection for {source!r}/{record!r}, got {found} among {rejections(items)}"
    return found[0]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def jsonl(*lines: object) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def listed(batch_dir: Path) -> list[str]:
    """The relative paths the batch walk considers, in the order read_batch reads them."""
    return [entry.relpath for entry in list_entries(check_root(batch_dir))]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


HTML = (
    "<!doctype html><html><head><title>Not shown</title><style>p { color: red }</style>"
    "<script>var hidden = 1;</script></head><body><h1>Fish &amp; Chips</h1>"
    "<p>First\n  paragraph</p><script>alert('no')</script><p>Second<br>line &eacute;</p>"
    "<ul><li>one</li><li>two</li></ul></body></html>"
)
HTML_TEXT = "Fish & Chips\n\nFirst paragraph\n\nSecond\nline é\n\none\ntwo"
