"""Where data lives: local paths and object storage (s3://, gs://, az://), and the landing area.

`uri` holds the one local-vs-remote rule, `names` the one batch-name rule, `credentials` maps the
environment to credentials once (delta-rs options, pyarrow filesystems, redaction), and `landing`
lists the batches of a landing area and downloads an object-storage batch for the readers.
"""

from embedding_assets.lib.storage.credentials import delta_storage_options, filesystem, redact, redacted_error, redactor
from embedding_assets.lib.storage.landing import (
    READY_MARKER,
    BatchState,
    batch_fingerprint,
    batch_states,
    download_batch_with_reasons,
    new_batches,
)
from embedding_assets.lib.storage.names import BATCH_NAME, validate_batch
from embedding_assets.lib.storage.uri import is_object_store, local_path, scheme_of

__all__ = [
    "BATCH_NAME",
    "READY_MARKER",
    "BatchState",
    "batch_fingerprint",
    "batch_states",
    "delta_storage_options",
    "download_batch_with_reasons",
    "filesystem",
    "is_object_store",
    "local_path",
    "new_batches",
    "redact",
    "redacted_error",
    "redactor",
    "scheme_of",
    "validate_batch",
]
