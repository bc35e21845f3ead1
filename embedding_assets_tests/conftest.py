"""Shared fixtures: temp landing and lake folders, a tiny generated corpus, a real Dagster instance."""

import gzip
import json
import os
import pydoc

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's stages run on tiny batches, where starting a process pool costs more than the work:
# they chunk and tokenize inline. The parallel paths have their own tests (workers=2, explicitly).
os.environ.setdefault("EMBEDDING_CPU_WORKERS", "1")


def write_corpus(batch_dir, extra: dict | None = None) -> dict:
    """A small mixed-format batch of real text; returns {relative path: text or records}."""
    os.makedirs(batch_dir, exist_ok=True)
    files = {
        "guide/json.txt": pydoc.render_doc(json, renderer=pydoc.plaintext)[:3000],
        "notes.md": "# Notes\n\nDelta tables keep every version.\n\nPartitions are written one batch at a time.\n",
        "page.html": "<html><head><title>x</title><script>var a=1;</script></head><body><h1>Hello</h1><p>Embeddings map text to vectors.</p></body></html>",
        "unicode.rst": "日本語のテキストです。これは二番目の文です。\n\nשלום עולם, مرحبا بالعالم 🎉🚀\n",
    }
    for name, text in {**files, **(extra or {})}.items():
        path = os.path.join(batch_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    with gzip.open(os.path.join(batch_dir, "compressed.txt.gz"), "wt", encoding="utf-8") as handle:
        handle.write("A gzipped document about semantic search and vector databases.\n")
    with open(os.path.join(batch_dir, "records.jsonl"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "r1", "text": "The first record talks about cats."}) + "\n")
        handle.write("{broken json\n")
        handle.write(json.dumps({"id": "r2", "text": "The second record talks about dogs."}) + "\n")
    return files


def materialize_assets(dirs, instance, batch: str, selection=None):
    """Materializes the assets for one partition with the real resources (commit after every batch)."""
    import dagster as dg

    from embedding_assets.definitions import ASSETS
    from embedding_assets.defs.embedding.resources import ModelResource
    from embedding_assets.defs.resources import LakeResource

    result = dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=batch,
        instance=instance,
        resources={"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"], commit_seconds=0.0), "model": ModelResource()},
    )
    assert result.success
    return result


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    landing, lake_root, home = tmp_path / "landing", tmp_path / "lake", tmp_path / "dagster_home"
    landing.mkdir()
    home.mkdir()
    monkeypatch.setenv("EMBEDDING_LANDING", str(landing))
    monkeypatch.setenv("EMBEDDING_LAKE", str(lake_root))
    monkeypatch.setenv("EMBEDDING_SETTLE_SECONDS", "0")
    return {"landing": str(landing), "lake": str(lake_root), "home": str(home)}
