"""The encoder engine's own logic: OOM halving, fp32 recompute of non-finite rows, several replicas.

The real bundled model runs every forward pass. Only what needs a GPU is simulated, by wrapping
the real CPU backend: a replica that raises CUDA's out-of-memory error above a batch size, or
that returns non-finite rows as an overflowing FP16 forward would.
"""

import dataclasses

import numpy as np
import pytest

from embedding_assets.lib.batching import iter_batches
from embedding_assets.lib.encoders import EngineStats, build_engine, pick_device, pick_precision

TEXTS = [f"Sentence number {i} talks about {topic}." for i, topic in enumerate(["cats", "Delta tables", "GPUs", "rivers"] * 10)]


@pytest.fixture(scope="module")
def engine():
    return build_engine("bundled", device="cpu", backend="torch")


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which is what the engine recognizes."""


@dataclasses.dataclass
class SimulatedGpu:
    real: object
    device: str = "cuda:0"
    max_rows: int = 10_000
    nan_every: int = 0
    calls: int = 0
    rows_seen: int = 0

    name = "torch"
    precision = "fp16"

    @property
    def dimension(self):
        return self.real.dimension

    @property
    def pooling(self):
        return self.real.pooling

    def encode(self, batch):
        self.calls += 1
        if len(batch.rows) > self.max_rows:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.rows_seen += len(batch.rows)
        vectors = self.real.encode(batch)
        if self.nan_every:
            vectors[:: self.nan_every] = np.nan
        return vectors


def _variant(engine, backends):
    return dataclasses.replace(engine, backends=backends, _fp32_fallback=engine.backends[0])


def test_out_of_memory_halves_the_batch_and_loses_no_row(engine):
    reference = engine.encode_texts(TEXTS)
    gpu = SimulatedGpu(engine.backends[0], max_rows=3)
    stats = EngineStats()
    vectors = _variant(engine, [gpu]).encode_texts(TEXTS, stats)
    assert stats.oom_splits > 0 and gpu.rows_seen == len(TEXTS)
    assert np.allclose(vectors, reference, atol=1e-5)


def test_non_finite_rows_are_recomputed_in_fp32_and_counted(engine):
    reference = engine.encode_texts(TEXTS)
    stats = EngineStats()
    vectors = _variant(engine, [SimulatedGpu(engine.backends[0], nan_every=4)]).encode_texts(TEXTS, stats)
    assert stats.nonfinite_recomputed >= len(TEXTS) // 4
    assert np.isfinite(vectors).all()
    assert np.allclose(vectors, reference, atol=1e-5)


def test_replicas_share_the_work_and_every_row_comes_back_once(engine):
    reference = engine.encode_texts(TEXTS)
    gpus = [SimulatedGpu(engine.backends[0], device="cuda:0"), SimulatedGpu(engine.backends[0], device="cuda:1")]
    multi = dataclasses.replace(_variant(engine, gpus), token_budget=64)
    stats = EngineStats()
    vectors = multi.encode_texts(TEXTS, stats)
    assert sum(g.rows_seen for g in gpus) == len(TEXTS) == stats.rows
    assert all(g.calls > 0 for g in gpus)
    assert multi.device == "cuda:0,cuda:1"
    assert np.allclose(vectors, reference, atol=1e-5)


def test_reader_errors_surface_in_the_caller(engine):
    def broken():
        yield next(iter_batches([np.array([101, 2000, 102])], 64))
        raise OSError("the length_buckets file vanished")

    with pytest.raises(OSError, match="vanished"):
        list(engine.encode_batches(broken()))


def test_device_and_precision_choices():
    assert pick_device("cpu") == "cpu"
    assert pick_precision("auto", "cpu") == "fp32"
    assert pick_precision("auto", "cuda:0") == "fp16"
    assert pick_precision("bf16", "cuda") == "bf16"
    with pytest.raises(ValueError, match="EMBEDDING_DEVICE"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="EMBEDDING_PRECISION"):
        pick_precision("fp8", "cuda")


def test_fingerprint_names_what_changes_a_vector(engine):
    assert engine.fingerprint.startswith("all-MiniLM-L6-v2@")
    assert engine.fingerprint.endswith("/mean/norm/max256/fp32/torch")
    assert engine.dimension == 384 and engine.max_seq_length == 256
