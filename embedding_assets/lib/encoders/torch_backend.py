"""The PyTorch backend: a sentence-transformers model run as its bare transformer plus fp32 pooling.

On CUDA it runs FP16 or BF16 with PyTorch's SDPA attention, one replica per visible GPU; on CPU
fp32. On CUDA the engine pipelines batches through `stage` / `launch` / `finish`: a batch's token
ids are copied into a reused pinned host buffer and sent to the device asynchronously on a side
stream (`PinnedStaging`) while the previous batch still computes, so the next batch is on the
device before the current one ends. A model whose modules are not Transformer -> Pooling [-> Normalize] with a supported
pooling mode runs through its own sentence-transformers modules instead. torch is imported when
a backend is built, never at module import.
"""

from __future__ import annotations

import numpy as np

from embedding_assets.lib.batching import Batch
from embedding_assets.lib.encoders.devices import cuda_devices
from embedding_assets.lib.encoders.model import forward_params, pooling_spec
from embedding_assets.lib.encoders.pooling import normalize, pool


class PinnedStaging:
    """Host -> device copies for one CUDA device through reused pinned buffers and a side stream.

    `slots` pinned int64 host buffers are used round-robin; each holds one batch's input ids and
    attention mask laid end to end and grows (doubling) when a batch needs more. A slot is written
    again only after the copy that last read it has finished (its event), so with two slots the
    copy of batch n+1 overlaps the compute of batch n without ever overwriting data in flight.
    `torch` is passed in (tests pass a stand-in that mocks CUDA).
    """

    def __init__(self, torch, device: str, slots: int = 2):
        self.torch, self.device = torch, device
        self.stream = torch.cuda.Stream(device=device)
        self.buffers: list = [None] * slots
        self.events: list = [None] * slots
        self.next_slot = 0

    def _host_buffer(self, slot: int, numel: int):
        buffer = self.buffers[slot]
        if buffer is None or buffer.numel() < numel:
            size = max(numel, 2 * buffer.numel() if buffer is not None else 0)
            buffer = self.torch.empty(size, dtype=self.torch.int64, pin_memory=True)
            self.buffers[slot] = buffer
        return buffer

    def to_device(self, batch: Batch):
        """(input_ids, attention_mask, ready event): device tensors whose copy is queued on the side stream."""
        torch = self.torch
        slot, self.next_slot = self.next_slot, (self.next_slot + 1) % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the copy that last read this buffer is done
        shape, n = batch.input_ids.shape, batch.input_ids.size
        host = self._host_buffer(slot, 2 * n)
        host[:n].copy_(torch.from_numpy(batch.input_ids.reshape(-1)))
        host[n:2 * n].copy_(torch.from_numpy(batch.attention_mask.reshape(-1)))
        with torch.cuda.stream(self.stream):
            device = host[:2 * n].to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        self.events[slot] = ready
        return device[:n].view(shape), device[n:2 * n].view(shape), ready


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
        self._staging = PinnedStaging(torch, device) if device.startswith("cuda") else None

    @property
    def pipelined(self) -> bool:
        """Whether the engine should use stage/launch/finish (CUDA) rather than `encode`."""
        return self._staging is not None

    def stage(self, batch: Batch):
        """Queues the batch's copy to the device (pinned buffer, side stream); returns a handle for `launch`."""
        return (batch, *self._staging.to_device(batch))

    def launch(self, staged):
        """Queues the forward pass of a staged batch on the device's current stream (does not wait)."""
        torch = self._torch
        _, ids, mask, ready = staged
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(ready)
        ids.record_stream(compute)  # allocated on the side stream, used on this one
        mask.record_stream(compute)
        with torch.inference_mode():
            return self._forward(ids, mask)

    def finish(self, out) -> np.ndarray:
        """Waits for a launched batch and returns its float32 vectors."""
        return out.cpu().numpy()

    def encode(self, batch: Batch) -> np.ndarray:
        if self._staging is not None:
            return self.finish(self.launch(self.stage(batch)))
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(batch.input_ids)
            mask = torch.from_numpy(batch.attention_mask)
            return self._forward(ids, mask).numpy()

    def _forward(self, ids, mask):
        """The forward pass and fp32 pooling of device tensors (queued, not waited for on CUDA)."""
        if self._generic:
            return self._model({"input_ids": ids, "attention_mask": mask})["sentence_embedding"].float()
        kwargs = {"token_type_ids": self._torch.zeros_like(ids)} if self._accepts_token_types else {}
        hidden = self._model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        out = pool(hidden, mask, self.pooling.mode)
        return normalize(out) if self.pooling.normalize else out


def create(resolved: str, device: str, precision: str, cache_dir: str | None = None) -> list[TorchBackend]:
    """One replica per GPU the device names (every visible one for 'cuda'), or one on CPU."""
    devices = cuda_devices(device) if device.startswith("cuda") else ["cpu"]
    return [TorchBackend(resolved, d, precision) for d in devices]
