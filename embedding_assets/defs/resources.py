"""The resource both domains share: where the landing area and the lake are, and the stage knobs."""

from typing import Optional

import dagster as dg

from embedding_assets.lib.settings import env, env_int


class LakeResource(dg.ConfigurableResource):
    """The landing area, the Delta lake, and the knobs of the CPU stages."""

    landing: str = env("EMBEDDING_LANDING")
    lake: str = env("EMBEDDING_LAKE")
    max_file_bytes: int = int(env("EMBEDDING_MAX_FILE_BYTES"))
    chunk_tokens: Optional[int] = env_int("EMBEDDING_CHUNK_TOKENS")
    chunk_overlap: int = int(env("EMBEDDING_CHUNK_OVERLAP"))
    commit_seconds: float = float(env("EMBEDDING_COMMIT_SECONDS"))
    settle_seconds: float = float(env("EMBEDDING_SETTLE_SECONDS"))
