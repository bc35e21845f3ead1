"""The backend registry: every EMBEDDING_BACKEND value maps to a factory, an unknown one says what exists."""

import pytest

from embedding_assets.lib.encoders import build_engine
from embedding_assets.lib.encoders.registry import BACKENDS, backend_factory


def test_known_backends_are_registered():
    assert {"torch", "onnx", "onnx-int8"} <= set(BACKENDS)
    assert all(callable(backend_factory(name)) for name in BACKENDS)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match="EMBEDDING_BACKEND='tensorrt'") as raised:
        backend_factory("tensorrt")
    assert all(name in str(raised.value) for name in ("auto", *BACKENDS))
    with pytest.raises(ValueError, match="use auto, torch, onnx or onnx-int8"):
        build_engine("bundled", device="cpu", backend="tensorrt")


def test_onnx_backends_refuse_a_gpu():
    with pytest.raises(ValueError, match="runs on CPU only"):
        backend_factory("onnx-int8")("unused", "cuda:0", "fp16", None)
