"""The model resource: the model on its device and precision, loaded late, once per process.

Nothing here imports torch or loads weights when definitions load (`dagster dev` stays fast); the
engine is built on first use in a step and cached for the life of the process, so the in-process
executor loads the model once for the whole run. The CPU stages only ask for the tokenizer.
"""

import os
import threading
from typing import Optional

import dagster as dg
from pydantic import Field

from embedding_assets.defs.resources import described, from_env

_ENGINES: dict[tuple, object] = {}
_LOCK = threading.Lock()


class ModelResource(dg.ConfigurableResource):
    """The embedding model on its device and precision, with its tuned batch configuration."""

    model: Optional[str] = Field(default=None, description=described("EMBEDDING_MODEL"))
    device: Optional[str] = Field(default=None, description=described("EMBEDDING_DEVICE"))
    precision: Optional[str] = Field(default=None, description=described("EMBEDDING_PRECISION"))
    backend: Optional[str] = Field(default=None, description=described("EMBEDDING_BACKEND"))
    token_budget: Optional[int] = Field(default=None, description=described("EMBEDDING_TOKEN_BUDGET"))
    cache_dir: Optional[str] = Field(default=None, description=described("EMBEDDING_CACHE"))

    @property
    def model_name(self) -> str:
        """The model id or path this resource loads (resolved from the environment when unset)."""
        return from_env(self.model, "EMBEDDING_MODEL", str)

    def _settings(self) -> tuple:
        return (
            self.model_name,
            from_env(self.device, "EMBEDDING_DEVICE", str),
            from_env(self.precision, "EMBEDDING_PRECISION", str),
            from_env(self.backend, "EMBEDDING_BACKEND", str),
            from_env(self.token_budget, "EMBEDDING_TOKEN_BUDGET", int),
            os.path.expanduser(from_env(self.cache_dir, "EMBEDDING_CACHE", str)),
        )

    def tokenizer(self):
        """The model's tokenizer alone (no torch, no weights): for the CPU stages."""
        from embedding_assets.lib.encoders import load_tokenizer

        return load_tokenizer(self.model_name)

    def engine(self, log=None, lake_root: str | None = None):
        """The loaded engine, built once per process for this configuration; its token budget is the
        one tuned for this model and device (read from the lake's `_tuning` table under `lake_root`,
        then the local cache), unless EMBEDDING_TOKEN_BUDGET sets it."""
        key = self._settings()
        model, device, precision, backend, token_budget, cache_dir = key
        with _LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                from embedding_assets.lib.encoders import build_engine
                from embedding_assets.lib.encoders.tuning import DEFAULT_SOURCE, load_tuned_budget

                engine = build_engine(model, device, precision, backend, cache_dir=cache_dir)
                if token_budget:
                    engine.token_budget, engine.budget_source = token_budget, "set by EMBEDDING_TOKEN_BUDGET"
                else:
                    engine.token_budget, engine.budget_source = load_tuned_budget(engine, cache_dir, lake_root=lake_root, log=log)
                    if engine.budget_source == DEFAULT_SOURCE:
                        engine.budget_source = "default: not tuned for this model on this device (run `embedding-assets tune`)"
                if log:
                    log(f"loaded {engine.fingerprint} on {engine.device}; token budget {engine.token_budget}, {engine.budget_source}")
                _ENGINES[key] = engine
            return engine
