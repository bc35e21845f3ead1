"""Gzip-compressed files: corrupt and truncated streams, decompression bombs, bounded reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from embedding_assets_tests.lib.readers.helpers import documents, read, rejection, write


def test_gzip_problems_and_size_caps(tmp_path: Path) -> None:
    batch = tmp_path / "b"
    good = gzip.compress(b"compressed text " * 100)
    write(batch / "bomb.txt.gz", gzip.compress(b"a" * 20_000_000, compresslevel=9))
    write(batch / "corrupt.txt.gz", good[:10] + b"\xff" * 20 + good[30:])
    write(batch / "notgzip.txt.gz", b"plain text pretending")
    write(batch / "truncated.txt.gz", good[: len(good) // 2])
    write(batch / "toolarge.txt", b"b" * 1_000_001)
    write(batch / "exact.txt", b"c" * 1_000_000)
    write(batch / "ok.txt.gz", good)

    items = read(batch, max_file_bytes=1_000_000)
    docs = documents(items)
    assert set(docs) == {"exact.txt", "ok.txt.gz"}
    assert rejection(items, "bomb.txt.gz").reason == (
        "decompressed size exceeds the 1000000-byte cap (possible decompression bomb)"
    )
    corrupt = rejection(items, "corrupt.txt.gz").reason
    assert corrupt.startswith("corrupt gzip stream: Error -3 while decompressing data")
    assert rejection(items, "notgzip.txt.gz").reason.startswith("corrupt gzip stream: Not a gzipped file")
    assert rejection(items, "truncated.txt.gz").reason.startswith("truncated gzip stream")
    assert rejection(items, "toolarge.txt").reason.startswith("file is 1000001 bytes, over the 1000000-byte cap")


def test_gzip_is_read_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    real_read = gzip.GzipFile.read

    def spy(self, size=-1):
        asked.append(size)
        return real_read(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", spy)
    write(tmp_path / "b" / "bomb.txt.gz", gzip.compress(b"a" * 5_000_000))
    items = read(tmp_path / "b", max_file_bytes=3 * 2**20)
    assert "3 MiB cap" in rejection(items, "bomb.txt.gz").reason
    assert asked and all(0 < size <= 2**20 for size in asked)
