"""Sentence vectors from token vectors: pooling and L2 normalization, computed in fp32.

One implementation serves both array libraries: the torch backend pools torch tensors on its
device (so only pooled vectors cross to the host), the ONNX backend pools numpy arrays. Both
libraries share the names used here (`asarray`, `sum`, `amax`, `where`, `clip`, `sqrt`,
`arange`, `linalg.norm`); keyword names differ between them, so arguments are positional.
torch is never imported by this module: a torch tensor can only come from a process that has
already imported it.
"""

from __future__ import annotations

import numpy as np

from embedding_assets.lib.encoders.base import SUPPORTED_POOLING, UnsupportedModelError


def _namespace(array):
    if isinstance(array, np.ndarray):
        return np
    import torch

    return torch


def pool(token_embeddings, attention_mask, mode: str):
    """Sentence vectors [rows, dim] from token vectors [rows, seq, dim] (numpy or torch), in fp32."""
    xp = _namespace(token_embeddings)
    hidden = xp.asarray(token_embeddings, dtype=xp.float32)
    mask = xp.asarray(attention_mask[..., None], dtype=xp.float32)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = xp.asarray(xp.sum(attention_mask, 1) - 1, dtype=xp.int64)  # right-padded rows: the last real token
        return hidden[xp.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "max":
        return xp.amax(xp.where(mask == 0, -xp.inf, hidden), 1)
    if mode not in SUPPORTED_POOLING:
        raise UnsupportedModelError(f"pooling mode {mode!r} is not supported (supported: {', '.join(SUPPORTED_POOLING)})")
    summed = xp.sum(hidden * mask, 1)
    counts = xp.clip(xp.sum(mask, 1), 1e-9, None)
    if mode == "mean_sqrt_len_tokens":
        return summed / xp.sqrt(counts)
    return summed / counts


def normalize(vectors):
    """L2 normalization of each row (numpy or torch), with torch.nn.functional.normalize's epsilon."""
    xp = _namespace(vectors)
    norms = xp.linalg.norm(vectors, None, 1, True)
    return vectors / xp.clip(norms, 1e-12, None)
