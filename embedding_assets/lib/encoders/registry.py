"""Backend name (EMBEDDING_BACKEND) -> the factory that builds its replicas.

A factory takes (resolved model, device, precision, cache_dir) and returns one backend per
replica (one per GPU for torch on 'cuda'). A new backend is one module with a `Backend` class and
a factory, plus one line in `BACKENDS`. Factories load weights when called, not when registered:
importing this module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import functools
from typing import Callable

from embedding_assets.lib.encoders.base import Backend
from embedding_assets.lib.encoders.onnxrt.backend import create as onnx_backends
from embedding_assets.lib.encoders.torch_backend import create as torch_backends

BackendFactory = Callable[[str, str, str, "str | None"], list[Backend]]

BACKENDS: dict[str, BackendFactory] = {
    "torch": torch_backends,
    "onnx": onnx_backends,
    "onnx-int8": functools.partial(onnx_backends, quantize=True),
}


def backend_factory(name: str) -> BackendFactory:
    """The factory registered under `name`, else an error that lists every known backend."""
    try:
        return BACKENDS[name]
    except KeyError:
        names = ["auto", *BACKENDS]
        raise ValueError(f"EMBEDDING_BACKEND={name!r}: use {', '.join(names[:-1])} or {names[-1]}") from None
