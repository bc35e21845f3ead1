"""The encoders: token ids in, float32 sentence vectors out, on torch (CPU/CUDA) or ONNX Runtime (CPU).

`build_engine` loads a model behind the backend named in `registry.BACKENDS`; `tuning` finds the
fastest token budget for a model on a device; `onnxrt` holds the ONNX export and its int8 gate.
Importing this package imports neither torch nor onnxruntime: they load when an engine is built.
"""

from embedding_assets.lib.encoders.base import SUPPORTED_POOLING, Backend, PoolingSpec
from embedding_assets.lib.encoders.devices import cuda_devices, pick_device, pick_precision
from embedding_assets.lib.encoders.engine import EncoderEngine, EngineStats, build_engine, make_fingerprint
from embedding_assets.lib.encoders.model import BUNDLED_ALIASES, TokenizerInfo, load_tokenizer, model_label, resolve_model, weights_revision
from embedding_assets.lib.encoders.pooling import pool

__all__ = [
    "BUNDLED_ALIASES",
    "SUPPORTED_POOLING",
    "Backend",
    "EncoderEngine",
    "EngineStats",
    "PoolingSpec",
    "TokenizerInfo",
    "build_engine",
    "cuda_devices",
    "load_tokenizer",
    "make_fingerprint",
    "model_label",
    "pick_device",
    "pick_precision",
    "pool",
    "resolve_model",
    "weights_revision",
]
