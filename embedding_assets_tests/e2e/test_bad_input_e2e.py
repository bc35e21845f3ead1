"""A generated batch holding every kind of bad input next to good documents, through the whole chain.

The run must stay green, embed every readable document, record every unreadable file or record
(file, record, reason) in `rejected_documents` and in the run's metadata, and write nothing twice.
A property test checks that document and chunk ids do not depend on the run or on the Unicode
normalization form of file names, record ids and texts.
"""

import gzip
import json
import os
import unicodedata

import numpy as np
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dagster as dg

from embedding_assets.definitions import ASSETS
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake, stages
from embedding_assets.lib.lake import tables

BATCH = "bad-input"
CAP = 2 * 2**20  # 2 MiB: the 1 MB document fits, the bomb does not
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
PARAGRAPHS = (
    "Delta tables keep every version of the data, so a reader can always go back to an earlier state.",
    "Embeddings map each chunk of text to a vector; similar meanings land close to each other.",
    "A partition is replaced in one commit, so readers see the old rows or the new rows, never a mix.",
    "Checkpoints let a long job resume after a crash without repeating the work it already committed.",
)
GOOD = {
    "good/alpha.txt": "Vector search finds documents by meaning rather than by exact words. It powers semantic retrieval.",
    "good/beta.md": "# Beta\n\nPartitions are written one batch at a time.\n\nEach batch is a folder of files.\n",
    "cjk.txt": "日本語のテキストです。これは二番目の文です。中文文本也应该被正确地嵌入。한국어 문장도 있습니다.",
    "rtl.txt": "שלום עולם, זהו מסמך בעברית. مرحبا بالعالم، هذه وثيقة باللغة العربية.",
    "emoji.md": "Launch day 🚀🎉 — the team 👩‍💻👨‍💻 shipped it! Flags 🇯🇵🇮🇱 and hearts ❤️‍🔥 are text too.",
    "dup_a.txt": "This exact document was landed twice, under two different names.",
    "copies/dup_a.txt": "This exact document was landed twice, under two different names.",
}


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def build_bad_batch(batch_dir: str, outside_dir: str) -> tuple[set[str], dict[tuple[str, str | None], str]]:
    """Writes the batch; returns (doc_ids expected in raw_documents, {(source, record): reason fragment})."""
    os.makedirs(batch_dir)
    readable = set()
    for name, text in GOOD.items():
        path = os.path.join(batch_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        readable.add(name)

    def write_bytes(name: str, data: bytes) -> None:
        with open(os.path.join(os.fsencode(batch_dir), os.fsencode(name) if isinstance(name, str) else name), "wb") as handle:
            handle.write(data)

    # A 1 MB document on one line, and very long multi-paragraph documents.
    one_mb = (SENTENCE * (2**20 // len(SENTENCE) + 1))[: 2**20]
    write_bytes("one_mb_single_line.txt", one_mb.encode())
    write_bytes("long_paragraphs.md", "\n\n".join(PARAGRAPHS[i % 4] for i in range(1200)).encode())
    write_bytes("long_prose.txt", " ".join(f"Sentence number {i} talks about item {i * 7 % 13} of the list." for i in range(120)).encode())
    # Invalid UTF-8 (a Latin-1 byte and an encoded lone surrogate): decoded with replacement and flagged.
    write_bytes("latin1.txt", b"caf\xe9 cr\xe8me br\xfbl\xe9e and \xed\xa0\x80 a CESU surrogate, still a readable document.")
    readable |= {"one_mb_single_line.txt", "long_paragraphs.md", "long_prose.txt", "latin1.txt"}

    lines = [
        json.dumps({"id": "ok", "text": "A good record in a file of mostly bad ones."}),
        '{"id": "surrogate-text", "text": "before \\ud800 after: a lone surrogate in the text"}',
        '{"id": "\\udc00", "text": "a lone surrogate in the id"}',
        "{broken json line",
        json.dumps({"id": "no-text"}),
        json.dumps({"id": "null-text", "text": None}),
        json.dumps({"id": "empty-text", "text": "   "}),
    ]
    write_bytes("records.jsonl", ("\n".join(lines) + "\n").encode())
    readable |= {"records.jsonl#ok", "records.jsonl#surrogate-text"}

    write_bytes("empty.txt", b"")
    write_bytes("whitespace.txt", b"  \n\t \r\n   ")
    write_bytes("binary.txt", bytes(range(256)) * 64)
    write_bytes("corrupt.txt.gz", b"\x1f\x8b\x08\x00" + os.urandom(64))
    write_bytes("truncated.txt.gz", _gzip(b"A perfectly fine document that was cut short in transit. " * 50)[:-40])
    bomb = _gzip(b"a" * (8 * CAP))
    assert len(bomb) < 64 * 1024  # small on disk, 16 MiB decompressed
    write_bytes("bomb.txt.gz", bomb)
    secret = os.path.join(outside_dir, "secret.txt")
    with open(secret, "w") as handle:
        handle.write("This file lies outside the batch and must never be read.")
    os.symlink(secret, os.path.join(batch_dir, "escape.txt"))
    write_bytes(b"bad\xffname.txt", b"A file whose name is not valid UTF-8.")

    rejected = {
        ("empty.txt", None): "empty document",
        ("whitespace.txt", None): "empty document",
        ("binary.txt", None): "binary file",
        ("corrupt.txt.gz", None): "gzip",
        ("truncated.txt.gz", None): "truncated gzip",
        ("bomb.txt.gz", None): "decompression bomb",
        ("escape.txt", None): "outside the batch",
        ("bad\ufffdname.txt", None): "not valid UTF-8",
        ("records.jsonl", "line 3"): "lone surrogate",
        ("records.jsonl", "line 4"): "invalid JSON",
        ("records.jsonl", "no-text"): "missing required field 'text'",
        ("records.jsonl", "null-text"): "text is null",
        ("records.jsonl", "empty-text"): "empty document",
    }
    return readable, rejected


@pytest.fixture
def instance(dirs):
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        yield instance


def test_every_bad_input_is_recorded_and_every_readable_document_embedded(dirs, instance, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    readable, expected_rejections = build_bad_batch(os.path.join(dirs["landing"], BATCH), str(outside))
    # Half of this batch is bad on purpose: the reject-fraction warning is not what is tested here.
    result = dg.materialize(
        ASSETS,
        partition_key=BATCH,
        instance=instance,
        resources={"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"], max_file_bytes=CAP, commit_seconds=0.0, max_reject_fraction=1.0), "model": ModelResource()},
    )
    assert result.success

    root = dirs["lake"]
    raw = lake.read_partition(root, tables.RAW, BATCH)
    assert sorted(raw.column("doc_id").to_pylist()) == sorted(readable)
    texts = dict(zip(raw.column("doc_id").to_pylist(), raw.column("text").to_pylist()))
    flags = dict(zip(raw.column("doc_id").to_pylist(), raw.column("flags").to_pylist()))
    assert "invalid-utf8-replaced" in flags["latin1.txt"] and "\ufffd" in texts["latin1.txt"]
    assert "surrogates-replaced" in flags["records.jsonl#surrogate-text"] and "\ufffd" in texts["records.jsonl#surrogate-text"]
    assert texts["emoji.md"] == GOOD["emoji.md"] and texts["rtl.txt"] == GOOD["rtl.txt"] and texts["cjk.txt"] == GOOD["cjk.txt"]
    assert len(texts["one_mb_single_line.txt"]) == 2**20
    assert not any("outside the batch and must never" in t for t in texts.values())

    # Every unreadable file or record: file, record and reason, in the table and in the run's metadata.
    rejected = lake.read_partition(root, tables.REJECTED, BATCH)
    rows = {(s, r): reason for s, r, reason in zip(*(rejected.column(c).to_pylist() for c in ("source", "record", "reason")))}
    assert set(rows) == set(expected_rejections)
    for key, fragment in expected_rejections.items():
        assert fragment in rows[key], (key, rows[key])
    assert rejected.num_rows == len(expected_rejections)
    [raw_event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_documents")]
    raw_md = {k: v.value for k, v in raw_event.materialization.metadata.items()}
    assert raw_md["rejected"] == len(expected_rejections) and raw_md["documents"] == len(readable)
    for source, record in expected_rejections:
        assert f"{source}{' ' + record if record else ''}: " in raw_md["rejections"]

    # Every readable document is embedded; nothing is written twice.
    chunks = lake.read_partition(root, tables.CHUNKS, BATCH, columns=["doc_id", "chunk_id", "text_hash", "n_tokens"])
    emb = lake.read_partition(root, tables.EMBEDDINGS, BATCH, columns=["doc_id", "chunk_id", "text_hash", "embedding"])
    with_tokens = set(chunks.column("doc_id").to_pylist())
    assert with_tokens == readable
    assert set(emb.column("doc_id").to_pylist()) == with_tokens
    chunk_ids = chunks.column("chunk_id").to_pylist()
    assert len(set(chunk_ids)) == len(chunk_ids)
    assert sorted(emb.column("chunk_id").to_pylist()) == sorted(chunk_ids)
    assert pc.max(chunks.column("n_tokens")).as_py() <= 256
    for check in result.get_asset_check_evaluations():
        assert check.passed, check.check_name
    docs = lake.read_partition(root, tables.DOCUMENTS, BATCH, columns=["doc_id"])
    assert sorted(docs.column("doc_id").to_pylist()) == sorted(readable)

    # Identical chunk texts are embedded once: the 1 MB line is hundreds of chunks but a few texts.
    [emb_event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("embeddings")]
    emb_md = {k: v.value for k, v in emb_event.materialization.metadata.items()}
    big = chunks.filter(pc.equal(chunks.column("doc_id"), "one_mb_single_line.txt"))
    big_texts = set(big.column("text_hash").to_pylist())
    assert big.num_rows >= 500 and len(big_texts) <= 5
    distinct = len(set(chunks.column("text_hash").to_pylist()))
    assert emb_md["distinct_texts"] == distinct and emb_md["embedded_texts"] == distinct
    assert emb_md["chunks"] == chunks.num_rows >= distinct + big.num_rows - len(big_texts)
    long_doc = chunks.filter(pc.equal(chunks.column("doc_id"), "long_paragraphs.md"))
    assert long_doc.num_rows >= 100  # a very long document, chunked

    # Duplicate files: two documents, the same vector.
    vectors = tables.arrow_to_vectors(emb.column("embedding"))
    by_doc = {d: vectors[i] for i, d in enumerate(emb.column("doc_id").to_pylist()) if d in ("dup_a.txt", "copies/dup_a.txt")}
    assert len(by_doc) == 2 and np.allclose(by_doc["dup_a.txt"], by_doc["copies/dup_a.txt"])


# ---------------------------------------------------------------- ids are stable across runs and normalization forms

# Letters whose NFC and NFD forms differ (precomposed accents, Hangul syllables), plus plain ones.
LETTERS = "aeiouxyzéñÅüçøǅ가힣"
NAMES = st.text(alphabet=LETTERS + "0123456789-", min_size=1, max_size=8)
TEXTS = st.lists(st.text(alphabet=LETTERS + "  .,!?\n", min_size=1, max_size=60), min_size=1, max_size=4).map(
    lambda parts: " ".join(parts) + " end."
)


def _nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def _write_forms(batch_dir: str, files: dict[str, str], records: dict[str, str], form: str) -> None:
    os.makedirs(batch_dir)
    for name, text in files.items():
        with open(os.path.join(batch_dir, unicodedata.normalize(form, name) + ".txt"), "w", encoding="utf-8") as handle:
            handle.write(unicodedata.normalize(form, text))
    with open(os.path.join(batch_dir, "records.jsonl"), "w", encoding="utf-8") as handle:
        for record_id, text in records.items():
            handle.write(json.dumps({"id": unicodedata.normalize(form, record_id), "text": unicodedata.normalize(form, text)}, ensure_ascii=False) + "\n")


def _ids(landing: str, lake_root: str, batch: str, tokenizer) -> list[tuple[str, str, str]]:
    quiet = lambda message: None  # noqa: E731
    stages.ingest_batch(landing, lake_root, batch, 2**20, log=quiet)
    stages.chunk_batch(lake_root, batch, tokenizer, None, 32, log=quiet)
    raw = lake.read_partition(lake_root, tables.RAW, batch, columns=["doc_id", "content_hash"])
    chunks = lake.read_partition(lake_root, tables.CHUNKS, batch, columns=["doc_id", "chunk_id"])
    return sorted(zip(raw.column("doc_id").to_pylist(), raw.column("content_hash").to_pylist(), ["doc"] * raw.num_rows)) + sorted(
        zip(chunks.column("doc_id").to_pylist(), chunks.column("chunk_id").to_pylist(), ["chunk"] * chunks.num_rows)
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    files=st.dictionaries(NAMES, TEXTS, min_size=1, max_size=3).filter(lambda d: len({_nfc(k) for k in d}) == len(d)),
    records=st.dictionaries(NAMES, TEXTS, min_size=0, max_size=3).filter(lambda d: len({_nfc(k) for k in d}) == len(d)),
)
def test_doc_and_chunk_ids_are_stable_across_runs_and_unicode_forms(tmp_path_factory, files, records):
    tokenizer = ModelResource().tokenizer()
    root = tmp_path_factory.mktemp("forms")
    landing, lake_root = str(root / "landing"), str(root / "lake")
    for batch, form in (("nfc", "NFC"), ("nfd", "NFD")):
        _write_forms(os.path.join(landing, batch), files, records, form)
    first = _ids(landing, lake_root, "nfc", tokenizer)
    assert _ids(landing, lake_root, "nfc", tokenizer) == first  # a second run: the same ids
    assert _ids(landing, lake_root, "nfd", tokenizer) == first  # NFD names and texts: the same ids
    expected_docs = {_nfc(n) + ".txt" for n in files} | {"records.jsonl#" + _nfc(r) for r in records}
    assert {d for d, _, kind in first if kind == "doc"} == expected_docs
