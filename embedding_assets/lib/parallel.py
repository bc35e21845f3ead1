"""Parallel CPU prep: an ordered map over a process pool, and the work it runs.

`ordered_map` hands items (record batches of documents or chunk texts) to worker processes and
yields the results in input order, with a bounded number of items in flight: it reads its input
only as fast as results are consumed, so a partition never sits in memory at once. With one worker
it runs the same function inline, in this process, so serial and parallel runs share one code path
and give the same output.

Workers are started with "spawn" (or "forkserver"): no fork of a process whose threads (the
tokenizer's, Arrow's) may hold locks. Each worker builds its state once, in the initializer: a
`Chunker` (`init_chunker`) or a truncating tokenizer (`init_tokenizer`), from the tokenizer's JSON.

The work functions return numpy and Arrow values (int32 arrays, record batches), not Python lists
of ints, which are slow to pickle back from a worker.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import pickle
import sys
import queue
import tempfile
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from embedding_assets.lib.chunking import Chunker, chunk_id, text_hash
from embedding_assets.lib.lake.tables import CHUNKS_SCHEMA, constant_column

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    *,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    max_in_flight: int | None = None,
    context: str = "spawn",
) -> Iterator[R]:
    """`fn(item)` for every item, in input order, over `workers` processes.

    At most `max_in_flight` items (default: two per worker) are submitted and not yet yielded, so
    `items` is consumed lazily. `fn` and `initializer` must be top-level functions (picklable);
    the initializer runs once per worker process. With `workers <= 1` everything runs inline in
    this process (the initializer once, before the first item). An exception raised by `fn` in a
    worker is raised here, with its own type and message, when its result's turn comes; the items
    still in flight are cancelled and the pool is shut down.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    limit = max(1, max_in_flight if max_in_flight is not None else 2 * workers)
    # The initializer's arguments (a tokenizer's JSON is ~700 KB) reach each worker through a file:
    # "spawn" writes a worker's start-up data into a pipe that the worker reads, and a worker that
    # died before reading more than the pipe holds would block that write forever instead of
    # breaking the pool with an error.
    init_file = None
    if initializer is not None:
        init_file = tempfile.NamedTemporaryFile(prefix="embedding-assets-init-", suffix=".pickle", delete=False)
        with init_file:
            pickle.dump((initializer, initargs), init_file, protocol=pickle.HIGHEST_PROTOCOL)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(context),
        initializer=_initialize_from_file if init_file else None,
        initargs=(init_file.name,) if init_file else (),
    )
    pending: deque = deque()
    plain = fn.__module__ != "__main__" and getattr(initializer, "__module__", None) != "__main__"
    try:
        for item in items:
            with _without_main_script(plain):
                pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if init_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(init_file.name)


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced on a background thread at most `depth` items ahead of the consumer: the
    producer's Arrow and numpy work (decoding, sorting, merging; they release the GIL) overlaps the
    consumer's (encoding Parquet). An exception of the producer is raised here, in order; when the
    consumer stops early the producer stops too (its generator is closed on its own thread)."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = slots.get()
            if kind is _END:
                return
            if kind is _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        producer.join()


_ITEM, _END, _ERROR = object(), object(), object()


def _initialize_from_file(path: str) -> None:
    """A pool worker's initializer: the real one and its arguments, read from `path`."""
    with open(path, "rb") as handle:
        initializer, initargs = pickle.load(handle)
    initializer(*initargs)


@contextlib.contextmanager
def _without_main_script(active: bool):
    """Workers started meanwhile do not re-import this process's main script, as "spawn" does by
    default: under the Dagster CLI that would import all of Dagster into every worker (~150 MB and
    seconds of CPU each). Only when the work functions live in importable modules (`active`)."""
    main = sys.modules.get("__main__")
    if not active or main is None:
        yield
        return
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        main.__spec__ = None
        if "__file__" in saved:
            del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


# ---------------------------------------------------------------- chunks: documents -> chunks

# The chunks columns a worker returns (the stage adds the partition's `batch` column).
CHUNK_COLUMNS = pa.schema([f for f in CHUNKS_SCHEMA if f.name != "batch"])

_chunker: Chunker | None = None
# (fingerprint, max_length, truncating tokenizer) when the chunker keeps each chunk's ids.
_ids_of: tuple[str, int | None, Tokenizer | None] | None = None
_tokenizer: Tokenizer | None = None


class ChunkedDocuments(NamedTuple):
    chunks: pa.RecordBatch  # CHUNK_COLUMNS, documents in input order, chunks in document order
    documents: int  # documents read, the refused ones included
    without_tokens: list[str]  # doc_ids whose text holds nothing the tokenizer keeps
    refused: list[tuple[str, str]]  # (doc_id, reason): documents over the chunker's size limit


def init_chunker(
    tokenizer_json: str,
    max_tokens: int,
    overlap: int,
    max_document_chars: int | None = None,
    fingerprint: str | None = None,
    max_length: int | None = None,
) -> None:
    """Builds this process's Chunker (an `ordered_map` initializer). With the tokenizer's
    `fingerprint`, every chunk also gets its token ids (`input_ids`, truncated to `max_length`
    like `TokenizerInfo.encode_batch`) and the fingerprint (`tokenizer`); without, both are null."""
    global _chunker, _ids_of
    tokenizer = Tokenizer.from_str(tokenizer_json)
    _chunker = Chunker(
        tokenizer,
        max_tokens,
        overlap=overlap,
        max_document_chars=max_document_chars,
        keep_ids=fingerprint is not None,
    )
    _ids_of = None
    if fingerprint is not None:
        truncating = None
        if max_length is not None:
            truncating = Tokenizer.from_str(tokenizer_json)
            truncating.no_padding()
            truncating.enable_truncation(max_length)
        _ids_of = (fingerprint, max_length, truncating)


def chunk_documents(doc_ids: Sequence[str] | pa.Array | pa.ChunkedArray, texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> ChunkedDocuments:
    """Chunks documents with this process's Chunker (see `init_chunker`)."""
    chunker = _chunker
    if chunker is None:
        raise RuntimeError("chunk_documents needs init_chunker to have run in this process")
    doc_ids, texts = _values(doc_ids), _values(texts)
    out_doc, out_id, out_index, out_text, out_hash = [], [], [], [], []
    n_tokens, char_start, char_end = [], [], []
    keep = _ids_of is not None
    max_length, truncating = (_ids_of[1], _ids_of[2]) if keep else (None, None)
    ids_list: list = []
    without_tokens: list[str] = []
    refused: list[tuple[str, str]] = []
    for doc_id, text in zip(doc_ids, texts):
        problem = chunker.size_problem(text)
        if problem is not None:
            refused.append((doc_id, problem))
            continue
        found = False
        for chunk in chunker.iter_split(text):
            found = True
            piece = chunk.text
            digest = text_hash(piece)
            out_doc.append(doc_id)
            out_id.append(chunk_id(doc_id, chunk.chunk_index, digest))
            out_index.append(chunk.chunk_index)
            out_text.append(piece)
            out_hash.append(digest)
            n_tokens.append(chunk.n_tokens)
            char_start.append(chunk.char_start)
            char_end.append(chunk.char_end)
            if keep:
                ids = chunk.input_ids
                if max_length is not None and len(ids) > max_length:
                    # What tokenizing the chunk's text for the model gives: truncated.
                    ids = np.array(truncating.encode(piece, add_special_tokens=True).ids, dtype=np.int32)
                ids_list.append(ids)
        if not found:
            without_tokens.append(doc_id)
    n = len(out_id)
    if keep:
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=n), out=offsets[1:])
        flat = np.concatenate(ids_list) if ids_list else np.empty(0, dtype=np.int32)
        ids_column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))
        fingerprint_column = constant_column(_ids_of[0], n)
    else:
        ids_column = pa.nulls(n, pa.large_list(pa.int32()))
        fingerprint_column = pa.nulls(n, pa.string())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(out_doc, pa.string()),
            pa.array(out_id, pa.string()),
            pa.array(np.array(out_index, dtype=np.int32)),
            pa.array(out_text, pa.large_string()),
            pa.array(out_hash, pa.string()),
            pa.array(np.array(n_tokens, dtype=np.int32)),
            pa.array(np.array(char_start, dtype=np.int64)),
            pa.array(np.array(char_end, dtype=np.int64)),
            ids_column,
            fingerprint_column,
        ],
        schema=CHUNK_COLUMNS,
    )
    return ChunkedDocuments(batch, len(doc_ids), without_tokens, refused)


def chunk_record_batch(batch: pa.RecordBatch | pa.Table) -> ChunkedDocuments:
    """`chunk_documents` over the `doc_id` and `text` columns of a raw_documents record batch."""
    return chunk_documents(batch.column("doc_id"), batch.column("text"))


# ---------------------------------------------------------------- length_buckets: texts -> token ids

class TokenizedTexts(NamedTuple):
    lengths: np.ndarray  # int32, one per text: its number of ids
    ids: np.ndarray  # int32, every text's ids laid end to end, in input order


def init_tokenizer(tokenizer_json: str, max_length: int) -> None:
    """Builds this process's tokenizer (an `ordered_map` initializer): special tokens added,
    truncated to `max_length`, no padding, like `TokenizerInfo.encode_batch`. In a pool worker
    the tokenizer's own thread pool is switched off: the pool's processes spread the work (inline,
    with one worker, the tokenizer may use its threads)."""
    global _tokenizer
    if multiprocessing.parent_process() is not None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    _tokenizer = tokenizer


def tokenize_texts(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> TokenizedTexts:
    """Token ids of every text with this process's tokenizer (see `init_tokenizer`), in one
    `encode_batch` call."""
    tokenizer = _tokenizer
    if tokenizer is None:
        raise RuntimeError("tokenize_texts needs init_tokenizer to have run in this process")
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    ids = [encoding.ids for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=True)]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return TokenizedTexts(lengths, flat)


def _values(column: Sequence[str] | pa.Array | pa.ChunkedArray) -> list:
    return column.to_pylist() if isinstance(column, (pa.Array, pa.ChunkedArray)) else list(column)
