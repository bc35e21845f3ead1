"""The encoder engine: pre-tokenized, length-sorted batches in, float32 vectors out.

The engine never tokenizes on the hot path: it takes token ids (written by `length_buckets`),
collates the next batch on a background thread while the model runs the current one, and pools
and normalizes in fp32 whatever precision the model runs in. On CUDA it runs FP16 or BF16 with
PyTorch's SDPA attention, one replica per visible GPU, and on out-of-memory it halves the batch
and retries, so no row is lost. A vector that comes out non-finite is recomputed in fp32.

Import cost matters: torch is imported when an engine is built, never at module import.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET, Batch, iter_batches
from embedding_assets.lib.model import TokenizerInfo, load_tokenizer, model_label, resolve_model, weights_revision

SUPPORTED_POOLING = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")


class Backend(Protocol):
    name: str  # torch, onnx, onnx-int8
    device: str  # cpu, cuda:0, ...
    precision: str  # fp32, fp16, bf16, int8
    dimension: int

    def encode(self, batch: Batch) -> np.ndarray: ...  # float32 [rows, dimension]


def pick_device(device: str = "auto") -> str:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"EMBEDDING_DEVICE={device!r}: use auto, cpu, cuda or cuda:N")
    if device == "cpu":
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(f"EMBEDDING_DEVICE={device!r} but torch sees no CUDA device")
    return device


def pick_precision(precision: str, device: str) -> str:
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"EMBEDDING_PRECISION={precision!r}: use auto, fp32, fp16 or bf16")
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return precision


def cuda_devices(device: str) -> list[str]:
    """Every GPU the engine should hold a replica on: all visible ones for 'cuda', one for 'cuda:N'."""
    import torch

    if device == "cuda":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device]


@dataclass(frozen=True)
class PoolingSpec:
    mode: str
    normalize: bool


def pool(token_embeddings, attention_mask, mode: str):
    """Sentence vectors from token vectors, computed in fp32."""
    import torch

    hidden = token_embeddings.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len_tokens":
        return summed / counts.sqrt()
    return summed / counts


class TorchBackend:
    """A sentence-transformers model run as its bare transformer plus fp32 pooling."""

    name = "torch"

    def __init__(self, resolved: str, device: str, precision: str):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # the run's log, not a terminal bar, reports progress
        self.device, self.precision = device, precision
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if device == "cpu" and precision != "fp32":
            raise ValueError(f"precision {precision} is for CUDA; use fp32 (or the onnx backend) on CPU")
        st = SentenceTransformer(resolved, device=device, model_kwargs={"attn_implementation": "sdpa"})
        self.pooling = _pooling_spec(st)
        self.dimension = int(st.get_embedding_dimension())
        transformer = st[0]
        self._model = (transformer.auto_model if self.pooling else st).to(device=device, dtype=dtype).eval()
        self._generic = self.pooling is None
        self._accepts_token_types = "token_type_ids" in _forward_params(transformer.auto_model)
        self._torch = torch

    def encode(self, batch: Batch) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(batch.input_ids).to(self.device, non_blocking=True)
            mask = torch.from_numpy(batch.attention_mask).to(self.device, non_blocking=True)
            if self._generic:
                out = self._model({"input_ids": ids, "attention_mask": mask})["sentence_embedding"].float()
            else:
                kwargs = {"token_type_ids": torch.zeros_like(ids)} if self._accepts_token_types else {}
                hidden = self._model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
                out = pool(hidden, mask, self.pooling.mode)
                if self.pooling.normalize:
                    out = torch.nn.functional.normalize(out, p=2, dim=1)
            return out.cpu().numpy()


def _forward_params(module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


def _pooling_spec(st) -> PoolingSpec | None:
    """Pooling and normalization of a Transformer -> Pooling [-> Normalize] pipeline, else None."""
    names = [type(m).__name__ for m in st]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    mode = getattr(st[1], "pooling_mode", None)
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else None
    if mode not in SUPPORTED_POOLING:
        return None
    return PoolingSpec(mode=mode, normalize=names[-1] == "Normalize")


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
    backends: list
    tokenizer: TokenizerInfo
    fingerprint: str
    token_budget: int = DEFAULT_TOKEN_BUDGET
    budget_source: str = "default"
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
        arrays = [np.asarray(t, dtype=np.int64) for t in token_ids]
        order = np.argsort([len(a) for a in arrays], kind="stable")
        out = np.zeros((len(arrays), self.dimension), dtype=np.float32)
        sorted_arrays = [arrays[i] for i in order]
        for batch, vectors in self.encode_batches(iter_batches(sorted_arrays, self.token_budget), stats):
            out[order[batch.rows]] = vectors
        return out

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
    if backend == "torch":
        devices = cuda_devices(device) if device.startswith("cuda") else ["cpu"]
        backends = [TorchBackend(resolved, d, precision) for d in devices]
    elif backend in ("onnx", "onnx-int8"):
        if device != "cpu":
            raise ValueError(f"backend {backend} runs on CPU only; use torch on {device}")
        from embedding_assets.lib.onnx_backend import OnnxBackend

        backends = [OnnxBackend(resolved, quantize=backend == "onnx-int8", cache_dir=cache_dir)]
    else:
        raise ValueError(f"EMBEDDING_BACKEND={backend!r}: use auto, torch, onnx or onnx-int8")
    first = backends[0]
    pooling = getattr(first, "pooling", None)
    tokenizer = load_tokenizer(model)
    fingerprint = make_fingerprint(
        model,
        weights_revision(resolved),
        pooling.mode if pooling else "st",
        bool(pooling.normalize) if pooling else True,
        tokenizer.max_seq_length,
        first.precision,
        first.name,
        getattr(first, "recipe", None),
    )
    return EncoderEngine(model=model, backends=backends, tokenizer=tokenizer, fingerprint=fingerprint)
