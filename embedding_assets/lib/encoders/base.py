"""What every encoder backend is: the `Backend` protocol, the pooling it applies, and its errors.

A backend turns one collated batch of token ids into float32 sentence vectors. The engine holds
one backend per device (a replica per GPU) and asks nothing else of it than what `Backend`
names, so a new backend is one module that implements this protocol plus one line in
`registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from embedding_assets.lib.batching import Batch, iter_batches

SUPPORTED_POOLING = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")


@dataclass(frozen=True)
class PoolingSpec:
    """How token vectors become one sentence vector: the pooling mode and whether it is L2-normalized."""

    mode: str
    normalize: bool


class UnsupportedModelError(ValueError):
    """The model cannot run on a backend (a pooling mode or module pipeline it does not reproduce)."""


class Backend(Protocol):
    name: str  # torch, onnx, onnx-int8
    device: str  # cpu, cuda:0, ...
    precision: str  # fp32, fp16, bf16, int8
    dimension: int
    pooling: PoolingSpec | None  # None: the model's own sentence-transformers modules pool
    recipe: str | None  # the int8 quantization recipe in use, part of the model fingerprint

    def encode(self, batch: Batch) -> np.ndarray: ...  # float32 [rows, dimension]


def encode_in_input_order(
    token_ids: Sequence[Sequence[int]],
    dimension: int,
    token_budget: int,
    run: Callable[[Iterable[Batch]], Iterator[tuple[Batch, np.ndarray]]],
) -> np.ndarray:
    """Vectors for token id lists in any order, returned in input order.

    The rows are sorted by length so that token-budget batches carry almost no padding; `run`
    embeds the batches and yields (batch, vectors) in any order.
    """
    arrays = [np.asarray(t, dtype=np.int64) for t in token_ids]
    order = np.argsort([len(a) for a in arrays], kind="stable")
    out = np.zeros((len(arrays), dimension), dtype=np.float32)
    for batch, vectors in run(iter_batches([arrays[i] for i in order], token_budget)):
        out[order[batch.rows]] = vectors
    return out
