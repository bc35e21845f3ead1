"""The ONNX Runtime CPU backend: the model's transformer exported once, run from token ids.

The export (`export.py`) is reused from the cache when it exists; pooling and normalization run
in numpy fp32 with the same code as the torch backend (`encoders.pooling`). With `quantize=True`
the int8 recipe ladder and its fidelity gate (`int8.py`) choose an int8 model; if no recipe
passes the gate the backend runs fp32 (`name` 'onnx', `precision` 'fp32') and says why in
`fallback_reason`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from embedding_assets.lib.batching import Batch
from embedding_assets.lib.cpus import available_cpus
from embedding_assets.lib.encoders.base import SUPPORTED_POOLING, PoolingSpec, UnsupportedModelError, encode_in_input_order
from embedding_assets.lib.encoders.model import load_tokenizer
from embedding_assets.lib.encoders.onnxrt.export import default_cache_dir, export_key, export_model, read_json, session
from embedding_assets.lib.encoders.onnxrt.int8 import GATE_THRESHOLD, RECIPES, choose_recipe
from embedding_assets.lib.encoders.pooling import normalize, pool


class OnnxBackend:
    """Backend protocol over ONNX Runtime on CPU: `encode(batch)` -> pooled, normalized fp32 vectors."""

    device = "cpu"

    def __init__(
        self,
        resolved: str,
        quantize: bool = False,
        cache_dir: str | None = None,
        gate_threshold: float = GATE_THRESHOLD,
        threads: int | None = None,
        recipes: tuple[str, ...] = RECIPES,
    ):
        self.resolved = resolved
        self.cache_dir = Path(os.path.expanduser(cache_dir or default_cache_dir()))
        # More threads than the cores this process may use (a Kubernetes CPU limit) thrash.
        self.threads = threads or available_cpus()
        self.gate_threshold = gate_threshold
        self.model_dir = self.cache_dir / "onnx" / export_key(resolved)
        self.exported = False  # True when this instance ran the export (False: reused the cache)
        if not (self.model_dir / "meta.json").exists() or not (self.model_dir / "model.onnx").exists():
            export_model(resolved, self.model_dir)
            self.exported = True
        meta = read_json(self.model_dir / "meta.json")
        if meta.get("pooling") not in SUPPORTED_POOLING:
            raise UnsupportedModelError(f"cached export {self.model_dir} has unsupported pooling {meta.get('pooling')!r}")
        self.pooling = PoolingSpec(mode=meta["pooling"], normalize=bool(meta["normalize"]))
        self.dimension = int(meta["dimension"])
        self.inputs = list(meta["inputs"])
        self.fp32_path = self.model_dir / "model.onnx"

        self.fallback_reason: str | None = None
        self.gate_cosine: float | None = None  # mean cosine of int8 to fp32 on the calibration sample
        self.gate_min_cosine: float | None = None
        self.gate_from_cache = False
        self.recipe: str | None = None
        self.model_path = self.fp32_path
        self.name, self.precision = "onnx", "fp32"
        self._session = None
        if quantize:
            gate = choose_recipe(self.model_dir, self.fp32_path, recipes, gate_threshold, self.threads, self._embed_texts)
            self.gate_cosine, self.gate_min_cosine = gate.mean_cosine, gate.min_cosine
            self.gate_from_cache, self.fallback_reason = gate.from_cache, gate.fallback_reason
            if gate.recipe is not None:
                self.name, self.precision, self.recipe = "onnx-int8", "int8", gate.recipe
                self.model_path = gate.model_path
            self._session = gate.session
        if self._session is None:
            self._session = session(str(self.model_path), self.threads)

    def _embed_texts(self, session, texts: list[str]) -> np.ndarray:
        token_ids = load_tokenizer(self.resolved).encode_batch(texts)
        return encode_in_input_order(token_ids, self.dimension, 4096, lambda batches: ((b, self._run(session, b)) for b in batches))

    # -- the Backend protocol
    def encode(self, batch: Batch) -> np.ndarray:
        return self._run(self._session, batch)

    def _run(self, session, batch: Batch) -> np.ndarray:
        ids = np.ascontiguousarray(batch.input_ids, dtype=np.int64)
        mask = np.ascontiguousarray(batch.attention_mask, dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(["last_hidden_state"], feed)[0]
        vectors = pool(hidden, mask, self.pooling.mode)
        if self.pooling.normalize:
            vectors = normalize(vectors)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def create(resolved: str, device: str, precision: str, cache_dir: str | None = None, *, quantize: bool = False) -> list[OnnxBackend]:
    """The ONNX backend (one instance: ONNX Runtime spreads a batch over the CPU's cores)."""
    if device != "cpu":
        raise ValueError(f"backend {'onnx-int8' if quantize else 'onnx'} runs on CPU only; use torch on {device}")
    return [OnnxBackend(resolved, quantize=quantize, cache_dir=cache_dir)]

