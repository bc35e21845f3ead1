"""The encoder engine: pre-tokenized, length-sorted batches in, float32 vectors out.

The engine never tokenizes on the hot path: it takes token ids (written by `length_buckets`),
collates the next batch on a background thread while the model runs the current one, and its
backends pool and normalize in fp32 whatever precision the model runs in. It holds one backend
per device (on CUDA one replica per visible GPU), and on out-of-memory it halves the batch and
retries, so no row is lost. A vector that comes out non-finite is recomputed in fp32.
`build_engine` picks the backend from `registry.BACKENDS`.

Import cost matters: torch is imported when an engine is built, never at module import.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET, Batch
from embedding_assets.lib.encoders.base import Backend, encode_in_input_order
from embedding_assets.lib.encoders.devices import pick_device, pick_precision
from embedding_assets.lib.encoders.model import TokenizerInfo, load_tokenizer, model_label, resolve_model, weights_revision
from embedding_assets.lib.encoders.registry import backend_factory
from embedding_assets.lib.encoders.torch_backend import TorchBackend


@dataclass
class EngineStats:
    rows: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    oom_splits: int = 0
    nonfinite_recomputed: int = 0
    seconds: float = 0.0

    @property
    def padded_fraction(self) -> float:
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.real_tokens / self.padded_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds else 0.0


@dataclass
class EncoderEngine:
    """One model, ready to embed: its tokenizer, one backend per device, and its fingerprint."""

    model: str
    backends: list[Backend]
    tokenizer: TokenizerInfo
    fingerprint: str
    token_budget: int = DEFAULT_TOKEN_BUDGET
    budget_source: str = "default"
    # Batches launched on a pipelined backend and not yet awaited: the device has work queued for
    # that many batches when the host thread is late (the GIL, a busy CPU); each holds only its
    # inputs and output on the device (activations are freed in stream order as launches go).
    in_flight: int = 4
    _fp32_fallback: object = field(default=None, repr=False)

    @property
    def dimension(self) -> int:
        return self.backends[0].dimension

    @property
    def device(self) -> str:
        return ",".join(b.device for b in self.backends)

    @property
    def precision(self) -> str:
        return self.backends[0].precision

    @property
    def backend(self) -> str:
        return self.backends[0].name

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    def encode_batches(self, batches: Iterable[Batch], stats: EngineStats | None = None, prefetch: int = 4) -> Iterator[tuple[Batch, np.ndarray]]:
        """Embeds each batch; yields (batch, vectors) in completion order.

        `batches` is consumed on a background thread (reading and collating overlap the model's
        work); with several backends (GPUs) each one pulls the next batch when it is free, so work
        splits by tokens, not by batch count.
        """
        stats = stats if stats is not None else EngineStats()
        inbox: queue.Queue = queue.Queue(maxsize=prefetch)
        outbox: queue.Queue = queue.Queue(maxsize=prefetch + len(self.backends))
        stop = threading.Event()
        done = object()

        def produce():
            try:
                for batch in batches:
                    while not stop.is_set():
                        try:
                            inbox.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # surface reader errors in the caller's thread
                outbox.put(exc)
            finally:
                for _ in self.backends:
                    inbox.put(done)

        def work(backend):
            try:
                if getattr(backend, "pipelined", False):
                    for batch, vectors in self._pipeline(backend, iter(inbox.get, done), stop, stats, self.in_flight):
                        outbox.put((batch, vectors))
                    return
                while not stop.is_set():
                    batch = inbox.get()
                    if batch is done:
                        break
                    outbox.put((batch, self._encode_resilient(backend, batch, stats)))
            except BaseException as exc:
                outbox.put(exc)
            finally:
                outbox.put(done)

        threads = [threading.Thread(target=produce, daemon=True, name="embedding-reader")]
        threads += [threading.Thread(target=work, args=(b,), daemon=True, name=f"embedding-{b.device}") for b in self.backends]
        started = time.perf_counter()
        for t in threads:
            t.start()
        finished = 0
        try:
            while finished < len(self.backends):
                item = outbox.get()
                if item is done:
                    finished += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                batch, vectors = item
                stats.rows += len(batch.rows)
                stats.real_tokens += batch.real_tokens
                stats.padded_tokens += batch.padded_tokens
                stats.batches += 1
                stats.seconds = time.perf_counter() - started
                yield batch, vectors
        finally:
            stop.set()
            while True:  # unblock workers waiting on a full outbox
                try:
                    outbox.get_nowait()
                except queue.Empty:
                    break

    def _pipeline(self, backend, batches: Iterator[Batch], stop: threading.Event, stats: EngineStats, in_flight: int = 4) -> Iterator[tuple[Batch, np.ndarray]]:
        """Batches through a pipelined backend (CUDA), in order: batch n+1 is staged (its copy to the
        device queued) and launched (its forward pass queued behind batch n's) before batch n's
        result is awaited, so the copy and the host's work of queueing the next forward pass overlap
        the device's compute, and the device has the next batch when the current one ends, even when
        this thread is late to return (the GIL). At most `in_flight` batches are launched and not
        awaited. A batch that fails with out-of-memory is redone through `_encode_resilient`
        (halving), after the failure has been waited out."""
        launched: collections.deque = collections.deque()  # (staged, device output or None, out-of-memory error or None)
        for batch in batches:
            if stop.is_set():
                return
            launched.append(self._launch(backend, backend.stage(batch)))
            if len(launched) >= max(in_flight, 2):
                oldest = launched.popleft()
                yield oldest[0][0], self._finish(backend, oldest, stats)
        while launched:
            oldest = launched.popleft()
            yield oldest[0][0], self._finish(backend, oldest, stats)

    def _launch(self, backend, staged):
        try:
            return staged, backend.launch(staged), None
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            return staged, None, exc

    def _finish(self, backend, launched, stats: EngineStats) -> np.ndarray:
        staged, out, failure = launched
        batch = staged[0]
        if failure is None:
            try:
                return self._checked(batch, backend.finish(out), stats)
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
        _empty_cuda_cache()
        return self._encode_resilient(backend, batch, stats)

    def _encode_resilient(self, backend, batch: Batch, stats: EngineStats) -> np.ndarray:
        try:
            vectors = backend.encode(batch)
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(batch.rows) == 1:
                raise
            _empty_cuda_cache()
            stats.oom_splits += 1
            half = len(batch.rows) // 2
            parts = [_slice(batch, 0, half), _slice(batch, half, len(batch.rows))]
            return np.concatenate([self._encode_resilient(backend, part, stats) for part in parts])
        return self._checked(batch, vectors, stats)

    def _checked(self, batch: Batch, vectors: np.ndarray, stats: EngineStats) -> np.ndarray:
        """Recomputes in fp32 the rows whose vector came out non-finite."""
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            stats.nonfinite_recomputed += int(bad.sum())
            vectors[bad] = self._fp32().encode(_rows(batch, np.flatnonzero(bad)))
        return vectors

    def _fp32(self):
        """An fp32 CPU copy of the model, loaded on first need, for rows that overflowed."""
        if self.precision == "fp32" and self.backends[0].device == "cpu" and self.backend == "torch":
            return self.backends[0]
        if self._fp32_fallback is None:
            self._fp32_fallback = TorchBackend(resolve_model(self.model), "cpu", "fp32")
        return self._fp32_fallback

    def encode_ids(self, token_ids: Sequence[Sequence[int]], stats: EngineStats | None = None) -> np.ndarray:
        """Vectors for token id lists in any order, returned in input order."""
        return encode_in_input_order(token_ids, self.dimension, self.token_budget, lambda batches: self.encode_batches(batches, stats))

    def encode_texts(self, texts: Sequence[str], stats: EngineStats | None = None) -> np.ndarray:
        """Tokenizes and embeds texts (for queries and tests; bulk work goes through encode_batches)."""
        return self.encode_ids(self.tokenizer.encode_batch(list(texts)), stats)


def _slice(batch: Batch, start: int, end: int) -> Batch:
    return _rows(batch, np.arange(start, end))


def _rows(batch: Batch, index: np.ndarray) -> Batch:
    mask = batch.attention_mask[index]
    width = max(int(mask.sum(axis=1).max()), 1)
    keys = None if batch.keys is None else batch.keys[index]
    return Batch(rows=batch.rows[index], input_ids=batch.input_ids[index, :width], attention_mask=mask[:, :width], keys=keys)


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_fingerprint(model: str, revision: str, pooling: str, normalize: bool, max_len: int, precision: str, backend: str, recipe: str | None = None) -> str:
    """Everything that changes a vector, readable: model@revision/pooling/norm/max/precision/backend[:recipe].

    `recipe` names the int8 quantization recipe the fidelity gate chose: another recipe (a new
    threshold, another onnxruntime) gives other vectors, so it is another fingerprint.
    """
    label = f"{backend}:{recipe}" if recipe else backend
    return f"{model_label(model)}@{revision}/{pooling}/{'norm' if normalize else 'raw'}/max{max_len}/{precision}/{label}"


def build_engine(model: str, device: str = "auto", precision: str = "auto", backend: str = "auto", cache_dir: str | None = None) -> EncoderEngine:
    """Loads a model for embedding on the chosen device, precision and backend."""
    resolved = resolve_model(model)
    device = pick_device(device)
    precision = pick_precision(precision, device)
    if backend == "auto":
        # On CPU, ONNX Runtime fp32 is measured faster than torch with the same vectors
        # (benchmarks/RESULTS.md); on CUDA, torch runs FP16/BF16 with SDPA.
        backend = "onnx" if device == "cpu" else "torch"
    backends = backend_factory(backend)(resolved, device, precision, cache_dir)
    first = backends[0]
    pooling = first.pooling
    tokenizer = load_tokenizer(model)
    fingerprint = make_fingerprint(
        model,
        weights_revision(resolved),
        pooling.mode if pooling else "st",
        bool(pooling.normalize) if pooling else True,
        tokenizer.max_seq_length,
        first.precision,
        first.name,
        first.recipe,
    )
    return EncoderEngine(model=model, backends=backends, tokenizer=tokenizer, fingerprint=fingerprint)
