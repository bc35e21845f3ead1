"""The local-vs-remote URI rule, and the pyarrow filesystem a URI maps to."""

from __future__ import annotations

import os

import pytest
from pyarrow import fs

from embedding_assets.lib.storage import filesystem, is_object_store, local_path, scheme_of


def test_schemes_and_object_stores():
    assert scheme_of("/data/landing") == "" and scheme_of("S3://bucket/x") == "s3"
    for uri in ("s3://b/x", "s3a://b/x", "gs://b/x", "gcs://b/x", "az://c/x", "abfss://c@a.dfs.core.windows.net/x"):
        assert is_object_store(uri), uri
    for uri in ("/data/landing", "relative/dir", "file:///data/landing", "http://example.com/x"):
        assert not is_object_store(uri), uri


def test_local_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert local_path("file:///data/my%20landing") == "/data/my landing"
    assert local_path("relative/dir") == os.path.join(str(tmp_path), "relative", "dir")
    assert local_path("~/x") == os.path.join(os.path.expanduser("~"), "x")
    for uri in ("s3://bucket/x", "http://example.com/x"):
        with pytest.raises(ValueError, match="unsupported URI scheme"):
            local_path(uri)


def test_filesystem_of_a_local_path(tmp_path):
    store, path = filesystem(f"file://{tmp_path}")
    assert isinstance(store, fs.LocalFileSystem) and path == str(tmp_path)
    with pytest.raises(ValueError, match="not a local path or an object-storage URI"):
        filesystem("http://example.com/x")
