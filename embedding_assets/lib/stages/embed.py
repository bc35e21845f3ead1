"""embeddings: embed what a partition lacks under the model's fingerprint, then swap the partition in.

Vectors go through a sink (`embedding_assets.lib.sinks`, the lake's embeddings table by default):
checkpoints while embedding, in final form (one row per chunk), then one publish of the whole
partition that keeps those checkpoints as they are and writes only the rows no checkpoint holds
(vectors reused from the published partition, chunks that changed since a checkpoint).
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
from embedding_assets.lib.batching import Batch, collate_slices, plan_batches
from embedding_assets.lib.keys import CompactKeys, KeyIndex, claim_new, first_in_batch, fixed_width, pack_hex, to_arrow, unpack_hex
from embedding_assets.lib.lake import tables
from embedding_assets.lib.sinks import DEFAULT_SINK, VectorSink, make_sink
from embedding_assets.lib.sinks.base import Part
from embedding_assets.lib.stages.common import Log, utc_now
from embedding_assets.lib.storage.names import validate_batch


def _release_free_memory() -> None:
    """Returns the C heap's free pages to the OS (glibc `malloc_trim`), between the step's phases.

    Parquet reads of a partition leave hundreds of small freed buffers in glibc's arenas (measured:
    ~60 MB of RSS after reading 500k chunks' metadata, with nothing live); without this they add up
    to the next phase's peak. A no-op where glibc is not the C library.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        trim = None
    if trim is not None:
        trim(0)


def _sink(lake_root: str, sink: VectorSink | None) -> VectorSink:
    return sink if sink is not None else make_sink(DEFAULT_SINK, lake_root)


@dataclass
class EmbedPlan:
    chunks: int
    distinct_texts: int
    texts_to_embed: int  # distinct texts with no vector under this fingerprint yet
    to_embed_tokens: int
    reusable: int
    stale_rows: int  # rows to drop: chunks that no longer exist, or another fingerprint
    staged: int  # distinct texts with a checkpointed vector under this fingerprint
    up_to_date: bool
    empty: bool = False  # length_buckets holds no rows for the batch
    parts: list[Part] | None = None  # the sink's checkpointed parts (every fingerprint)
    pending: np.ndarray | None = None  # per text group of `ChunkMeta.texts`: still to embed
    texts: KeyIndex | None = None

    @property
    def to_embed(self) -> np.ndarray:
        """The text hashes (numpy S<width>, sorted) still to embed."""
        return self.texts.keys(np.flatnonzero(self.pending))


@dataclass
class ChunkMeta:
    """The partition's chunks, held compactly for the swap: O(partition) state, on purpose and bounded.

    Per chunk: its chunk id as fixed-width numpy bytes (16 raw bytes for the 32-hex-digit ids), its
    doc id in one contiguous Arrow string array (its bytes plus an 8-byte offset), and the sorted
    index of the text hashes (`KeyIndex`: 32 raw bytes of the sha256 plus ~24 bytes of row
    numbers a chunk); a chunk's text hash is its group's key in that index. No Python object per
    chunk and no multi-chunk Arrow table (whose `take` would copy whole columns per slice).
    """

    chunk_id: np.ndarray
    chunk_id_packed: bool
    doc_id: pa.Array
    texts: KeyIndex
    _ids: KeyIndex | None = None
    _group_of_row: np.ndarray | None = None

    def chunk_ids(self, rows: np.ndarray) -> np.ndarray:
        ids = self.chunk_id[rows]
        return unpack_hex(ids) if self.chunk_id_packed else ids

    def group_of_row(self) -> np.ndarray:
        """Each chunk row's text group in `texts` (4 bytes a chunk, built on first use)."""
        if self._group_of_row is None:
            groups = np.empty(self.num_rows, dtype=np.int32 if len(self.texts) < 2**31 else np.int64)
            groups[self.texts.order] = np.repeat(np.arange(len(self.texts), dtype=groups.dtype), self.texts.counts)
            self._group_of_row = groups
        return self._group_of_row

    def groups_of_scan(self, start: int, keys) -> np.ndarray:
        """The text groups of `keys`, a text_hash column of length_buckets read from row `start` of
        the partition in the order `_read_chunk_meta` read it: taken from `group_of_row` when every
        key is the one that row has (the usual case: one table version, one file order), else
        looked up key by key (the table changed in between)."""
        expected = self.group_of_row()[start:start + len(keys)]
        if len(expected) == len(keys) and len(keys):
            column = fixed_width(keys)
            if self.texts.packed and column.dtype.itemsize == 2 * self.texts.width:
                column, is_hex = pack_hex(column)
                if is_hex.all() and (self.texts.distinct[expected] == column).all():
                    return expected.astype(np.int64)
            elif not self.texts.packed and (self.texts.distinct[expected] == column.astype(self.texts.distinct.dtype)).all():
                return expected.astype(np.int64)
        return self.texts.group(keys)

    def rows_of_ids(self, ids) -> np.ndarray:
        """The chunk row of each id in an Arrow string column (or numpy S array), or -1 where the id is
        not a chunk of the partition. Sorts the ids once (8 bytes a chunk), on first use."""
        if self._ids is None:
            self._ids = KeyIndex(self.chunk_id, packed=self.chunk_id_packed)
        index = self._ids
        groups = index.group(ids)
        return np.where(groups >= 0, index.order[index.starts[np.maximum(groups, 0)]], -1) if len(index) else groups

    @property
    def num_rows(self) -> int:
        return len(self.chunk_id)


def _read_chunk_meta(lake_root: str, batch: str, tokenizer_fingerprint: str) -> tuple[ChunkMeta | None, np.ndarray]:
    """Streams length_buckets' metadata columns into a `ChunkMeta` (None when the table does not
    exist) and the chunks' token counts."""
    if not lake.exists(lake_root, tables.BUCKETS):
        return None, np.zeros(0, dtype=np.int32)
    hashes, chunk_ids = CompactKeys(), CompactKeys()
    doc_ids: list[pa.Array] = []
    n_tokens: list[np.ndarray] = []
    tokenizers: set[str] = set()
    columns = ["chunk_id", "doc_id", "text_hash", "n_tokens", "tokenizer"]
    for part in lake.scan_partition(lake_root, tables.BUCKETS, batch, columns=columns, batch_size=65_536):
        if not part.num_rows:
            continue
        tokenizers.update(pc.unique(part.column("tokenizer")).to_pylist())
        hashes.add(part.column("text_hash"))
        chunk_ids.add(part.column("chunk_id"))
        doc_ids.append(part.column("doc_id"))
        n_tokens.append(part.column("n_tokens").to_numpy(zero_copy_only=False).astype(np.int32))
    if tokenizers and tokenizers != {tokenizer_fingerprint}:
        raise RuntimeError(
            f"length_buckets for batch {batch!r} was tokenized with {sorted(tokenizers)}, but the model's tokenizer is "
            f"{tokenizer_fingerprint}: re-materialize chunks and length_buckets for this model"
        )
    text_keys, packed = hashes.result()
    texts = KeyIndex(text_keys, packed=packed)
    del text_keys
    chunk_id, packed = chunk_ids.result()
    doc_id = pa.concat_arrays(doc_ids) if doc_ids else pa.array([], pa.string())
    meta = ChunkMeta(chunk_id=chunk_id, chunk_id_packed=packed, doc_id=doc_id, texts=texts)
    return meta, (np.concatenate(n_tokens) if n_tokens else np.zeros(0, dtype=np.int32))


def plan_embeddings(lake_root: str, batch: str, fingerprint: str, tokenizer_fingerprint: str, *, sink: VectorSink | None = None) -> tuple[EmbedPlan, ChunkMeta]:
    """What the embeddings step must do for a partition, from metadata columns only (cheap).

    Returns the plan and the partition's chunk metadata (`ChunkMeta`); every column is streamed a
    record batch at a time and keys are matched with sorted numpy arrays (`keys.KeyIndex`), never
    per-row Python objects.

    A partition of length_buckets with no rows (an emptied batch) gives a plan with `empty` set:
    the step then empties the embeddings partition. Only a length_buckets table that does not exist
    at all means "never materialized" and raises: Delta keeps no cheap record of whether a
    partition was ever written (an emptied partition and one never written both have no files),
    and within Dagster the asset graph runs length_buckets for a batch before its embeddings.
    """
    sink = _sink(lake_root, sink)
    meta, n_tokens = _read_chunk_meta(lake_root, batch, tokenizer_fingerprint)
    if meta is None:
        raise RuntimeError(f"length_buckets does not exist in {lake_root!r}: materialize length_buckets for batch {batch!r} first")
    texts = meta.texts
    have = np.zeros(len(texts), dtype=bool)
    seen_chunks = np.zeros(meta.num_rows, dtype=bool)
    existing_rows = same_rows = current = 0
    for part in sink.scan(batch, ["chunk_id", "text_hash", "model"], batch_size=65_536):
        existing_rows += part.num_rows
        same = part.filter(pc.equal(part.column("model"), fingerprint))
        if not same.num_rows:
            continue
        same_rows += same.num_rows
        _mark(have, texts.group(same.column("text_hash")))
        position = meta.rows_of_ids(same.column("chunk_id"))
        found = position >= 0
        current += int(found.sum())
        seen_chunks[position[found]] = True
    stale = existing_rows - current
    complete = existing_rows > 0 and stale == 0 and same_rows == meta.num_rows and int(seen_chunks.sum()) == meta.num_rows
    parts = sink.parts(batch)
    staged = np.zeros(len(texts), dtype=bool)
    for part in parts:
        if part.model != fingerprint:
            continue
        for keys in sink.scan_part(part, ["text_hash"], batch_size=65_536):
            _mark(staged, texts.group(keys.column("text_hash")))
    have |= staged
    n_staged = int(staged.sum())
    first_rows = texts.order[texts.starts[~have]]  # one row per text still to embed, in hash order
    plan = EmbedPlan(
        chunks=meta.num_rows,
        distinct_texts=len(texts),
        texts_to_embed=int((~have).sum()),
        to_embed_tokens=int(n_tokens[first_rows].sum()),
        reusable=int(have.sum()),
        stale_rows=stale,
        staged=n_staged,
        up_to_date=complete and not len(first_rows) and not any(p.model == fingerprint for p in parts),
        empty=meta.num_rows == 0,
        parts=parts,
        pending=~have,
        texts=texts,
    )
    return plan, meta


def _mark(flags: np.ndarray, groups: np.ndarray) -> None:
    flags[groups[groups >= 0]] = True


class _Window:
    """Token ids of pending texts as one flat int32 buffer plus lengths and keys (no per-row arrays)."""

    def __init__(self):
        self.values: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.rows = 0

    def add(self, values: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> None:
        self.values.append(values)
        self.lengths.append(lengths)
        self.keys.append(keys)
        self.rows += len(lengths)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = np.concatenate(self.values) if self.values else np.empty(0, dtype=np.int32)
        lengths = np.concatenate(self.lengths) if self.lengths else np.empty(0, dtype=np.int64)
        keys = np.concatenate(self.keys) if self.keys else np.empty(0, dtype=np.int64)
        self.values, self.lengths, self.keys, self.rows = [], [], [], 0
        return values, lengths, keys


def _gather(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """values[starts[j] : starts[j] + lengths[j]] for every j, laid end to end (one numpy gather)."""
    total = int(lengths.sum())
    if not total:
        return np.empty(0, dtype=values.dtype)
    out_starts = np.cumsum(lengths) - lengths
    index = np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lengths)
    return values[index]


def _pending_batches(lake_root: str, batch: str, meta: ChunkMeta, pending: np.ndarray, token_budget: int, window_rows: int = 8192, first_window_rows: int = 1024) -> Iterator[Batch]:
    """Token-budget batches of the texts still to embed (`pending`: one flag per group of
    `meta.texts`), streamed from length_buckets in order; each batch's keys are the texts' group
    numbers in `meta.texts` (found by row position, checked against the key: `groups_of_scan`).

    Each text is embedded once, however many chunks share it; a window of `window_rows` texts is
    sorted by length before it is cut into batches, so padding stays low without a global sort (the
    first window holds `first_window_rows`, so the encoder gets its first batch early). Token ids
    stay in Arrow's flat int32 buffers: rows are picked, sorted and cut with offsets in numpy, and
    a window's batches are collated by one vectorized gather (`batching.collate_slices`).
    """
    taken = ~pending  # copy: texts not to embed count as taken
    window = _Window()
    limit = min(first_window_rows, window_rows)

    def flush(final: bool):
        values, lengths, keys = window.take()
        order = np.argsort(lengths, kind="stable")
        starts = (np.cumsum(lengths) - lengths)[order]  # where each sorted row's ids sit in `values`
        lengths, keys = lengths[order], keys[order]
        slices = plan_batches(lengths, token_budget)
        # Keep the last (possibly part-filled) slice for the next window unless this is the end.
        keep_from = len(lengths) if final or len(slices) < 2 else slices[-1][0]
        yield from collate_slices(values, lengths, starts, [(start, end) for start, end in slices if start < keep_from], keys=keys)
        if keep_from < len(lengths):
            window.add(_gather(values, starts[keep_from:], lengths[keep_from:]), lengths[keep_from:], keys[keep_from:])

    row = 0
    for record_batch in lake.scan_partition(lake_root, tables.BUCKETS, batch, columns=["text_hash", "input_ids"], batch_size=4096):
        groups = meta.groups_of_scan(row, record_batch.column("text_hash"))
        row += record_batch.num_rows
        keep = groups >= 0
        keep[keep] = ~taken[groups[keep]]
        candidates = np.flatnonzero(keep)
        picked = candidates[first_in_batch(groups[candidates])]  # a text shared by several chunks: its first row
        if not len(picked):
            continue
        groups = groups[picked]
        taken[groups] = True
        column = record_batch.column("input_ids")
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        lengths = (offsets[picked + 1] - offsets[picked]).astype(np.int64)
        # `offsets` index the whole values buffer (a sliced list array's offsets are absolute).
        window.add(_gather(values, offsets[picked], lengths), lengths, groups)
        if window.rows >= limit:
            yield from flush(final=False)
            limit = window_rows
    if window.rows:
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

    Progress is checkpointed at least every `commit_seconds` (a killed run resumes from there): rows
    in final form, recorded by the sink, invisible to readers. The embeddings partition itself
    changes in one commit at the end, which publishes the checkpoints as they are (each vector is
    written once) plus the rows no checkpoint holds, so readers see either the old complete set or
    the new one, never a mix; that commit also drops rows of chunks that no longer exist and of
    other fingerprints. Vectors go to the checkpoint writer every `max_buffer_rows` texts (what the
    step holds of them). `sink` is where vectors go (the lake's embeddings table when None).
    """
    from embedding_assets.lib.encoders import EngineStats

    validate_batch(batch)
    started = time.perf_counter()
    arrow_pool = configure_for_streaming()
    sink = _sink(lake_root, sink)
    fingerprint = engine.fingerprint
    plan, meta = plan_embeddings(lake_root, batch, fingerprint, engine.tokenizer.fingerprint, sink=sink)
    _release_free_memory()
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
        "emptied": False,
    }
    if plan.empty:
        # An emptied batch: its embeddings partition is emptied too (one commit) and checkpoints cleared.
        log(f"length_buckets holds no rows for batch {batch}: emptying its embeddings partition ({plan.stale_rows} rows removed)")
        sink.publish(batch, [], pa.RecordBatchReader.from_batches(tables.embeddings_schema(engine.dimension), iter(())))
        sink.finish(batch)
        result.update(skipped=False, emptied=True, tokens=0, tokens_per_s=0.0, padded_fraction=0.0, duration_s=time.perf_counter() - started)
        return result
    if plan.up_to_date:
        if plan.parts:
            sink.finish(batch)  # checkpoints of another fingerprint, spent
        log(f"embeddings for batch {batch} are up to date under {fingerprint}: nothing to embed")
        result.update(skipped=True, tokens=0, tokens_per_s=0.0, padded_fraction=0.0, duration_s=time.perf_counter() - started)
        return result
    budget = token_budget or engine.token_budget
    if plan.texts_to_embed:
        log(f"embedding {plan.texts_to_embed} new texts of {plan.distinct_texts} in batch {batch} ({plan.reusable} reused, {plan.staged} from a checkpoint)")
        _embed_into_checkpoints(lake_root, batch, engine, plan, meta, budget, commit_seconds, max_buffer_rows, log, progress_seconds, stats, result, sink)
        _release_free_memory()
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


def _chunk_rows(meta: ChunkMeta, groups: np.ndarray, vectors: list[np.ndarray], fingerprint: str, embedded_at, dimension: int) -> Iterator[pa.RecordBatch]:
    """Embeddings rows (one per chunk) for the vectors of distinct texts (their group numbers in
    `meta.texts`, in the order of the vector matrices laid end to end): a text shared by several
    chunks gives one row for each. No Python object per row, and the vectors are not copied where
    each text has one chunk (the usual case): the record batches follow the matrices' boundaries."""
    rows, owner = meta.texts.rows_of(groups)
    if len(owner) != len(groups) or not (owner == np.arange(len(groups))).all():
        vectors, groups = [np.concatenate(vectors)[owner]], groups[owner]
    n = len(rows)
    embedding = pa.chunked_array([tables.vectors_to_arrow(v, dimension) for v in vectors if len(v)], type=pa.list_(pa.float32(), dimension))
    table = pa.table({
        "doc_id": meta.doc_id.take(pa.array(rows)),
        "chunk_id": to_arrow(meta.chunk_ids(rows)),
        "text_hash": to_arrow(meta.texts.keys(groups)),
        "embedding": embedding,
        "model": tables.constant_column(fingerprint, n),
        "embedded_at": tables.constant_column(embedded_at, n, tables.TS),
    })
    return iter(table.to_batches())


def _embed_into_checkpoints(lake_root, batch, engine, plan, meta, budget, commit_seconds, max_buffer_rows, log, progress_seconds, stats, result, sink):
    """Embeds the plan's texts into checkpoint parts of the sink, committed every `commit_seconds`.

    Vectors are handed to background threads every `max_buffer_rows` texts, in turn to each of the
    sink writer's lanes (each writes its own files: encoding Parquet and writing files release the
    GIL, and on a fast encoder they cost more than everything else in the step, so they get every
    core the encoder leaves), which turn them into rows (one per chunk) and write them while the
    encoder goes on; at most two hand-overs wait per lane, so memory stays bounded. A commit waits
    for every lane's writes, then runs on the first lane while no write runs; commits are one at a
    time and in version order; the step waits for the last one, and a failed write or commit fails
    the step at the next hand-over or at the end (and nothing after it runs).
    """
    from concurrent.futures import ThreadPoolExecutor

    fingerprint, dimension = engine.fingerprint, engine.dimension
    app_id = f"embeddings/{batch}/{fingerprint}"
    version = sink.checkpoint_version(app_id)
    total_tokens = plan.to_embed_tokens
    keys_buffer: list[np.ndarray] = []
    vector_buffer: list[np.ndarray] = []
    buffered = uncommitted = 0
    last_commit = last_log = time.monotonic()
    checkpoints = sink.checkpoint_writer(batch, tables.embeddings_schema(dimension))
    lanes = max(1, int(getattr(checkpoints, "lanes", 1)))
    writers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embedding-checkpoint-{lane}") for lane in range(lanes)]
    pending: list[list] = [[] for _ in range(lanes)]  # per lane: futures of its hand-overs (and commits), in order
    next_lane = 0
    committing = None  # the commit in flight: no other lane writes until it is done

    def settle(lane: int, keep: int) -> None:
        while len(pending[lane]) > keep:
            pending[lane].pop(0).result()  # raises what the write or commit raised

    failed: list[BaseException] = []  # once a write or commit fails, nothing after it runs (no later version lands)

    def in_order(task):
        def run(*args):
            if failed:
                return
            try:
                task(*args)
            except BaseException as exc:
                failed.append(exc)
                raise
        return run

    @in_order
    def write(lane, keys, vectors):
        for rows in _chunk_rows(meta, keys, vectors, fingerprint, utc_now(), dimension):
            checkpoints.write(rows, lane) if lanes > 1 else checkpoints.write(rows)

    @in_order
    def commit(version):
        checkpoints.commit((app_id, version))
        result["commits"] += 1

    def hand_over():
        nonlocal buffered, next_lane, committing
        if not buffered:
            return
        keys = np.concatenate(keys_buffer) if len(keys_buffer) > 1 else keys_buffer[0]
        vectors = list(vector_buffer)  # not concatenated: no copy of the vectors
        keys_buffer.clear()
        vector_buffer.clear()
        buffered = 0
        lane, next_lane = next_lane, (next_lane + 1) % lanes
        if committing is not None and lane != 0:
            committing.result()
            committing = None
        settle(lane, 1)
        pending[lane].append(writers[lane].submit(write, lane, keys, vectors))

    def checkpoint():
        nonlocal version, uncommitted, last_commit, committing
        hand_over()
        if not uncommitted:
            return
        for lane in range(1, lanes):
            settle(lane, 0)
        version += 1
        committing = writers[0].submit(commit, version)  # after lane 0's own writes: its executor runs in order
        pending[0].append(committing)
        uncommitted = 0
        last_commit = time.monotonic()

    try:
        batches = _pending_batches(lake_root, batch, meta, plan.pending, budget)
        for done_batch, vectors in engine.encode_batches(batches, stats):
            keys_buffer.append(done_batch.keys)
            vector_buffer.append(vectors)
            buffered += len(vectors)
            uncommitted += len(vectors)
            if buffered >= max_buffer_rows:
                hand_over()
            now = time.monotonic()
            if now - last_commit >= commit_seconds:
                checkpoint()
            if now - last_log >= progress_seconds:
                last_log = now
                rate = stats.tokens_per_second
                left = (total_tokens - stats.real_tokens) / rate if rate else float("nan")
                log(
                    f"embeddings {batch}: {stats.rows}/{plan.texts_to_embed} texts, {stats.real_tokens}/{total_tokens} tokens, "
                    f"{rate:,.0f} tokens/s, padded {stats.padded_fraction:.1%}, about {left:,.0f} s left"
                )
        checkpoint()
        for lane in range(lanes):
            settle(lane, 0)
    finally:
        for writer in writers:
            writer.shutdown(wait=True)  # a checkpoint never outlives the step, even when it fails
        checkpoints.close()  # rows written and not committed (a failed step) are dropped


# A checkpoint part smaller than this is rewritten at the swap rather than published as it is, so
# that frequent commits (a slow encoder, a short commit interval) do not leave many small files.
SMALL_PART_BYTES = 8 << 20


def _swap_in(lake_root: str, batch: str, engine, meta: ChunkMeta, slice_rows: int = 4096, *, sink: VectorSink | None = None, parts: list[Part] | None = None) -> None:
    """Replaces the embeddings partition with one vector per current chunk, in one commit.

    The checkpoint parts of this fingerprint are published as they are when each of their rows is
    a current chunk that no earlier part covers (checked on their chunk_id column alone) and they
    are not small; the rows of every other chunk are written then: from the other parts (fresh) and
    then from the partition's published rows of the same fingerprint (reused), each distinct text's
    vector once for every chunk that has that text and no row yet. Peak memory is a few record
    batches plus the compact chunk metadata (`ChunkMeta`) and a few bytes per chunk in numpy arrays
    (which chunks are covered, each chunk's text group), whatever the partition's size.
    """
    sink = _sink(lake_root, sink)
    fingerprint, dimension = engine.fingerprint, engine.dimension
    parts = [p for p in (sink.parts(batch) if parts is None else parts) if p.model == fingerprint]
    texts = meta.texts
    n = meta.num_rows
    covered = np.zeros(n, dtype=bool)  # per chunk row: has its row in the new partition
    n_covered = 0
    keep: list[Part] = []
    rewrite: list[Part] = []
    for part in parts:
        clean = part.size_bytes >= SMALL_PART_BYTES
        rows = [meta.rows_of_ids(ids.column("chunk_id")) for ids in sink.scan_part(part, ["chunk_id"], batch_size=65_536)] if clean else []
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        # Every row a current chunk that no kept part covers, and no chunk twice in the part.
        clean = clean and len(rows) > 0 and bool((rows >= 0).all()) and not covered[rows].any()
        if clean:
            covered[rows] = True
            if int(covered.sum()) - n_covered != len(rows):  # a chunk twice in the part
                covered[rows] = False
                clean = False
        if clean:
            n_covered += len(rows)
            keep.append(part)
        else:
            rewrite.append(part)
    group_of_row = meta.group_of_row()
    needed = np.zeros(len(texts), dtype=bool)
    needed[group_of_row[~covered]] = True
    sources = [("part", p) for p in rewrite + keep] + [("published", None)]  # fresh vectors win over published ones

    def scan(source, columns, batch_size):
        kind, part = source
        if kind == "part":
            return sink.scan_part(part, columns, batch_size=batch_size)
        return sink.scan(batch, columns, filter=pc.field("model") == fingerprint, batch_size=batch_size)

    # Every text still needed must have a vector before anything is written: checked on the key column alone.
    have = ~needed
    for source in sources:
        if have.all():
            break
        for keys in scan(source, ["text_hash"], 65_536):
            _mark(have, texts.group(keys.column("text_hash")))
    if not have.all():
        raise RuntimeError(f"{int((~have).sum())} texts of batch {batch!r} have no vector after embedding; nothing was written")
    # Rows as Delta stores them (vectors as lists: what the parts and the published files read back as).
    schema = lake.writer.delta_schema(tables.embeddings_schema(dimension))
    schema = schema.remove(schema.get_field_index("batch"))
    vector_type = schema.field("embedding").type
    written = ~needed  # per text: its uncovered chunks have their rows

    def record_batches():
        for source in sources:
            if written.all():
                break
            for part in scan(source, ["text_hash", "embedding", "embedded_at"], slice_rows):
                picked, groups = claim_new(texts, written, part.column("text_hash"))
                if not len(picked):
                    continue
                rows, owner = texts.rows_of(groups)
                fresh = ~covered[rows]  # chunks of the text that no kept part covers
                rows, owner = rows[fresh], owner[fresh]
                covered[rows] = True
                source_rows = picked[owner]
                vectors, embedded_at = part.column("embedding"), part.column("embedded_at")
                if not (len(source_rows) == part.num_rows and bool((source_rows == np.arange(part.num_rows)).all())):
                    vectors, embedded_at = vectors.take(pa.array(source_rows)), embedded_at.take(pa.array(source_rows))
                if vectors.type != vector_type:
                    vectors = vectors.cast(vector_type)
                yield pa.record_batch({
                    "doc_id": meta.doc_id.take(pa.array(rows)),
                    "chunk_id": to_arrow(meta.chunk_ids(rows)),
                    "text_hash": to_arrow(texts.keys(groups[owner])),
                    "embedding": vectors,
                    "model": tables.constant_column(fingerprint, len(rows)),
                    "embedded_at": embedded_at,
                })
        if not covered.all():  # a source changed under us between the check and the write
            raise RuntimeError(f"{int((~covered).sum())} chunks of batch {batch!r} lost their vector during the swap; nothing was written")

    sink.publish(batch, keep, pa.RecordBatchReader.from_batches(schema, record_batches()))
