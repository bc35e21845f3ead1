"""The one rule for where a URI points: object storage (s3://, gs://, az://, ...) or a local path.

A plain path and a file:// URI are local; the schemes in OBJECT_STORE_SCHEMES are object storage;
anything else is refused where a location is expected.
"""

from __future__ import annotations

import os
import urllib.parse

S3_SCHEMES = frozenset({"s3", "s3a"})
GCS_SCHEMES = frozenset({"gs", "gcs"})
AZURE_SCHEMES = frozenset({"az", "azure", "abfs", "abfss"})
OBJECT_STORE_SCHEMES = S3_SCHEMES | GCS_SCHEMES | AZURE_SCHEMES


def scheme_of(uri: str) -> str:
    """The URI scheme in lower case; '' for a plain local path."""
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[0].lower()


def is_object_store(uri: str) -> bool:
    return scheme_of(uri) in OBJECT_STORE_SCHEMES


def local_path(uri: str) -> str:
    """The absolute local path of a plain path ('~' expanded) or a file:// URI.

    ValueError for any other URI (object storage included: it has no local path).
    """
    scheme = scheme_of(uri)
    if scheme == "file":
        return urllib.parse.unquote(urllib.parse.urlparse(uri).path)
    if scheme:
        raise ValueError(f"unsupported URI scheme {scheme!r} for a local path: use a local folder or file://")
    return os.path.abspath(os.path.expanduser(uri))
