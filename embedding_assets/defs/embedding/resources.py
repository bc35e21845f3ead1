"""The model resource: the model on its device and precision, loaded late, once per process.

Nothing here imports torch or loads weights when definitions load (`dagster dev` stays fast); the
engine is built on first use in a step and cached for the life of the process, so the in-process
executor loads the model once for the whole run. The CPU stages only ask for the tokenizer.
"""

import os
import threading
from typing import Optional

import dagster as dg

from embedding_assets.lib.settings import env, env_int

_ENGINES: dict[tuple, object] = {}
_LOCK = threading.Lock()


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
        from embedding_assets.lib.encoders import load_tokenizer

        return load_tokenizer(self.model)

    def engine(self, log=None):
        """The loaded engine, built once per process for this configuration."""
        key = (self.model, self.device, self.precision, self.backend, self.token_budget, self.cache_dir)
        with _LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                from embedding_assets.lib.encoders import build_engine
                from embedding_assets.lib.encoders.tuning import load_tuned_budget

                cache_dir = os.path.expanduser(self.cache_dir)
                engine = build_engine(self.model, self.device, self.precision, self.backend, cache_dir=cache_dir)
                if self.token_budget:
                    engine.token_budget, engine.budget_source = self.token_budget, "EMBEDDING_TOKEN_BUDGET"
                else:
                    engine.token_budget, engine.budget_source = load_tuned_budget(engine, cache_dir)
                if log:
                    log(f"loaded {engine.fingerprint} on {engine.device}; token budget {engine.token_budget} ({engine.budget_source})")
                _ENGINES[key] = engine
            return engine
