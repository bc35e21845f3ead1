"""Where and in what precision the model runs: EMBEDDING_DEVICE and EMBEDDING_PRECISION resolved.

torch is imported only when a CUDA device has to be looked up, never at module import.
"""

from __future__ import annotations

from embedding_assets.lib.encoders.cuda_check import resolve_cuda_device


def pick_device(device: str = "auto") -> str:
    """EMBEDDING_DEVICE resolved; CUDA asked for (or a GPU given to this container) and unusable fails
    here, with the reason, before any weight loads (`cuda_check`)."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"EMBEDDING_DEVICE={device!r}: use auto, cpu, cuda or cuda:N")
    return resolve_cuda_device(device)


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
