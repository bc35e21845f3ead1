"""embeddings: embed what a partition lacks under the model's fingerprint, then swap the partition in.

Vectors go through a sink (`embedding_assets.lib.sinks`, the lake's embeddings table by default):
checkpoints while embedding, one publish of the whole partition at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib import lake
from embedding_assets.lib.allocators import configure_for_streaming
from embedding_assets.lib.batching import Batch, collate, plan_batches
from embedding_assets.lib.keys import KeyIndex, claim_new
from embedding_assets.lib.lake import tables
from embedding_assets.lib.sinks import DEFAULT_SINK, VectorSink, make_sink
from embedding_assets.lib.stages.common import Log, utc_now
from embedding_assets.lib.storage.names import validate_batch


def _sink(lake_root: str, sink: VectorSink | None) -> VectorSink:
    return sink if sink is not None else make_sink(DEFAULT_SINK, lake_root)


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


def plan_embeddings(lake_root: str, batch: str, fingerprint: str, tokenizer_fingerprint: str, *, sink: VectorSink | None = None) -> tuple[EmbedPlan, pa.Table]:
    """What the embeddings step must do for a partition, from metadata columns only (cheap).

    Returns the plan and the partition's chunk metadata (chunk_id, doc_id, text_hash, n_tokens);
    keys are matched with sorted numpy arrays (`keys.KeyIndex`), never per-row Python objects.
    """
    sink = _sink(lake_root, sink)
    meta = lake.read_partition(lake_root, tables.BUCKETS, batch, columns=["chunk_id", "doc_id", "text_hash", "n_tokens", "tokenizer"])
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
    existing = sink.read(batch, ["chunk_id", "text_hash", "model"])
    staged = sink.read(batch, ["text_hash"], staged=True, filter=pc.field("model") == fingerprint)
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

    for record_batch in lake.scan_partition(lake_root, tables.BUCKETS, batch, columns=["text_hash", "input_ids"], batch_size=4096):
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
    sink: VectorSink | None = None,
) -> dict:
    """Embeds what the partition lacks under the engine's fingerprint, then swaps the partition in.

    Progress is committed to a staging table at least every `commit_seconds` (a killed run resumes
    from there). The embeddings partition itself changes in one commit at the end, so readers see
    either the old complete set or the new one, never a mix; that commit also drops rows of chunks
    that no longer exist and of other fingerprints. `sink` is where vectors go (the lake's
    embeddings table when None).
    """
    from embedding_assets.lib.encoders import EngineStats

    validate_batch(batch)
    started = time.perf_counter()
    arrow_pool = configure_for_streaming()
    sink = _sink(lake_root, sink)
    fingerprint = engine.fingerprint
    plan, meta = plan_embeddings(lake_root, batch, fingerprint, engine.tokenizer.fingerprint, sink=sink)
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
        _embed_into_staging(lake_root, batch, engine, plan, budget, commit_seconds, max_buffer_rows, log, progress_seconds, stats, result, sink)
    _swap_in(lake_root, batch, engine, meta, sink=sink)
    sink.finish(batch)
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


def _embed_into_staging(lake_root, batch, engine, plan, budget, commit_seconds, max_buffer_rows, log, progress_seconds, stats, result, sink):
    """Embeds the plan's texts, checkpointing every `commit_seconds` or `max_buffer_rows` vectors."""
    fingerprint, dimension = engine.fingerprint, engine.dimension
    app_id = f"embeddings/{batch}/{fingerprint}"
    version = sink.checkpoint_version(app_id)
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
            "embedding": tables.vectors_to_arrow(vectors, dimension),
            "model": pa.array([fingerprint] * len(keys), pa.string()),
            "embedded_at": pa.array([utc_now()] * len(keys), tables.TS),
        }, schema=tables.staging_schema(dimension))
        version += 1
        sink.checkpoint(table, app_transaction=(app_id, version))
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


def _swap_in(lake_root: str, batch: str, engine, meta: pa.Table, slice_rows: int = 4096, *, sink: VectorSink | None = None) -> None:
    """Replaces the embeddings partition with one vector per current chunk, in one commit.

    Streams: vectors are read a record batch at a time from the sink's checkpoints (fresh) and then
    from the partition's published rows of the same fingerprint (reused), each distinct text's vector
    is written once for every chunk that has that text, and the sink writes them as they come. Peak
    memory is a few record batches plus the chunk metadata, whatever the partition's size.
    """
    sink = _sink(lake_root, sink)
    fingerprint, dimension = engine.fingerprint, engine.dimension
    same_model = pc.field("model") == fingerprint
    texts = KeyIndex(meta.column("text_hash"))
    sources = (True, False)  # staged: checkpointed vectors (fresh) win over published rows of the same text
    # Every text must have a vector before anything is written: checked on the key column alone.
    have = np.zeros(len(texts), dtype=bool)
    for staged in sources:
        for keys in sink.scan(batch, ["text_hash"], staged=staged, filter=same_model, batch_size=65_536):
            _mark(have, texts.group(keys.column("text_hash")))
    if not have.all():
        raise RuntimeError(f"{int((~have).sum())} texts of batch {batch!r} have no vector after embedding; nothing was written")
    schema = tables.embeddings_schema(dimension)
    chunk_columns = meta.select(["doc_id", "chunk_id", "text_hash"])
    written = np.zeros(len(texts), dtype=bool)

    def record_batches():
        for staged in sources:
            columns = ["text_hash", "embedding", "embedded_at"]
            for part in sink.scan(batch, columns, staged=staged, filter=same_model, batch_size=slice_rows):
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

    sink.publish(batch, pa.RecordBatchReader.from_batches(schema, record_batches()))
