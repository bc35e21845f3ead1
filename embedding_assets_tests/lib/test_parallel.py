"""Tests for embedding_assets.lib.parallel: ordered, bounded, byte-identical to serial."""

from __future__ import annotations

import functools
import json
import pydoc

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from embedding_assets.lib import parallel
from embedding_assets.lib.chunking import Chunker, chunk_id, text_hash
from embedding_assets.lib.encoders import load_tokenizer


@functools.cache
def info():
    return load_tokenizer("bundled")


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


_offset = 0


def _set_offset(value: int) -> None:
    global _offset
    _offset = value


def _add_offset(x: int) -> int:
    return x + _offset


@functools.cache
def documents() -> pa.RecordBatch:
    base = pydoc.render_doc(json, renderer=pydoc.plaintext)
    texts = [base[i * 700 : i * 700 + 300 + 97 * i] for i in range(30)] + ["", "   \n", "日本語のテキストです。これは二番目の文です。", "한국어를 배우는 것은 재미있습니다 " * 20]
    doc_ids = [f"doc-{i}" for i in range(len(texts))]
    return pa.record_batch([pa.array(doc_ids), pa.array(texts, pa.large_string())], names=["doc_id", "text"])


def _slices(batch: pa.RecordBatch, size: int):
    for start in range(0, batch.num_rows, size):
        yield batch.slice(start, size)


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_keeps_input_order(workers):
    assert list(parallel.ordered_map(_square, range(25), workers, max_in_flight=3)) == [x * x for x in range(25)]


@pytest.mark.parametrize("workers", [1, 2])
def test_initializer_runs_in_each_worker(workers):
    out = list(parallel.ordered_map(_add_offset, range(6), workers, initializer=_set_offset, initargs=(100,)))
    assert out == [100 + x for x in range(6)]


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_exception_surfaces_with_its_message(workers):
    results = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for r in parallel.ordered_map(_fail_on_three, range(10), workers):
            results.append(r)
    assert results == [0, 1, 2]


@pytest.mark.parametrize("workers,max_in_flight", [(1, None), (2, 2), (2, 5)])
def test_input_is_consumed_lazily(workers, max_in_flight):
    consumed = []

    def items():
        for i in range(1000):
            consumed.append(i)
            yield i

    results = parallel.ordered_map(_square, items(), workers, max_in_flight=max_in_flight)
    assert consumed == []  # nothing starts before the first result is asked for
    got = [next(results) for _ in range(3)]
    assert got == [0, 1, 4]
    bound = 3 + (max_in_flight or 0)
    assert len(consumed) <= bound, f"{len(consumed)} items read for 3 results"
    results.close()
    assert len(consumed) <= bound


def _serial_chunks(max_tokens: int, overlap: int) -> list[dict]:
    c = Chunker(info().tokenizer, max_tokens, overlap=overlap)
    rows = []
    batch = documents()
    for doc_id, text in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist()):
        for ch in c.split(text):
            h = text_hash(ch.text)
            rows.append({
                "doc_id": doc_id, "chunk_id": chunk_id(doc_id, ch.chunk_index, h), "chunk_index": ch.chunk_index,
                "text": ch.text, "text_hash": h, "n_tokens": ch.n_tokens, "char_start": ch.char_start, "char_end": ch.char_end,
            })
    return rows


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("max_tokens,overlap", [(32, 4), (256, 32)])
@pytest.mark.parametrize("with_ids", [False, True])
def test_parallel_chunking_equals_serial_chunking(workers, max_tokens, overlap, with_ids):
    initargs = (info().tokenizer.to_str(), max_tokens, overlap)
    if with_ids:
        initargs += (None, info().fingerprint, info().max_seq_length)
    results = list(parallel.ordered_map(
        parallel.chunk_record_batch, _slices(documents(), 7), workers,
        initializer=parallel.init_chunker, initargs=initargs,
    ))
    table = pa.Table.from_batches([r.chunks for r in results], schema=parallel.CHUNK_COLUMNS)
    assert table.drop_columns(["input_ids", "tokenizer"]).to_pylist() == _serial_chunks(max_tokens, overlap)
    if with_ids:
        # Each chunk's ids are what tokenizing its text for the model gives.
        assert table.column("input_ids").to_pylist() == info().encode_batch(table.column("text").to_pylist())
        assert table.column("tokenizer").to_pylist() == [info().fingerprint] * table.num_rows
    else:
        assert table.column("input_ids").null_count == table.column("tokenizer").null_count == table.num_rows
    assert sum(r.documents for r in results) == documents().num_rows
    assert [d for r in results for d in r.without_tokens] == ["doc-30", "doc-31"]
    assert all(r.refused == [] for r in results)
    # Byte for byte: the same Arrow data whatever the number of workers.
    inline = list(parallel.ordered_map(
        parallel.chunk_record_batch, _slices(documents(), 7), 1,
        initializer=parallel.init_chunker, initargs=initargs,
    ))
    assert all(a.chunks.equals(b.chunks) for a, b in zip(results, inline))


def test_chunk_documents_refuses_oversized_documents_and_keeps_ids():
    parallel.init_chunker(info().tokenizer.to_str(), 64, 8, max_document_chars=2000, fingerprint="tok-x", max_length=info().max_seq_length)
    batch = documents()
    out = parallel.chunk_record_batch(batch)
    texts = batch.column("text").to_pylist()
    too_big = [f"doc-{i}" for i, t in enumerate(texts) if len(t) > 2000]
    assert too_big and [d for d, _ in out.refused] == too_big
    assert all("EMBEDDING_MAX_DOCUMENT_CHARS" in reason for _, reason in out.refused)
    assert not set(out.chunks.column("doc_id").to_pylist()) & set(too_big)
    ids = out.chunks.column("input_ids")
    assert ids.type == pa.large_list(pa.int32())
    assert [len(x) for x in ids.to_pylist()] == out.chunks.column("n_tokens").to_pylist()
    assert ids.to_pylist() == info().encode_batch(out.chunks.column("text").to_pylist())
    assert set(out.chunks.column("tokenizer").to_pylist()) == {"tok-x"}


def test_stored_ids_are_truncated_like_the_models_tokenizer():
    """A chunk longer than the model's max sequence length keeps the ids the model reads:
    truncated, as tokenizing its text for the model gives."""
    parallel.init_chunker(info().tokenizer.to_str(), 64, 8, fingerprint="tok-x", max_length=20)
    out = parallel.chunk_documents(["d"], ["word " * 100])
    ids = out.chunks.column("input_ids").to_pylist()
    counts = out.chunks.column("n_tokens").to_pylist()
    assert max(counts) > 20 and all(len(x) == min(n, 20) for x, n in zip(ids, counts))
    model = Tokenizer.from_str(info().tokenizer.to_str())
    model.enable_truncation(20)
    assert ids == [model.encode(text, add_special_tokens=True).ids for text in out.chunks.column("text").to_pylist()]


def test_chunk_documents_needs_its_initializer(monkeypatch):
    monkeypatch.setattr(parallel, "_chunker", None)
    with pytest.raises(RuntimeError, match="init_chunker"):
        parallel.chunk_documents(["a"], ["text"])


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_tokenizing_equals_the_models_encoding(workers):
    texts = _serial_chunks(32, 4)
    texts = [r["text"] for r in texts] + ["", "x " * 400]  # the last one is truncated
    batches = [pa.array(texts[i : i + 50], pa.large_string()) for i in range(0, len(texts), 50)]
    results = list(parallel.ordered_map(
        parallel.tokenize_texts, batches, workers,
        initializer=parallel.init_tokenizer, initargs=(info().tokenizer.to_str(), info().max_seq_length),
    ))
    expected = info().encode_batch(texts)
    lengths = np.concatenate([r.lengths for r in results])
    ids = np.concatenate([r.ids for r in results])
    assert lengths.dtype == np.int32 and ids.dtype == np.int32
    assert lengths.tolist() == [len(x) for x in expected]
    assert ids.tolist() == [t for x in expected for t in x]
    assert lengths[-1] == info().max_seq_length


def test_prefetched_keeps_order_raises_in_turn_and_stops_with_its_consumer():
    import threading

    assert list(parallel.prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("bad item")

    got = []
    with pytest.raises(ValueError, match="bad item"):
        for x in parallel.prefetched(failing()):
            got.append(x)
    assert got == [1, 2]

    closed = threading.Event()
    produced = []

    def endless():
        try:
            for i in range(10**9):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = parallel.prefetched(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert closed.wait(5), "the producer's generator is closed when the consumer stops"
    assert len(produced) <= 3 + 2 + 1
