"""Every environment knob of the project, read in one place.

The README's table of environment variables is generated from `ENV_VARS`; keep them in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"

# name -> (default, meaning). Defaults that are paths are relative to the working directory.
ENV_VARS: dict[str, tuple[str, str]] = {
    "EMBEDDING_LANDING": ("data/landing", "Landing root: one folder per batch (local path, or s3://, gs://, az:// prefix)."),
    "EMBEDDING_LAKE": ("data/lake", "Delta lake root URI (local folder, or s3://, gs://, az://)."),
    "EMBEDDING_MODEL": (BUNDLED_MODEL, "Any sentence-transformers model id or local path; the default is the bundled all-MiniLM-L6-v2."),
    "EMBEDDING_DEVICE": ("auto", "auto, cpu, cuda or cuda:N (auto = cuda when available, else cpu)."),
    "EMBEDDING_PRECISION": ("auto", "auto, fp32, fp16 or bf16 (auto = fp16 on CUDA, fp32 on CPU)."),
    "EMBEDDING_BACKEND": ("auto", "auto, torch, onnx or onnx-int8 (auto = onnx fp32 on CPU, torch on CUDA; onnx backends are CPU only)."),
    "EMBEDDING_TOKEN_BUDGET": ("", "Padded tokens per batch; empty = the tuned value for this model and device, else a safe default."),
    "EMBEDDING_CHUNK_TOKENS": ("", "Largest chunk in tokens, special tokens included; empty = the model's max sequence length."),
    "EMBEDDING_CHUNK_OVERLAP": ("32", "Tokens shared by consecutive chunks of a document."),
    "EMBEDDING_CPU_WORKERS": ("", "Processes that chunk and tokenize in the CPU stages; empty = the CPUs this process may use (cgroup quota aware)."),
    "EMBEDDING_COMMIT_SECONDS": ("30", "The embeddings step commits its progress to Delta at least this often."),
    "EMBEDDING_SETTLE_SECONDS": ("30", "The sensor takes a batch once no file in it changed for this long (or it holds a _READY file)."),
    "EMBEDDING_CACHE": ("~/.cache/embedding_assets", "Local cache: tuned batch configs and exported ONNX models."),
    "EMBEDDING_MAX_FILE_BYTES": ("268435456", "Largest input file (after decompression) that is read; bigger ones are rejected."),
    "EMBEDDING_MAX_REJECT_FRACTION": ("0.2", "The rejected_documents check warns when a batch rejects more than this fraction of its files and records."),
    "EMBEDDING_MAX_DOCUMENT_CHARS": ("16000000", "Longest document (in characters, after decoding) that is ingested; longer ones are rejected with their size."),
    "EMBEDDING_DEPLOYMENT": ("local", "local (one process, in-process executor) or k8s (a pod per step)."),
    "DAGSTER_HOME": ("(none)", "The Dagster instance folder: run history, partitions, sensor cursors."),
}


def env(name: str) -> str:
    """The value of a documented variable, or its default."""
    default = ENV_VARS[name][0]
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_int(name: str) -> int | None:
    value = env(name)
    return int(value) if value else None


def cpu_workers() -> int:
    """EMBEDDING_CPU_WORKERS, or the CPUs this process may use (`cpus.available_cpus`)."""
    from embedding_assets.lib.cpus import available_cpus

    value = env_int("EMBEDDING_CPU_WORKERS")
    if value is not None and value < 1:
        raise ValueError(f"EMBEDDING_CPU_WORKERS must be at least 1, got {value}")
    return value if value is not None else available_cpus()


@dataclass(frozen=True)
class Settings:
    landing: str
    lake: str
    model: str
    device: str
    precision: str
    backend: str
    token_budget: int | None
    chunk_tokens: int | None
    chunk_overlap: int
    commit_seconds: float
    settle_seconds: float
    cache_dir: str
    max_file_bytes: int

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            landing=env("EMBEDDING_LANDING"),
            lake=env("EMBEDDING_LAKE"),
            model=env("EMBEDDING_MODEL"),
            device=env("EMBEDDING_DEVICE"),
            precision=env("EMBEDDING_PRECISION"),
            backend=env("EMBEDDING_BACKEND"),
            token_budget=env_int("EMBEDDING_TOKEN_BUDGET"),
            chunk_tokens=env_int("EMBEDDING_CHUNK_TOKENS"),
            chunk_overlap=int(env("EMBEDDING_CHUNK_OVERLAP")),
            commit_seconds=float(env("EMBEDDING_COMMIT_SECONDS")),
            settle_seconds=float(env("EMBEDDING_SETTLE_SECONDS")),
            cache_dir=os.path.expanduser(env("EMBEDDING_CACHE")),
            max_file_bytes=int(env("EMBEDDING_MAX_FILE_BYTES")),
        )
