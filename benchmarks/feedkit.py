"""Benchmark-only encoders and a fast length_buckets builder for the embeddings-step benchmarks.

Not a product backend: `ZeroCostBackend` returns zero vectors of the right shape (it measures the
feed path: reading, batching, collating, checkpointing and the swap, with the model's cost taken
out), and `RateLimitedBackend` sleeps in proportion to the batch's real tokens (a simulated GPU of
a given tokens/s). `register_benchmark_backends` adds them to the backend registry under names
that say what they are ("zero-cost-benchmark", "rate-limited-benchmark"), only in the process that
calls it (benchmarks and tests); nothing registers them for users.

`write_length_buckets` writes a length_buckets partition directly with the lake's streaming
writer (random token ids, one chunk per document, sorted by length like the real stage writes
it), so a 30 M-token partition takes seconds instead of the chunk and tokenize stages' minutes.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from embedding_assets.lib.encoders.engine import EncoderEngine
from embedding_assets.lib.encoders.model import load_tokenizer

DIMENSION = 384  # all-MiniLM-L6-v2's: the vector buffers and tables are real size


class ZeroCostBackend:
    """Vectors of the right shape at nearly no cost (rows of one preallocated matrix): the feed path's ceiling.

    The matrix holds random unit vectors, not zeros: zero vectors compress ~100x in Parquet, so the
    lake's writer would keep one data file open for the whole partition and the tables would be
    unrealistically small; random floats compress like real embeddings.
    """

    name = "zero-cost-benchmark"
    recipe = None
    pooling = None
    precision = "fp32"

    def __init__(self, dimension: int = DIMENSION, device: str = "cpu", max_rows: int = 8192):
        self.dimension, self.device = dimension, device
        vectors = np.random.default_rng(0).standard_normal((max_rows, dimension)).astype(np.float32)
        self._vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode(self, batch) -> np.ndarray:
        n = len(batch.rows)
        if n > len(self._vectors):
            self._vectors = np.resize(self._vectors, (n, self.dimension))
        return self._vectors[:n].copy()  # the caller may write into it (non-finite recompute)


class RateLimitedBackend(ZeroCostBackend):
    """A simulated accelerator of `tokens_per_s`: each batch occupies it for real_tokens / tokens_per_s.

    It keeps a device clock, like a GPU working through its queue: a batch starts when the device
    is free (or at once when the device sat idle waiting for it: that time is lost). With
    `pipelined` (the default) it has the CUDA backend's interface: `launch` queues a batch on the
    device clock and returns at once, `finish` waits for the batch's end (the engine launches the
    next batch before it waits, as it does on a GPU); without, `encode` queues and waits in one
    call (a synchronous device: nothing is queued while the host is busy). Sleeping to the clock,
    not for each batch's duration, keeps the sleeps' own overshoot (a few hundred microseconds on a
    busy machine) from slowing the simulated device.
    """

    name = "rate-limited-benchmark"

    def __init__(self, tokens_per_s: float = 5e6, dimension: int = DIMENSION, device: str = "cpu", pipelined: bool = True):
        super().__init__(dimension, device)
        self.tokens_per_s = tokens_per_s
        self.pipelined = pipelined
        self._free_at = 0.0

    def stage(self, batch):
        return (batch,)

    def launch(self, staged):
        batch = staged[0]
        start = max(time.perf_counter(), self._free_at)
        self._free_at = start + batch.real_tokens / self.tokens_per_s
        return batch, self._free_at

    def finish(self, launched) -> np.ndarray:
        batch, ends = launched
        pause = ends - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # releases the GIL, as a GPU wait does
        return super().encode(batch)

    def encode(self, batch) -> np.ndarray:
        return self.finish(self.launch(self.stage(batch)))


def register_benchmark_backends() -> None:
    """Adds the benchmark backends to the registry of this process only."""
    from embedding_assets.lib.encoders import registry

    registry.BACKENDS.setdefault(ZeroCostBackend.name, lambda resolved, device, precision, cache_dir=None: [ZeroCostBackend()])
    registry.BACKENDS.setdefault(RateLimitedBackend.name, lambda resolved, device, precision, cache_dir=None: [RateLimitedBackend()])


def benchmark_engine(backend, tokenizer_model: str = "bundled") -> EncoderEngine:
    """An engine over a benchmark backend, with the bundled model's tokenizer (its fingerprint
    matches length_buckets written by `write_length_buckets`)."""
    return EncoderEngine(
        model=backend.name, backends=[backend], tokenizer=load_tokenizer(tokenizer_model),
        fingerprint=f"{backend.name}/dim{backend.dimension}/fp32",
    )


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_keys(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """n random lowercase hex strings of 2*nbytes characters, built without Python objects."""
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    chars = np.empty((n, 2 * nbytes), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    offsets = np.arange(n + 1, dtype=np.int32) * (2 * nbytes)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def write_length_buckets(lake_root: str, batch: str, chunks: int, min_tokens: int, max_tokens: int, *, tokenizer_model: str = "bundled", seed: int = 0, slice_rows: int = 65_536) -> dict:
    """A length_buckets partition of `chunks` one-chunk documents of min..max tokens (uniform),
    all texts distinct, written straight with the lake's streaming writer."""
    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables

    tokenizer = load_tokenizer(tokenizer_model).fingerprint
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(min_tokens, max_tokens + 1, size=chunks).astype(np.int32))

    def record_batches():
        for start in range(0, chunks, slice_rows):
            n_tok = lengths[start:start + slice_rows]
            n = len(n_tok)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(n_tok, out=offsets[1:])
            values = rng.integers(1000, 30000, size=int(offsets[-1]), dtype=np.int32)
            ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
            yield pa.record_batch({
                "batch": pa.array([batch] * n, pa.string()),
                "chunk_id": hex_keys(rng, n, 16),
                "doc_id": hex_keys(rng, n, 8),
                "text_hash": hex_keys(rng, n, 32),
                "position": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "bucket": pa.array(np.minimum(n_tok // 32, 15).astype(np.int32)),
                "n_tokens": pa.array(n_tok),
                "input_ids": ids,
                "tokenizer": pa.array([tokenizer] * n, pa.string()),
            }, schema=tables.LENGTH_BUCKETS)

    started = time.perf_counter()
    lake.replace_partition(lake_root, tables.BUCKETS, batch, pa.RecordBatchReader.from_batches(tables.LENGTH_BUCKETS, record_batches()))
    return {"chunks": chunks, "tokens": int(lengths.sum()), "setup_s": time.perf_counter() - started}
