"""Resources: where the lake and landing area are, and the model (loaded late, once per process).

Nothing here imports torch or loads weights when definitions load (`dagster dev` stays fast); the
engine is built on first use in a step and cached for the life of the process, so the in-process
executor loads the model once for the whole run.
"""


import threading
from typing import Optional

import dagster as dg

from embedding_assets.lib.settings import env, env_int

_ENGINES: dict[tuple, object] = {}
_LOCK = threading.Lock()


class LakeResource(dg.ConfigurableResource):
    """The landing area, the Delta lake, and the knobs of the CPU stages."""

    landing: str = env("EMBEDDING_LANDING")
    lake: str = env("EMBEDDING_LAKE")
    max_file_bytes: int = int(env("EMBEDDING_MAX_FILE_BYTES"))
    chunk_tokens: Optional[int] = env_int("EMBEDDING_CHUNK_TOKENS")
    chunk_overlap: int = int(env("EMBEDDING_CHUNK_OVERLAP"))
    commit_seconds: float = float(env("EMBEDDING_COMMIT_SECONDS"))
    settle_seconds: float = float(env("EMBEDDING_SETTLE_SECONDS"))


class ModelResource(dg.ConfigurableResource):
    """The embedding model on its device and precision, with its tuned batch configuration."""

    model: str = env("EMBEDDING_MODEL")
    device: str = env("EMBEDDING_DEVICE")
    precision: str = env("EMBEDDING_PRECISION")
    backend: str = env("EMBEDDING_BACKEND")
    token_budget: Optional[int] = env_int("EMBEDDING_TOKEN_BUDGET")
    cache_dir: str = env("EMBEDDING_CACHE")

    def tokenizer(self):
        """The model's tokenizer alone (no torch, no weights): for the CPU stages."""
        from embedding_assets.lib.model import load_tokenizer

        return load_tokenizer(self.model)

    def engine(self, log=None):
        """The loaded engine, built once per process for this configuration."""
        import os

        key = (self.model, self.device, self.precision, self.backend, self.token_budget, self.cache_dir)
        with _LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                from embedding_assets.lib.engine import build_engine

                cache_dir = os.path.expanduser(self.cache_dir)
                engine = build_engine(self.model, self.device, self.precision, self.backend, cache_dir=cache_dir)
                if self.token_budget:
                    engine.token_budget, engine.budget_source = self.token_budget, "EMBEDDING_TOKEN_BUDGET"
                else:
                    engine.token_budget, engine.budget_source = _tuned_budget(engine, cache_dir)
                if log:
                    log(f"loaded {engine.fingerprint} on {engine.device}; token budget {engine.token_budget} ({engine.budget_source})")
                _ENGINES[key] = engine
            return engine


def _tuned_budget(engine, cache_dir: str) -> tuple[int, str]:
    try:
        from embedding_assets.lib.tuning import load_tuned_budget
    except ImportError:
        from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET

        return DEFAULT_TOKEN_BUDGET, "default"
    return load_tuned_budget(engine, cache_dir)
