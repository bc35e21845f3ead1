"""The ingest stage on real files and real Delta tables: emptied and all-rejected batches, duplicate
doc_ids caught before any commit, a batch folder that is a link, bounded memory on a large batch,
and storage errors redacted of credentials (against moto's S3 server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_assets.lib import lake, stages
from embedding_assets.lib.lake import tables
from embedding_assets.lib.readers import batch as batch_walk
from embedding_assets.lib.readers import text as text_reader


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _rows(lake_root: Path, name: str, batch: str) -> list[dict]:
    table = lake.read_partition(str(lake_root), name, batch)
    return [] if table is None else sorted(table.to_pylist(), key=lambda r: (r.get("doc_id") or r.get("source"), r.get("record") or ""))


def _versions(lake_root: Path, name: str) -> int:
    return lake.open_table(str(lake_root), name).version() if lake.exists(str(lake_root), name) else -1


@pytest.fixture
def area(tmp_path: Path):
    landing, lake_root = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    return landing, lake_root


def _ingest(landing: Path, lake_root: Path, batch: str, logs: list[str] | None = None, **kwargs) -> dict:
    sink = logs.append if logs is not None else (lambda _m: None)
    return stages.ingest_batch(str(landing), str(lake_root), batch, 1 << 20, log=sink, **kwargs)


def test_a_batch_whose_files_were_all_deleted_empties_its_partitions_and_succeeds(area) -> None:
    """Issue 13 #11: deleting every file of a batch (only _READY left) is a change like any other:
    both partitions are emptied, the step succeeds and says the batch is empty; other batches stay."""
    landing, lake_root = area
    _write(landing / "b" / "a.txt", "first")
    _write(landing / "b" / "bad.txt", "")
    _write(landing / "other" / "keep.txt", "other batch")
    _ingest(landing, lake_root, "b")
    _ingest(landing, lake_root, "other")
    assert len(_rows(lake_root, tables.RAW, "b")) == 1 and len(_rows(lake_root, tables.REJECTED, "b")) == 1
    for name in ("a.txt", "bad.txt"):
        (landing / "b" / name).unlink()
    _write(landing / "b" / "_READY", "")

    logs: list[str] = []
    result = _ingest(landing, lake_root, "b", logs)
    assert result["empty"] is True and result["documents"] == 0 and result["rejected"] == 0
    assert _rows(lake_root, tables.RAW, "b") == [] and _rows(lake_root, tables.REJECTED, "b") == []
    assert [r["doc_id"] for r in _rows(lake_root, tables.RAW, "other")] == ["keep.txt"]
    assert any("has no files" in line for line in logs)


def test_a_batch_whose_files_are_all_rejected_leaves_raw_documents_unchanged_and_fails(area) -> None:
    """Issue 13 #11: files exist but none is readable: the previous raw_documents rows stay (so the
    downstream tables stay consistent with them), rejected_documents says why, the step fails."""
    landing, lake_root = area
    _write(landing / "b" / "a.txt", "first version")
    _ingest(landing, lake_root, "b")
    before = _rows(lake_root, tables.RAW, "b")
    raw_version = _versions(lake_root, tables.RAW)
    _write(landing / "b" / "a.txt", "")
    _write(landing / "b" / "b.jsonl", "{not json\n")

    with pytest.raises(stages.AllDocumentsRejected, match="raw_documents is unchanged") as info:
        _ingest(landing, lake_root, "b")
    assert "a.txt: empty document" in str(info.value)
    assert _rows(lake_root, tables.RAW, "b") == before
    assert _versions(lake_root, tables.RAW) == raw_version  # not even an empty commit
    assert [(r["source"], r["record"]) for r in _rows(lake_root, tables.REJECTED, "b")] == [("a.txt", None), ("b.jsonl", "line 1")]


def test_duplicate_doc_ids_are_rejected_before_anything_is_committed(area, monkeypatch) -> None:
    """Issue 13 #7: if two documents ever share a doc_id (here a reader is made to give two files
    the same one), nothing of that read is committed; the batch is read again with both rejected,
    each naming the doc_id and the other source, and the rest of the batch is committed once."""
    landing, lake_root = area
    _write(landing / "b" / "a.txt", "alpha")
    _write(landing / "b" / "b.txt", "beta")
    _write(landing / "b" / "c.md", "gamma")
    monkeypatch.setattr(text_reader, "path_doc_id", lambda relpath: "same" if relpath.endswith(".txt") else relpath)
    commits: list[str] = []
    real_replace = lake.replace_partition

    def recording_replace(root, name, batch, data, **kwargs):
        real_replace(root, name, batch, data, **kwargs)
        commits.append(name)

    monkeypatch.setattr(lake, "replace_partition", recording_replace)
    logs: list[str] = []
    result = _ingest(landing, lake_root, "b", logs)
    assert commits == [tables.REJECTED, tables.RAW]  # one commit each: the first read committed nothing
    assert _versions(lake_root, tables.RAW) == 1 and _versions(lake_root, tables.REJECTED) == 1  # created, then one write
    assert [r["doc_id"] for r in _rows(lake_root, tables.RAW, "b")] == ["c.md"]
    rejected = {r["source"]: r["reason"] for r in _rows(lake_root, tables.REJECTED, "b")}
    assert rejected == {
        "a.txt": "duplicate doc_id 'same': also produced by b.txt; rename one of them",
        "b.txt": "duplicate doc_id 'same': also produced by a.txt; rename one of them",
    }
    assert result["documents"] == 1 and result["rejected"] == 2
    assert any("produced by more than one document (one from a.txt and b.txt)" in line for line in logs)


def test_a_batch_folder_that_is_a_link_fails_before_anything_is_written(area, tmp_path: Path) -> None:
    """Issue 13 #4 at the stage: landing/<batch> linking out of the landing area is not read."""
    landing, lake_root = area
    _write(tmp_path / "outside" / "secret.txt", "outside the landing area")
    (landing / "b").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(NotADirectoryError, match="batch folder is a symbolic link") as info:
        _ingest(landing, lake_root, "b")
    assert isinstance(info.value, batch_walk.BatchFolderIsLink)
    assert not lake.exists(str(lake_root), tables.RAW) and not lake.exists(str(lake_root), tables.REJECTED)


# --- bounded memory -----------------------------------------------------------------------------

_MEMORY_CHILD = """
import json, resource, sys
from embedding_assets.lib import stages
import deltalake, pyarrow.parquet  # imported before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = stages.ingest_batch(sys.argv[1], sys.argv[2], "big", 1 << 26, log=lambda m: None)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "documents": result["documents"], "bytes": result["bytes"]}))
"""


def _land(landing: Path, files: int, size: int) -> int:
    batch = landing / "big"
    batch.mkdir(parents=True)
    line = ("The quick brown fox jumps over the lazy dog; embeddings map text to vectors. " * 4)[:255] + "\n"
    body = (line * (size // len(line) + 1))[:size]
    for i in range(files):
        (batch / f"doc-{i:05d}.txt").write_text(f"document {i}\n" + body)
    return files * size


def _peak_growth_mib(tmp_path: Path, files: int, size: int) -> tuple[float, int]:
    landing, lake_root = tmp_path / f"landing-{files}", tmp_path / f"lake-{files}"
    landed = _land(landing, files, size)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(landing), str(lake_root)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["documents"] == files and result["bytes"] >= landed
    return result["growth_kib"] / 1024, landed


def test_ingest_memory_does_not_grow_with_the_batch(tmp_path: Path) -> None:
    """Issue 12 item 1 (ingest): documents and rejections are written as they are read, so ten
    times the data costs about the same peak memory. 60 vs 600 files of 1 MiB (60 vs 600 MiB of
    text), each ingested in its own process, peak RSS growth over the imports measured there (about
    200 MiB either way: one file being read, one record batch, one row group being written)."""
    small, small_bytes = _peak_growth_mib(tmp_path, 60, 1 << 20)
    large, large_bytes = _peak_growth_mib(tmp_path, 600, 1 << 20)
    added_mib = (large_bytes - small_bytes) / 2**20
    print(f"peak RSS growth: {small:.0f} MiB for {small_bytes / 2**20:.0f} MiB landed, {large:.0f} MiB for {large_bytes / 2**20:.0f} MiB")
    assert large - small < 0.2 * added_mib, (small, large, added_mib)
    assert large < 0.5 * large_bytes / 2**20, large
