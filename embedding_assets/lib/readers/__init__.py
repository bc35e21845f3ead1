"""Input readers: one landed batch folder -> documents and rejections.

`read_batch` walks a batch (`batch`) and picks a reader per file by its suffix (`registry`); each
format has its own module, listed in `registry.FORMATS`, and any of them may be gzip-compressed
(`compression`). A new format is one module plus one line in `registry.FORMATS`.
"""

from embedding_assets.lib.readers.base import Document, Rejection
from embedding_assets.lib.readers.batch import DEFAULT_MAX_FILE_BYTES, read_batch
from embedding_assets.lib.readers.registry import SUPPORTED_SUFFIXES

__all__ = ["DEFAULT_MAX_FILE_BYTES", "SUPPORTED_SUFFIXES", "Document", "Rejection", "read_batch"]
