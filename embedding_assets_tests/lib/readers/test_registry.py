"""Reader choice: every supported suffix, plain and gzip-compressed, reaches its reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa

from embedding_assets.lib.readers import Document
from embedding_assets_tests.lib.readers.helpers import (
    HTML,
    HTML_TEXT,
    documents,
    jsonl,
    listed,
    parquet_bytes,
    read,
    rejections,
    sha,
    write,
)


def test_every_supported_type_plain_and_gzip(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    bodies = {".txt": "plain text", ".md": "# Title\n\nmarkdown *body*", ".rst": "Title\n=====\n\nrst body"}
    for suffix, body in bodies.items():
        write(batch / f"doc{suffix}", body)
        write(batch / f"doc{suffix}.gz", gzip.compress(body.encode()))
    write(batch / "page.html", HTML)
    write(batch / "page.htm.gz", gzip.compress(HTML.encode()))
    write(batch / "recs.jsonl", jsonl({"id": "a", "text": "alpha"}, {"id": 2, "text": "beta"}))
    write(batch / "recs.jsonl.gz", gzip.compress(jsonl({"id": "a", "text": "gamma"}).encode()))
    table = pa.table({"id": ["p1", "p2"], "text": ["parquet one", "parquet two"], "extra": [1, 2]})
    write(batch / "tab.parquet", parquet_bytes(table))
    write(batch / "tab.parquet.gz", gzip.compress(parquet_bytes(table)))

    items = read(batch)
    assert rejections(items) == []
    docs = documents(items)
    for suffix, body in bodies.items():
        assert docs[f"doc{suffix}"].text == body
        assert docs[f"doc{suffix}.gz"].text == body
        assert docs[f"doc{suffix}"].content_hash == docs[f"doc{suffix}.gz"].content_hash == sha(body)
    assert docs["page.html"].text == HTML_TEXT
    assert docs["page.htm.gz"].text == HTML_TEXT
    assert docs["recs.jsonl#a"].text == "alpha"
    assert docs["recs.jsonl#2"].text == "beta"
    assert docs["recs.jsonl.gz#a"].text == "gamma"
    assert docs["recs.jsonl.gz#a"].source == "recs.jsonl.gz"
    assert docs["tab.parquet#p1"].text == "parquet one"
    assert docs["tab.parquet.gz#p2"].text == "parquet two"
    assert set(docs) == {
        *(f"doc{s}" for s in bodies), *(f"doc{s}.gz" for s in bodies), "page.html", "page.htm.gz",
        "recs.jsonl#a", "recs.jsonl#2", "recs.jsonl.gz#a",
        "tab.parquet#p1", "tab.parquet#p2", "tab.parquet.gz#p1", "tab.parquet.gz#p2",
    }  # fmt: skip
    for doc in docs.values():
        assert doc.size_bytes == len(doc.text.encode("utf-8"))
        assert doc.content_hash == sha(doc.text)
        assert doc.flags == ""
    assert listed(batch) == sorted(listed(batch))
    sources = [item.source for item in items if isinstance(item, Document)]
    assert sources == sorted(sources)
