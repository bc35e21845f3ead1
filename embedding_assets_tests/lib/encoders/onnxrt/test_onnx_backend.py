"""The ONNX Runtime backend: same vectors as torch, an int8 fidelity gate that can say no, a cache that is reused."""

import os

import numpy as np
import pytest

from embedding_assets.lib.encoders import PoolingSpec, build_engine, onnxrt, pool, resolve_model
from embedding_assets.lib.encoders.onnxrt import RECIPES, OnnxBackend, UnsupportedModelError

TEXTS = [
    "Cats are small domesticated felines that purr.",
    "A",
    "Delta tables keep every version; partitions are written one batch at a time. " * 12,
    "日本語のテキストです。これは二番目の文です。 שלום עולם 🎉",
    "def f(x):\n    return x ** 2  # squares its argument",
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """One export per test session (about 15 s), shared by every test here."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    backend = OnnxBackend(resolve_model("bundled"), cache_dir=str(cache))
    assert backend.exported
    return str(cache)


@pytest.fixture(scope="session")
def torch_vectors():
    engine = build_engine("bundled", device="cpu", precision="fp32", backend="torch")
    return engine.encode_texts(TEXTS)


def test_onnx_fp32_matches_torch(onnx_cache, torch_vectors):
    engine = build_engine("bundled", device="cpu", backend="onnx", cache_dir=onnx_cache)
    assert (engine.backend, engine.precision, engine.device) == ("onnx", "fp32", "cpu")
    assert engine.fingerprint.endswith("/fp32/onnx") and engine.dimension == 384
    vectors = engine.encode_texts(TEXTS)  # one padded batch of mixed lengths
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    cosine = np.sum(vectors * torch_vectors, axis=1)
    assert cosine.min() >= 0.999, cosine
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_export_is_cached_and_reused(onnx_cache):
    backend = OnnxBackend(resolve_model("bundled"), cache_dir=onnx_cache)
    assert not backend.exported
    model_dir = backend.model_dir
    assert model_dir.parent.name == "onnx" and (model_dir / "model.onnx").exists() and (model_dir / "meta.json").exists()
    assert not [p for p in os.listdir(model_dir.parent) if ".tmp-" in p]  # the atomic write left no temp folder
    mtime = (model_dir / "model.onnx").stat().st_mtime_ns
    OnnxBackend(resolve_model("bundled"), cache_dir=onnx_cache)
    assert (model_dir / "model.onnx").stat().st_mtime_ns == mtime


def test_int8_passes_its_gate_and_the_gate_is_cached(onnx_cache, torch_vectors):
    backend = OnnxBackend(resolve_model("bundled"), quantize=True, cache_dir=onnx_cache, recipes=RECIPES[:1])
    assert (backend.name, backend.precision, backend.fallback_reason) == ("onnx-int8", "int8", None)
    assert backend.gate_cosine >= 0.99 and backend.recipe == RECIPES[0]
    assert (backend.model_dir / "int8-gate.json").exists()
    engine = build_engine("bundled", device="cpu", backend="onnx-int8", cache_dir=onnx_cache)
    assert engine.fingerprint.endswith(f"/int8/onnx-int8:{engine.backends[0].recipe}") and engine.backends[0].recipe == RECIPES[0]
    assert engine.backends[0].gate_from_cache  # no second quantization or calibration
    cosine = np.sum(engine.encode_texts(TEXTS) * torch_vectors, axis=1)
    assert cosine.mean() >= 0.98, cosine


def test_int8_falls_back_to_fp32_when_the_gate_fails(onnx_cache, torch_vectors):
    backend = OnnxBackend(resolve_model("bundled"), quantize=True, cache_dir=onnx_cache, gate_threshold=0.99999, recipes=RECIPES[:1])
    assert (backend.name, backend.precision) == ("onnx", "fp32")
    assert "fidelity gate" in backend.fallback_reason and "0.99999" in backend.fallback_reason
    assert 0.9 < backend.gate_cosine < 0.99999
    assert backend.model_path.name == "model.onnx"
    from embedding_assets.lib.batching import collate
    from embedding_assets.lib.encoders import load_tokenizer

    ids = [np.asarray(t) for t in load_tokenizer("bundled").encode_batch(TEXTS)]
    cosine = np.sum(backend.encode(collate(ids)) * torch_vectors, axis=1)
    assert cosine.min() >= 0.999


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
def test_numpy_pooling_is_the_engine_pooling(mode):
    import torch

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((4, 7, 8)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6, [1] * 5 + [0] * 2])
    expected = pool(torch.from_numpy(hidden), torch.from_numpy(mask), mode).numpy()
    assert np.allclose(pool(hidden, mask, mode), expected, atol=1e-6)


def test_unsupported_pipeline_is_a_clear_error():
    class Transformer:
        pass

    class Pooling:
        pooling_mode = "weightedmean"

    class Dense:
        pass

    class FakeST(list):
        pass

    with pytest.raises(UnsupportedModelError, match="EMBEDDING_BACKEND=torch"):
        onnxrt.pooling_of(FakeST([Transformer(), Pooling(), Dense()]))
    with pytest.raises(UnsupportedModelError, match="pooling mode"):
        pool(np.zeros((1, 2, 3), np.float32), np.ones((1, 2)), "weightedmean")
    assert PoolingSpec("mean", True).mode == "mean"
