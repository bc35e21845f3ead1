"""The PyTorch backend: a sentence-transformers model run as its bare transformer plus fp32 pooling.

On CUDA it runs FP16 or BF16 with PyTorch's SDPA attention, one replica per visible GPU; on CPU
fp32. A model whose modules are not Transformer -> Pooling [-> Normalize] with a supported
pooling mode runs through its own sentence-transformers modules instead. torch is imported when
a backend is built, never at module import.
"""

from __future__ import annotations

import numpy as np

from embedding_assets.lib.batching import Batch
from embedding_assets.lib.encoders.devices import cuda_devices
from embedding_assets.lib.encoders.model import forward_params, pooling_spec
from embedding_assets.lib.encoders.pooling import normalize, pool


class TorchBackend:
    """A sentence-transformers model run as its bare transformer plus fp32 pooling."""

    name = "torch"
    recipe = None  # no quantization recipe: the weights run as loaded

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
        self.pooling = pooling_spec(st)
        self.dimension = int(st.get_embedding_dimension())
        transformer = st[0]
        self._model = (transformer.auto_model if self.pooling else st).to(device=device, dtype=dtype).eval()
        self._generic = self.pooling is None
        self._accepts_token_types = "token_type_ids" in forward_params(transformer.auto_model)
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
                    out = normalize(out)
            return out.cpu().numpy()


def create(resolved: str, device: str, precision: str, cache_dir: str | None = None) -> list[TorchBackend]:
    """One replica per GPU the device names (every visible one for 'cuda'), or one on CPU."""
    devices = cuda_devices(device) if device.startswith("cuda") else ["cpu"]
    return [TorchBackend(resolved, d, precision) for d in devices]
