"""The four stages as plain functions: each reads one partition and replaces one partition.

Dagster assets call these; so do benchmarks and the GPU check (which have no Dagster). Each
returns a small dict of numbers that the asset reports as metadata.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib import lake, schemas
from embedding_assets.lib.allocators import configure_for_streaming
from embedding_assets.lib.batching import Batch, collate, plan_batches
from embedding_assets.lib.chunking import Chunker, chunk_id, text_hash
from embedding_assets.lib.keys import KeyIndex, claim_new
from embedding_assets.lib.model import TokenizerInfo

RAW, REJECTED, CHUNKS, BUCKETS, EMBEDDINGS, STAGING, DOCUMENTS = (
    "raw_documents", "rejected_documents", "chunks", "length_buckets", "embeddings", "_embeddings_staging", "document_embeddings",
)
BUCKET_WIDTH = 16
Log = Callable[[str], None]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class AllDocumentsRejected(RuntimeError):
    pass


# ---------------------------------------------------------------- raw_documents

def ingest_batch(landing: str, lake_root: str, batch: str, max_file_bytes: int, log: Log = print) -> dict:
    """Reads landing/<batch>, writes the raw_documents and rejected_documents partitions."""
    from embedding_assets.lib.ingest import Document, Rejection, read_batch

    lake.validate_batch(batch)
    started = time.perf_counter()
    with _local_batch_dir(landing, batch, max_file_bytes) as (batch_dir, early_rejections):
        docs: list[Document] = []
        rejections: list[Rejection] = list(early_rejections)
        for item in read_batch(batch_dir, max_file_bytes=max_file_bytes):
            (docs if isinstance(item, Document) else rejections).append(item)
    for r in rejections:
        log(f"rejected {r.source}{' ' + r.record if r.record else ''}: {r.reason}")
    now = _now()
    raw = pa.table({
        "batch": [batch] * len(docs),
        "doc_id": [d.doc_id for d in docs],
        "source": [d.source for d in docs],
        "text": [d.text for d in docs],
        "content_hash": [d.content_hash for d in docs],
        "size_bytes": [d.size_bytes for d in docs],
        "flags": [d.flags for d in docs],
        "ingested_at": [now] * len(docs),
    }, schema=schemas.RAW_DOCUMENTS)
    rejected = pa.table({
        "batch": [batch] * len(rejections),
        "source": [r.source for r in rejections],
        "record": [r.record for r in rejections],
        "reason": [r.reason for r in rejections],
        "rejected_at": [now] * len(rejections),
    }, schema=schemas.REJECTED_DOCUMENTS)
    lake.replace_partition(lake_root, REJECTED, batch, rejected)
    if not docs:
        lake.replace_partition(lake_root, RAW, batch, raw)
        detail = "; ".join(f"{r.source}: {r.reason}" for r in rejections[:5]) or "the batch folder holds no documents"
        raise AllDocumentsRejected(f"batch {batch!r}: every document was rejected ({len(rejections)}): {detail}")
    lake.replace_partition(lake_root, RAW, batch, raw)
    return {
        "documents": len(docs),
        "rejected": len(rejections),
        "bytes": int(sum(d.size_bytes for d in docs)),
        "flagged": sum(1 for d in docs if d.flags),
        "rejections": [f"{r.source}{' ' + r.record if r.record else ''}: {r.reason}" for r in rejections[:50]],
        "duration_s": time.perf_counter() - started,
    }


class _local_batch_dir:
    """The batch as a local folder: the landing folder itself, or a capped download of an object-storage prefix."""

    def __init__(self, landing: str, batch: str, max_file_bytes: int):
        self.landing, self.batch, self.cap = landing, batch, max_file_bytes
        self._tmp = None

    def __enter__(self):
        from embedding_assets.lib.ingest import Rejection

        if "://" not in self.landing or self.landing.startswith("file://"):
            root = self.landing.removeprefix("file://")
            return os.path.join(os.path.expanduser(root), self.batch), []
        from embedding_assets.lib.object_store import download_batch_with_reasons

        self._tmp = tempfile.TemporaryDirectory(prefix=f"batch-{self.batch}-")
        skipped = download_batch_with_reasons(self.landing, self.batch, self._tmp.name, self.cap)
        return self._tmp.name, [Rejection(source=name, record=None, reason=reason) for name, reason in skipped]

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()


# ---------------------------------------------------------------- chunks

def chunk_batch(lake_root: str, batch: str, tokenizer: TokenizerInfo, max_tokens: int | None, overlap: int, log: Log = print) -> dict:
    """Splits every document of the partition into token-bounded chunks."""
    started = time.perf_counter()
    raw = lake.read_partition(lake_root, RAW, batch, columns=["doc_id", "text"])
    if raw is None or raw.num_rows == 0:
        raise RuntimeError(f"raw_documents has no rows for batch {batch!r}: materialize raw_documents first")
    max_tokens = min(max_tokens or tokenizer.max_seq_length, tokenizer.max_seq_length)
    chunker = Chunker(tokenizer.tokenizer, max_tokens=max_tokens, overlap=overlap)
    columns: dict[str, list] = {k: [] for k in ("doc_id", "chunk_id", "chunk_index", "text", "text_hash", "n_tokens", "char_start", "char_end")}
    last_log = time.monotonic()
    doc_ids, texts = raw.column("doc_id").to_pylist(), raw.column("text")
    empty = 0
    for i, doc_id in enumerate(doc_ids):
        chunks = chunker.split(texts[i].as_py())
        if not chunks:
            empty += 1
            log(f"{doc_id}: no tokens to embed (the text holds nothing the tokenizer keeps)")
        for c in chunks:
            h = text_hash(c.text)
            columns["doc_id"].append(doc_id)
            columns["chunk_id"].append(chunk_id(doc_id, c.chunk_index, h))
            columns["chunk_index"].append(c.chunk_index)
            columns["text"].append(c.text)
            columns["text_hash"].append(h)
            columns["n_tokens"].append(c.n_tokens)
            columns["char_start"].append(c.char_start)
            columns["char_end"].append(c.char_end)
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log(f"chunking {batch}: {i + 1}/{len(doc_ids)} documents, {len(columns['chunk_id'])} chunks")
    n = len(columns["chunk_id"])
    table = pa.table({"batch": [batch] * n, **columns}, schema=schemas.CHUNKS)
    lake.replace_partition(lake_root, CHUNKS, batch, table)
    tokens = int(np.sum(columns["n_tokens"])) if n else 0
    return {
        "documents": len(doc_ids),
        "chunks": n,
        "tokens": tokens,
        "max_chunk_tokens": int(max(columns["n_tokens"])) if n else 0,
        "mean_chunk_tokens": tokens / n if n else 0.0,
        "documents_without_tokens": empty,
        "chunk_tokens_limit": max_tokens,
        "overlap_tokens": overlap,
        "duration_s": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- length_buckets

def bucket_batch(lake_root: str, batch: str, tokenizer: TokenizerInfo, log: Log = print) -> dict:
    """Tokenizes every chunk once, buckets it by length and orders the partition for batching."""
    started = time.perf_counter()
    chunks = lake.read_partition(lake_root, CHUNKS, batch, columns=["chunk_id", "doc_id", "text", "text_hash"])
    if chunks is None or chunks.num_rows == 0:
        raise RuntimeError(f"chunks has no rows for batch {batch!r}: materialize chunks first")
    texts = chunks.column("text").to_pylist()
    ids: list[list[int]] = []
    step = 2048
    last_log = time.monotonic()
    for start in range(0, len(texts), step):
        ids.extend(tokenizer.encode_batch(texts[start:start + step]))
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log(f"tokenizing {batch}: {min(start + step, len(texts))}/{len(texts)} chunks")
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    hashes = chunks.column("text_hash").to_numpy(zero_copy_only=False)
    # Sort by length, then by text so identical texts sit side by side (embedded once).
    order = np.lexsort((hashes, lengths))
    flat = np.fromiter((t for i in order for t in ids[i]), dtype=np.int32, count=int(lengths.sum()))
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths[order], out=offsets[1:])
    n = len(order)
    table = pa.table({
        "batch": pa.array([batch] * n, pa.string()),
        "chunk_id": chunks.column("chunk_id").take(order),
        "doc_id": chunks.column("doc_id").take(order),
        "text_hash": chunks.column("text_hash").take(order),
        "position": pa.array(np.arange(n, dtype=np.int64)),
        "bucket": pa.array(((lengths[order] + BUCKET_WIDTH - 1) // BUCKET_WIDTH).astype(np.int32)),
        "n_tokens": pa.array(lengths[order]),
        "input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32())),
        "tokenizer": pa.array([tokenizer.fingerprint] * n, pa.string()),
    }, schema=schemas.LENGTH_BUCKETS)
    lake.replace_partition(lake_root, BUCKETS, batch, table)
    buckets = np.unique((lengths + BUCKET_WIDTH - 1) // BUCKET_WIDTH)
    return {
        "chunks": n,
        "tokens": int(lengths.sum()),
        "distinct_texts": int(len(np.unique(hashes))),
        "buckets": int(len(buckets)),
        "bucket_width_tokens": BUCKET_WIDTH,
        "max_tokens": int(lengths.max()) if n else 0,
        "tokenizer": tokenizer.fingerprint,
        "duration_s": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- embeddings

@dataclass
class EmbedPlan:
    chunks: int
    distinct_texts: int
    to_embed: pa.Array  # text hashes with no vector under this fingerprint yet (sorted)
    to_embed_tokens: int
    reusable: int
    stale_rows: int  # rows to drop: chunks that no longer exist, or another fingerprint
    staged: int
    up_to_date: bool


def plan_embeddings(lake_root: str, batch: str, fingerprint: str, tokenizer_fingerprint: str) -> tuple[EmbedPlan, pa.Table]:
    """What the embeddings step must do for a partition, from metadata columns only (cheap).

    Returns the plan and the partition's chunk metadata (chunk_id, doc_id, text_hash, n_tokens);
    keys are matched with sorted numpy arrays (`keys.KeyIndex`), never per-row Python objects.
    """
    meta = lake.read_partition(lake_root, BUCKETS, batch, columns=["chunk_id", "doc_id", "text_hash", "n_tokens", "tokenizer"])
    if meta is None or meta.num_rows == 0:
        raise RuntimeError(f"length_buckets has no rows for batch {batch!r}: materialize length_buckets first")
    tokenizers = pc.unique(meta.column("tokenizer")).to_pylist()
    if tokenizers != [tokenizer_fingerprint]:
        raise RuntimeError(
            f"length_buckets for batch {batch!r} was tokenized with {tokenizers}, but the model's tokenizer is "
            f"{tokenizer_fingerprint}: re-materialize chunks and length_buckets for this model"
        )
    meta = meta.drop_columns(["tokenizer"])
    texts = KeyIndex(meta.column("text_hash"))
    have = np.zeros(len(texts), dtype=bool)
    existing = lake.read_partition(lake_root, EMBEDDINGS, batch, columns=["chunk_id", "text_hash", "model"])
    staged = lake.read_partition(lake_root, STAGING, batch, columns=["text_hash"], filter=pc.field("model") == fingerprint)
    stale, complete = 0, False
    if existing is not None and existing.num_rows:
        same = existing.filter(pc.equal(existing.column("model"), fingerprint))
        _mark(have, texts.group(same.column("text_hash")))
        current = pc.sum(pc.is_in(same.column("chunk_id"), value_set=meta.column("chunk_id").combine_chunks())).as_py() or 0
        stale = existing.num_rows - current
        complete = stale == 0 and same.num_rows == meta.num_rows and pc.count_distinct(same.column("chunk_id")).as_py() == meta.num_rows
    n_staged = 0 if staged is None else staged.num_rows
    if staged is not None:
        _mark(have, texts.group(staged.column("text_hash")))
    first_rows = texts.order[texts.starts[~have]]  # one row per text still to embed, in hash order
    to_embed = meta.column("text_hash").take(first_rows).combine_chunks()
    plan = EmbedPlan(
        chunks=meta.num_rows,
        distinct_texts=len(texts),
        to_embed=to_embed,
        to_embed_tokens=int(pc.sum(meta.column("n_tokens").take(first_rows)).as_py() or 0),
        reusable=int(have.sum()),
        stale_rows=stale,
        staged=n_staged,
        up_to_date=complete and not len(to_embed) and n_staged == 0,
    )
    return plan, meta


def _mark(flags: np.ndarray, groups: np.ndarray) -> None:
    flags[groups[groups >= 0]] = True


def _pending_batches(lake_root: str, batch: str, hashes: pa.Array, token_budget: int, window_rows: int = 8192) -> Iterator[Batch]:
    """Token-budget batches of the texts still to embed, streamed from length_buckets in order.

    Each text is embedded once, however many chunks share it; a window of `window_rows` texts is
    sorted by length before it is cut into batches, so padding stays low without a global sort.
    """
    wanted = KeyIndex(hashes)
    taken = np.zeros(len(wanted), dtype=bool)
    pending_ids: list[np.ndarray] = []
    pending_keys: list[str] = []

    def flush(final: bool):
        order = np.argsort([len(t) for t in pending_ids], kind="stable")
        ids = [pending_ids[i] for i in order]
        keys = np.array([pending_keys[i] for i in order], dtype=object)
        slices = plan_batches([len(t) for t in ids], token_budget)
        # Keep the last (possibly part-filled) slice for the next window unless this is the end.
        keep_from = len(ids) if final or len(slices) < 2 else slices[-1][0]
        for start, end in slices:
            if start >= keep_from:
                break
            yield collate(ids[start:end], rows=np.arange(start, end), keys=keys[start:end])
        pending_ids[:] = ids[keep_from:]
        pending_keys[:] = list(keys[keep_from:])

    for record_batch in lake.scan_partition(lake_root, BUCKETS, batch, columns=["text_hash", "input_ids"], batch_size=4096):
        picked, _ = claim_new(wanted, taken, record_batch.column("text_hash"))
        if not len(picked):
            continue
        column = record_batch.column("input_ids")
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
        pending_ids.extend(values[offsets[i]:offsets[i + 1]] for i in picked)
        pending_keys.extend(record_batch.column("text_hash").take(pa.array(picked)).to_pylist())
        if len(pending_ids) >= window_rows:
            yield from flush(final=False)
    if pending_ids:
        yield from flush(final=True)


def embed_batch(
    lake_root: str,
    batch: str,
    engine,
    *,
    token_budget: int | None = None,
    commit_seconds: float = 30.0,
    max_buffer_rows: int = 8_192,
    log: Log = print,
    progress_seconds: float = 10.0,
) -> dict:
    """Embeds what the partition lacks under the engine's fingerprint, then swaps the partition in.

    Progress is committed to a staging table at least every `commit_seconds` (a killed run resumes
    from there). The embeddings partition itself changes in one commit at the end, so readers see
    either the old complete set or the new one, never a mix; that commit also drops rows of chunks
    that no longer exist and of other fingerprints.
    """
    from embedding_assets.lib.engine import EngineStats

    lake.validate_batch(batch)
    started = time.perf_counter()
    arrow_pool = configure_for_streaming()
    fingerprint = engine.fingerprint
    plan, meta = plan_embeddings(lake_root, batch, fingerprint, engine.tokenizer.fingerprint)
    stats = EngineStats()
    result = {
        "chunks": plan.chunks,
        "distinct_texts": plan.distinct_texts,
        "embedded_texts": 0,
        "reused_vectors": plan.reusable,
        "removed_rows": plan.stale_rows,
        "resumed_from_checkpoint": plan.staged,
        "commits": 0,
        "model": fingerprint,
        "device": engine.device,
        "precision": engine.precision,
        "backend": engine.backend,
        "dimension": engine.dimension,
        "token_budget": token_budget or engine.token_budget,
        "token_budget_source": "override" if token_budget else engine.budget_source,
        "arrow_memory_pool": arrow_pool,
    }
    if plan.up_to_date:
        log(f"embeddings for batch {batch} are up to date under {fingerprint}: nothing to embed")
        result.update(skipped=True, tokens=0, tokens_per_s=0.0, padded_fraction=0.0, duration_s=time.perf_counter() - started)
        return result
    budget = token_budget or engine.token_budget
    if len(plan.to_embed):
        log(f"embedding {len(plan.to_embed)} new texts of {plan.distinct_texts} in batch {batch} ({plan.reusable} reused, {plan.staged} from a checkpoint)")
        _embed_into_staging(lake_root, batch, engine, plan, meta, budget, commit_seconds, max_buffer_rows, log, progress_seconds, stats, result)
    _swap_in(lake_root, batch, engine, meta)
    # Checkpoints are spent once the partition is swapped in (those of an abandoned fingerprint
    # too: the partition lock means no other run of this batch is writing them).
    lake.delete_partition(lake_root, STAGING, batch)
    lake.compact_partition(lake_root, EMBEDDINGS, batch)
    lake.vacuum(lake_root, STAGING, retention_hours=1)
    result.update(
        skipped=False,
        embedded_texts=stats.rows,
        tokens=stats.real_tokens,
        padded_tokens=stats.padded_tokens,
        padded_fraction=stats.padded_fraction,
        tokens_per_s=stats.tokens_per_second,
        batches=stats.batches,
        oom_splits=stats.oom_splits,
        nonfinite_recomputed=stats.nonfinite_recomputed,
        duration_s=time.perf_counter() - started,
    )
    return result


def _embed_into_staging(lake_root, batch, engine, plan, meta, budget, commit_seconds, max_buffer_rows, log, progress_seconds, stats, result):
    fingerprint, dimension = engine.fingerprint, engine.dimension
    app_id = f"embeddings/{batch}/{fingerprint}"
    version = lake.transaction_version(lake_root, STAGING, app_id)
    total_tokens = plan.to_embed_tokens
    keys_buffer: list[np.ndarray] = []
    vector_buffer: list[np.ndarray] = []
    buffered = 0
    last_commit = last_log = time.monotonic()

    def commit():
        nonlocal buffered, version, last_commit
        if not buffered:
            return
        keys = np.concatenate(keys_buffer)
        vectors = np.concatenate(vector_buffer)
        table = pa.table({
            "batch": pa.array([batch] * len(keys), pa.string()),
            "text_hash": pa.array(keys.tolist(), pa.string()),
            "embedding": schemas.vectors_to_arrow(vectors, dimension),
            "model": pa.array([fingerprint] * len(keys), pa.string()),
            "embedded_at": pa.array([_now()] * len(keys), schemas.TS),
        }, schema=schemas.staging_schema(dimension))
        version += 1
        lake.append(lake_root, STAGING, table, app_transaction=(app_id, version))
        result["commits"] += 1
        keys_buffer.clear()
        vector_buffer.clear()
        buffered = 0
        last_commit = time.monotonic()

    batches = _pending_batches(lake_root, batch, plan.to_embed, budget)
    for done_batch, vectors in engine.encode_batches(batches, stats):
        keys_buffer.append(done_batch.keys)
        vector_buffer.append(vectors)
        buffered += len(vectors)
        now = time.monotonic()
        if now - last_commit >= commit_seconds or buffered >= max_buffer_rows:
            commit()
        if now - last_log >= progress_seconds:
            last_log = now
            rate = stats.tokens_per_second
            left = (total_tokens - stats.real_tokens) / rate if rate else float("nan")
            log(
                f"embeddings {batch}: {stats.rows}/{len(plan.to_embed)} texts, {stats.real_tokens}/{total_tokens} tokens, "
                f"{rate:,.0f} tokens/s, padded {stats.padded_fraction:.1%}, about {left:,.0f} s left"
            )
    commit()


def _swap_in(lake_root: str, batch: str, engine, meta: pa.Table, slice_rows: int = 4096) -> None:
    """Replaces the embeddings partition with one vector per current chunk, in one commit.

    Streams: vectors are read a record batch at a time from the staging table (fresh) and then from
    the partition's own rows of the same fingerprint (reused), each distinct text's vector is
    written once for every chunk that has that text, and the lake writes them as they come. Peak
    memory is a few record batches plus the chunk metadata, whatever the partition's size.
    """
    fingerprint, dimension = engine.fingerprint, engine.dimension
    same_model = pc.field("model") == fingerprint
    texts = KeyIndex(meta.column("text_hash"))
    sources = (STAGING, EMBEDDINGS)  # staged vectors (fresh) win over older rows of the same text
    # Every text must have a vector before anything is written: checked on the key column alone.
    have = np.zeros(len(texts), dtype=bool)
    for name in sources:
        for keys in lake.scan_partition(lake_root, name, batch, columns=["text_hash"], filter=same_model, batch_size=65_536):
            _mark(have, texts.group(keys.column("text_hash")))
    if not have.all():
        raise RuntimeError(f"{int((~have).sum())} texts of batch {batch!r} have no vector after embedding; nothing was written")
    schema = schemas.embeddings_schema(dimension)
    chunk_columns = meta.select(["doc_id", "chunk_id", "text_hash"])
    written = np.zeros(len(texts), dtype=bool)

    def record_batches():
        for name in sources:
            columns = ["text_hash", "embedding", "embedded_at"]
            for part in lake.scan_partition(lake_root, name, batch, columns=columns, filter=same_model, batch_size=slice_rows):
                picked, groups = claim_new(texts, written, part.column("text_hash"))
                if not len(picked):
                    continue
                rows, owner = texts.rows_of(groups)
                chunks = chunk_columns.take(pa.array(rows))
                source_rows = pa.array(picked[owner])
                yield pa.record_batch({
                    "batch": pa.array([batch] * len(rows), pa.string()),
                    "doc_id": chunks.column("doc_id").combine_chunks(),
                    "chunk_id": chunks.column("chunk_id").combine_chunks(),
                    "text_hash": chunks.column("text_hash").combine_chunks(),
                    "embedding": part.column("embedding").take(source_rows).cast(schema.field("embedding").type),
                    "model": pa.array([fingerprint] * len(rows), pa.string()),
                    "embedded_at": part.column("embedded_at").take(source_rows),
                }, schema=schema)
        if not written.all():  # a source changed under us between the check and the write
            raise RuntimeError(f"{int((~written).sum())} texts of batch {batch!r} lost their vector during the swap; nothing was written")

    lake.replace_partition(lake_root, EMBEDDINGS, batch, pa.RecordBatchReader.from_batches(schema, record_batches()))


# ---------------------------------------------------------------- downstream

def document_vectors(lake_root: str, batch: str, log: Log = print) -> dict:
    """One vector per document: the token-weighted mean of its chunk vectors, re-normalized."""
    started = time.perf_counter()
    emb = lake.read_partition(lake_root, EMBEDDINGS, batch, columns=["doc_id", "text_hash", "embedding", "model"])
    if emb is None or emb.num_rows == 0:
        raise RuntimeError(f"embeddings has no rows for batch {batch!r}: materialize embeddings first")
    meta = lake.read_partition(lake_root, BUCKETS, batch, columns=["text_hash", "n_tokens"])
    weights_by_hash = dict(zip(meta.column("text_hash").to_pylist(), meta.column("n_tokens").to_pylist()))
    vectors = schemas.arrow_to_vectors(emb.column("embedding"))
    weights = np.array([weights_by_hash.get(h, 1) for h in emb.column("text_hash").to_pylist()], dtype=np.float32)
    doc_ids = np.array(emb.column("doc_id").to_pylist(), dtype=object)
    order = np.argsort(doc_ids, kind="stable")
    unique_ids, starts, counts = np.unique(doc_ids[order], return_index=True, return_counts=True)
    weighted = vectors[order] * weights[order, None]
    sums = np.add.reduceat(weighted, starts, axis=0) if len(order) else weighted
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    doc_vectors = sums / np.where(norms == 0, 1, norms)
    dimension = vectors.shape[1]
    model = pc.unique(emb.column("model")).to_pylist()
    table = pa.table({
        "batch": pa.array([batch] * len(unique_ids), pa.string()),
        "doc_id": pa.array(unique_ids.tolist(), pa.string()),
        "n_chunks": pa.array(counts.astype(np.int32)),
        "embedding": schemas.vectors_to_arrow(doc_vectors, dimension),
        "model": pa.array([model[0]] * len(unique_ids), pa.string()),
    }, schema=schemas.document_embeddings_schema(dimension))
    lake.replace_partition(lake_root, DOCUMENTS, batch, table)
    return {"documents": len(unique_ids), "chunks": emb.num_rows, "model": model[0], "duration_s": time.perf_counter() - started}
