"""The CPU stages (chunks, length_buckets, document_embeddings) and the embeddings checks, through
their real functions and real Delta tables: serial == parallel, the same output as the whole-
partition computation they replaced, empty upstream partitions, bounded memory."""

import dataclasses
import json
import os
import pydoc
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.lib import checks, lake, spill
from embedding_assets.lib.chunking import Chunker, chunk_id, text_hash
from embedding_assets.lib.encoders import load_tokenizer
from embedding_assets.lib.keys import fixed_width
from embedding_assets.lib.lake import tables
from embedding_assets.lib.stages import buckets, chunks, documents

BATCH = "b1"


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bundled")


def _raw(root, batch, texts, doc_ids=None):
    n = len(texts)
    table = pa.table({
        "batch": [batch] * n, "doc_id": doc_ids or [f"doc{i:05d}" for i in range(n)], "source": ["s"] * n,
        "text": pa.array(texts, pa.large_string()), "content_hash": ["h"] * n, "size_bytes": [1] * n, "flags": [""] * n,
        "ingested_at": pa.array([None] * n, tables.TS),
    }, schema=tables.RAW_DOCUMENTS)
    lake.replace_partition(root, tables.RAW, batch, table)


def _corpus():
    """Long documents, many short ones (some repeated: identical texts), and documents with no tokens."""
    long_docs = [pydoc.render_doc(m, renderer=pydoc.plaintext) for m in (json, tempfile)]
    short = [f"Record {i % 150} talks about item {i % 37}." for i in range(900)]
    return long_docs + short + ["", "   \n  "] + ["日本語のテキストです。これは二番目の文です。"]


def _reference_chunks(tokenizer, texts, doc_ids, max_tokens, overlap):
    """chunks as the whole-partition stage computed them: one document after another."""
    chunker = Chunker(tokenizer.tokenizer, max_tokens=max_tokens, overlap=overlap)
    rows = []
    for doc_id, text in zip(doc_ids, texts):
        for c in chunker.split(text):
            h = text_hash(c.text)
            rows.append((doc_id, chunk_id(doc_id, c.chunk_index, h), c.chunk_index, c.text, h, c.n_tokens, c.char_start, c.char_end))
    return rows


def _reference_order(chunk_rows, tokenizer):
    """length_buckets as the whole-partition stage ordered it: by length, then text hash, then chunks order."""
    ids = tokenizer.encode_batch([r["text"] for r in chunk_rows])
    lengths = np.array([len(x) for x in ids])
    hashes = np.array([r["text_hash"] for r in chunk_rows], dtype=object)
    order = np.lexsort((hashes, lengths))
    return [chunk_rows[i]["chunk_id"] for i in order], [ids[i] for i in order]


def test_chunks_and_length_buckets_same_for_one_and_two_workers_and_as_before(tmp_path, tokenizer, monkeypatch):
    root = str(tmp_path)
    texts = _corpus()
    doc_ids = [f"doc{i:05d}" for i in range(len(texts))]
    _raw(root, BATCH, texts, doc_ids)
    # Small slices and runs: many work items, several sorted runs and a multi-pass merge.
    monkeypatch.setattr(chunks, "SLICE_DOCUMENTS", 50)
    monkeypatch.setattr(buckets, "SLICE_CHUNKS", 64)
    monkeypatch.setattr(buckets, "READ_CHUNKS", 64)
    monkeypatch.setattr(buckets, "RUN_ROWS", 100)
    monkeypatch.setattr(spill, "FAN_IN", 3)
    outputs = {}
    for workers in (1, 2):
        info = chunks.chunk_batch(root, BATCH, tokenizer, 64, 8, log=quiet, workers=workers)
        chunk_table = lake.read_partition(root, tables.CHUNKS, BATCH)
        binfo = buckets.bucket_batch(root, BATCH, tokenizer, log=quiet, workers=workers)
        outputs[workers] = (chunk_table, lake.read_partition(root, tables.BUCKETS, BATCH), info, binfo)
    assert outputs[1][0].equals(outputs[2][0])
    assert outputs[1][1].equals(outputs[2][1])
    assert outputs[2][2]["workers"] == 2 and outputs[2][3]["workers"] == 2 and outputs[2][3]["sorted_runs"] > 3

    chunk_table, bucket_table, info, binfo = outputs[2]
    expected = _reference_chunks(tokenizer, texts, doc_ids, 64, 8)
    got = list(zip(*[chunk_table.column(c).to_pylist() for c in ("doc_id", "chunk_id", "chunk_index", "text", "text_hash", "n_tokens", "char_start", "char_end")]))
    assert got == expected
    assert info["chunks"] == len(expected) and info["documents"] == len(texts) and info["documents_without_tokens"] == 2

    order, ids = _reference_order(chunk_table.to_pylist(), tokenizer)
    assert bucket_table.column("chunk_id").to_pylist() == order
    assert bucket_table.column("input_ids").to_pylist() == ids
    assert bucket_table.column("position").to_pylist() == list(range(len(order)))
    lengths = np.array([len(x) for x in ids])
    assert bucket_table.column("n_tokens").to_pylist() == lengths.tolist()
    assert bucket_table.column("bucket").to_pylist() == ((lengths + 15) // 16).tolist()
    assert binfo["distinct_texts"] == len(set(chunk_table.column("text_hash").to_pylist()))
    # Each text was tokenized once, while chunking: length_buckets took the ids chunks stored.
    assert binfo["tokenized_texts"] == 0 and binfo["token_ids"] == "made by chunks"
    assert chunk_table.column("input_ids").to_pylist() == tokenizer.encode_batch(chunk_table.column("text").to_pylist())
    assert set(chunk_table.column("tokenizer").to_pylist()) == {tokenizer.fingerprint}


def _odd_corpus():
    """Real text with what tokenizers trip on: long documents, combining marks, emoji and ZWJ
    sequences, Hangul, right-to-left scripts, zero-width and control characters, unusual spaces,
    texts repeated within and across documents."""
    long_docs = [pydoc.render_doc(m, renderer=pydoc.plaintext) for m in (json, tempfile, pydoc)]
    odd = [
        "Cafe\u0301 na\u00efve re\u0301sume\u0301 \u00c5ngstro\u0308m.",
        "Family: \U0001F468\u200D\U0001F469\u200D\U0001F467 flags \U0001F1EB\U0001F1F7 and \U0001F44D\U0001F3FD!",
        "한국어를 배우는 것은 재미있습니다. " * 30,
        "שלום עולם. مرحبا بالعالم. " * 20,
        "zero\u200bwidth\u2060joiner\ufeffbom\u00a0nbsp\u3000ideographic\u2028line\u2029para",
        "tabs\tand\x0bvertical\x0cfeeds\r\nand\x00nul\x1bescape",
        "日本語のテキストです。これは二番目の文です。" * 40,
        "x" * 3000,
        "(((" + "a" * 500 + ")))" + ". " * 200,
    ]
    repeated = [f"Record {i % 40} talks about item {i % 7}." for i in range(300)]
    return long_docs + odd + repeated + odd[:3] + [long_docs[0]]


def test_length_buckets_from_stored_ids_equal_tokenizing_the_texts(tmp_path, tokenizer, monkeypatch):
    """The ids chunks stored give length_buckets exactly what tokenizing every chunk text gives:
    same ids, lengths, buckets, order and positions, for one and two workers."""
    root = str(tmp_path)
    texts = _odd_corpus()
    _raw(root, BATCH, texts)
    monkeypatch.setattr(chunks, "SLICE_DOCUMENTS", 20)
    monkeypatch.setattr(buckets, "RUN_ROWS", 150)
    monkeypatch.setattr(buckets, "READ_CHUNKS", 100)
    chunks.chunk_batch(root, BATCH, tokenizer, 64, 8, log=quiet, workers=2)
    stored = {}
    for workers in (1, 2):
        info = buckets.bucket_batch(root, BATCH, tokenizer, log=quiet, workers=workers)
        assert info["token_ids"] == "made by chunks" and info["tokenized_texts"] == 0 and info["sorted_runs"] > 3
        stored[workers] = lake.read_partition(root, tables.BUCKETS, BATCH)
    assert stored[1].equals(stored[2])
    messages = []
    monkeypatch.setattr(buckets, "stored_ids_problem", lambda *a: "asked to tokenize")
    info = buckets.bucket_batch(root, BATCH, tokenizer, log=messages.append, workers=2)
    assert info["tokenized_texts"] > 0 and info["token_ids"] == "tokenized here: asked to tokenize"
    assert any("asked to tokenize" in m for m in messages)
    tokenized = lake.read_partition(root, tables.BUCKETS, BATCH)
    assert tokenized.num_rows > 500 and stored[2].equals(tokenized)
    chunk_rows = lake.read_partition(root, tables.CHUNKS, BATCH).to_pylist()
    order, ids = _reference_order(chunk_rows, tokenizer)
    assert tokenized.column("chunk_id").to_pylist() == order and tokenized.column("input_ids").to_pylist() == ids


_OLD_CHUNKS_SCHEMA = pa.schema([f for f in tables.CHUNKS_SCHEMA if f.name not in ("input_ids", "tokenizer")])


def test_a_chunks_table_of_the_earlier_schema_gains_the_id_columns(tmp_path, tokenizer):
    """A lake whose chunks table predates the stored ids: the next chunks write adds the columns
    (the old partition's rows read back null there), and length_buckets tokenizes the old
    partition, saying why, with the same result as from stored ids."""
    root = str(tmp_path)
    texts = _corpus()
    _raw(root, "old", texts)
    _raw(root, BATCH, texts)
    # The old partition, as the earlier version wrote it (its schema, no id columns).
    rows = _reference_chunks(tokenizer, texts, [f"doc{i:05d}" for i in range(len(texts))], 256, 32)
    names = ["doc_id", "chunk_id", "chunk_index", "text", "text_hash", "n_tokens", "char_start", "char_end"]
    old = pa.table({"batch": ["old"] * len(rows), **{n: [r[i] for r in rows] for i, n in enumerate(names)}}, schema=_OLD_CHUNKS_SCHEMA)
    lake.replace_partition(root, tables.CHUNKS, "old", old)
    assert "input_ids" not in lake.dataset(root, tables.CHUNKS).schema.names

    messages = []
    chunks.chunk_batch(root, BATCH, tokenizer, 256, 32, log=messages.append, workers=1)
    assert messages[0] == "chunks table: added the columns input_ids, tokenizer (null in the rows written before)"
    assert not any("added the columns" in m for m in messages[1:])
    messages.clear()
    assert {"input_ids", "tokenizer"} <= set(lake.dataset(root, tables.CHUNKS).schema.names)
    old_back = lake.read_partition(root, tables.CHUNKS, "old")
    assert old_back.column("input_ids").null_count == old_back.column("tokenizer").null_count == len(rows)
    assert old_back.select(names).to_pylist() == old.select(names).to_pylist()
    new = lake.read_partition(root, tables.CHUNKS, BATCH)
    assert new.select(names).to_pylist() == old.select(names).to_pylist() and new.column("input_ids").null_count == 0

    info = buckets.bucket_batch(root, "old", tokenizer, log=messages.append, workers=1)
    assert info["tokenized_texts"] > 0
    assert messages == ["tokenizing the chunks of old: %s chunks hold no token ids (written by an earlier version)" % f"{len(rows):,}"]
    from_text = lake.read_partition(root, tables.BUCKETS, "old")
    info = buckets.bucket_batch(root, BATCH, tokenizer, log=messages.append, workers=1)
    assert info["tokenized_texts"] == 0 and len(messages) == 1
    from_ids = lake.read_partition(root, tables.BUCKETS, BATCH)
    assert from_text.drop_columns(["batch"]).equals(from_ids.drop_columns(["batch"]))


def test_length_buckets_tokenizes_ids_of_another_tokenizer(tmp_path, tokenizer):
    root = str(tmp_path)
    _raw(root, BATCH, ["A first document.", "A second one, a little longer than the first."])
    chunks.chunk_batch(root, BATCH, tokenizer, None, 32, log=quiet, workers=1)
    other = dataclasses.replace(tokenizer, fingerprint="tok-other")
    messages = []
    info = buckets.bucket_batch(root, BATCH, other, log=messages.append, workers=1)
    assert info["tokenized_texts"] == 2
    assert messages == [f"tokenizing the chunks of {BATCH}: 2 chunks hold ids of another tokenizer ({tokenizer.fingerprint}; the model's is tok-other)"]
    assert set(lake.read_partition(root, tables.BUCKETS, BATCH).column("tokenizer").to_pylist()) == {"tok-other"}


def test_empty_upstream_partitions_give_empty_partitions(tmp_path, tokenizer):
    root = str(tmp_path)
    _raw(root, "other", ["A document of another batch."])
    _raw(root, BATCH, [])
    info = chunks.chunk_batch(root, BATCH, tokenizer, None, 32, log=quiet, workers=2)
    assert info["empty_upstream"] and info["chunks"] == 0 and info["documents"] == 0
    binfo = buckets.bucket_batch(root, BATCH, tokenizer, log=quiet, workers=1)
    assert binfo["empty_upstream"] and binfo["chunks"] == 0
    for name in (tables.CHUNKS, tables.BUCKETS):
        assert lake.read_partition(root, name, BATCH).num_rows == 0
    empty = tables.embeddings_schema(4).empty_table()
    lake.replace_partition(root, tables.EMBEDDINGS, BATCH, empty)
    dinfo = documents.document_vectors(root, BATCH, log=quiet)
    assert dinfo["empty_upstream"] and dinfo["documents"] == 0
    assert lake.read_partition(root, tables.DOCUMENTS, BATCH).num_rows == 0
    verdicts = {name: passed for name, passed, _ in checks.embedding_checks(root, BATCH, 4, "m", True)}
    assert all(verdicts.values()), verdicts


def test_stages_refuse_a_missing_upstream_table(tmp_path, tokenizer):
    with pytest.raises(RuntimeError, match="materialize raw_documents first"):
        chunks.chunk_batch(str(tmp_path), BATCH, tokenizer, None, 32, log=quiet, workers=1)
    with pytest.raises(RuntimeError, match="materialize chunks first"):
        buckets.bucket_batch(str(tmp_path), BATCH, tokenizer, log=quiet, workers=1)
    with pytest.raises(RuntimeError, match="materialize embeddings first"):
        documents.document_vectors(str(tmp_path), BATCH, log=quiet)


def _buckets_and_embeddings(root, rows, dimension=8, seed=0):
    """length_buckets rows (doc_id, text_hash, n_tokens) and one random vector per row, in that order."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    doc_ids, hashes, counts = (list(x) for x in zip(*rows))
    chunk_ids = [f"{i:032x}" for i in range(n)]
    lake.replace_partition(root, tables.BUCKETS, BATCH, pa.table({
        "batch": [BATCH] * n, "chunk_id": chunk_ids, "doc_id": doc_ids, "text_hash": hashes, "position": np.arange(n),
        "bucket": np.zeros(n, np.int32), "n_tokens": np.array(counts, np.int32),
        "input_ids": pa.array([[1]] * n, pa.large_list(pa.int32())), "tokenizer": ["t"] * n,
    }, schema=tables.LENGTH_BUCKETS))
    vectors = rng.standard_normal((n, dimension)).astype(np.float32)
    lake.replace_partition(root, tables.EMBEDDINGS, BATCH, pa.table({
        "batch": [BATCH] * n, "doc_id": doc_ids, "chunk_id": chunk_ids, "text_hash": hashes,
        "embedding": tables.vectors_to_arrow(vectors, dimension), "model": ["m"] * n, "embedded_at": pa.array([None] * n, tables.TS),
    }, schema=tables.embeddings_schema(dimension)))
    return vectors


def test_document_vectors_are_token_weighted_means_in_doc_id_order(tmp_path, monkeypatch):
    root = str(tmp_path)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(3000):
        doc = f"doc-{int(rng.integers(0, 700))}" + ("é" * int(rng.integers(0, 3)))
        text = f"t{int(rng.integers(0, 400))}"  # identical texts across documents
        rows.append((doc, text_hash(text), len(text) + 2))
    vectors = _buckets_and_embeddings(root, rows)
    monkeypatch.setattr(documents, "RUN_ROWS", 250)
    monkeypatch.setattr(documents, "READ_ROWS", 97)
    monkeypatch.setattr(documents, "OUT_ROWS", 50)
    info = documents.document_vectors(root, BATCH, log=quiet)
    out = lake.read_partition(root, tables.DOCUMENTS, BATCH)
    expected_ids = sorted({r[0] for r in rows}, key=lambda s: s.encode())
    assert out.column("doc_id").to_pylist() == expected_ids and info["documents"] == len(expected_ids) and info["chunks"] == 3000
    got = tables.arrow_to_vectors(out.column("embedding"))
    for k, doc in enumerate(expected_ids):
        members = [i for i, r in enumerate(rows) if r[0] == doc]
        total = sum(vectors[i] * np.float32(rows[i][2]) for i in members)
        assert out.column("n_chunks")[k].as_py() == len(members)
        assert np.allclose(got[k], total / np.linalg.norm(total), atol=1e-6)
    assert set(out.column("model").to_pylist()) == {"m"}


# ---------------------------------------------------------------- checks

def _old_checks(root, batch, dimension, fingerprint, normalized):
    """The checks as computed before they streamed (the whole partition in Python sets): the reference."""
    import pyarrow.compute as pc

    emb = lake.read_partition(root, tables.EMBEDDINGS, batch, columns=["chunk_id", "embedding", "model"])
    meta = lake.read_partition(root, tables.BUCKETS, batch, columns=["chunk_id"])
    have = emb.column("chunk_id").to_pylist()
    current = set(meta.column("chunk_id").to_pylist())
    lengths = pc.list_value_length(emb.column("embedding"))
    wrong_dim = int(pc.sum(pc.not_equal(lengths, dimension)).as_py() or 0)
    vectors = tables.arrow_to_vectors(emb.column("embedding")) if not wrong_dim else np.zeros((0, dimension), np.float32)
    nonfinite = int((~np.isfinite(vectors).all(axis=1)).sum()) if len(vectors) else 0
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    off_unit = int((np.abs(norms - 1.0) > 1e-3).sum()) if normalized else 0
    models = pc.unique(emb.column("model")).to_pylist()
    return [
        ("one_vector_per_chunk", len(have) == len(set(have)) and current == set(have), {"rows": len(have), "chunks": len(current), "duplicates": len(have) - len(set(have)), "missing": len(current - set(have)), "extra": len(set(have) - current)}),
        ("finite_values", nonfinite == 0 and not wrong_dim, {"non_finite_vectors": nonfinite}),
        ("expected_dimension", wrong_dim == 0, {"dimension": dimension, "wrong_dimension_rows": wrong_dim}),
        ("unit_norm", off_unit == 0, {"normalized_model": normalized, "off_unit_vectors": off_unit, "max_norm_error": float(np.abs(norms - 1).max()) if len(norms) and normalized else 0.0}),
        ("single_fingerprint", models == [fingerprint], {"fingerprints": ", ".join(models), "expected": fingerprint}),
    ]


def _broken(root, breakage, n=30_000, dimension=8):
    rng = np.random.default_rng(0)
    ids = [f"{i:032x}" for i in range(n)]
    lake.replace_partition(root, tables.BUCKETS, BATCH, pa.table({
        "batch": [BATCH] * n, "chunk_id": ids, "doc_id": ["d"] * n, "text_hash": ids, "position": np.arange(n),
        "bucket": np.zeros(n, np.int32), "n_tokens": np.ones(n, np.int32), "input_ids": pa.array([[1]] * n, pa.large_list(pa.int32())),
        "tokenizer": ["t"] * n,
    }, schema=tables.LENGTH_BUCKETS))
    v = rng.standard_normal((n, dimension)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = {"chunk_id": list(ids), "embedding": [list(map(float, x)) for x in v], "model": ["m"] * n}
    if breakage == "duplicate row":
        for c in rows:
            rows[c].append(rows[c][n - 5])
    elif breakage == "NaN vector":
        rows["embedding"][20_000] = [float("nan")] * dimension
    elif breakage == "wrong dimension":
        rows["embedding"][25_000] = [0.5] * (dimension - 1)
    elif breakage == "missing chunk":
        for c in rows:
            del rows[c][7]
    elif breakage == "two fingerprints":
        rows["model"][29_000] = "other"
    elif breakage == "not unit norm":
        rows["embedding"][9] = [1.0] * dimension
    k = len(rows["chunk_id"])
    lake.replace_partition(root, tables.EMBEDDINGS, BATCH, pa.table({
        "batch": [BATCH] * k, "doc_id": ["d"] * k, "chunk_id": rows["chunk_id"], "text_hash": rows["chunk_id"],
        "embedding": pa.array(rows["embedding"], pa.list_(pa.float32())), "model": rows["model"], "embedded_at": pa.array([None] * k, tables.TS),
    }))


@pytest.mark.parametrize("breakage, failing", [
    ("none", set()),
    ("duplicate row", {"one_vector_per_chunk"}),
    ("NaN vector", {"finite_values"}),
    ("wrong dimension", {"finite_values", "expected_dimension"}),
    ("missing chunk", {"one_vector_per_chunk"}),
    ("two fingerprints", {"single_fingerprint"}),
    ("not unit norm", {"unit_norm"}),
])
def test_checks_give_the_verdicts_and_details_of_the_whole_partition_checks(tmp_path, breakage, failing):
    root = str(tmp_path)
    _broken(root, breakage)
    got = checks.embedding_checks(root, BATCH, 8, "m", True)
    assert {name for name, passed, _ in got if not passed} == failing
    assert repr(got) == repr(_old_checks(root, BATCH, 8, "m", True))  # NaN-safe comparison of the details
    assert repr(checks.embedding_checks(root, BATCH, 8, "m", False)) == repr(_old_checks(root, BATCH, 8, "m", False))


def test_checks_without_an_embeddings_table(tmp_path):
    got = checks.embedding_checks(str(tmp_path), BATCH, 8, "m", True)
    assert [name for name, _, _ in got] == list(checks.CHECKS)
    assert all(not passed and details == {"reason": "no embeddings table"} for _, passed, details in got)


def test_sorted_runs_merge_in_key_order(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(0, 3000))
        lengths = rng.integers(0, 20, n).astype(np.int32)
        hashes = [f"{int(x):02x}" * 4 for x in rng.integers(0, 30, n)]
        table = pa.table({"n": lengths, "h": hashes, "seq": np.arange(n)})

        def key(b):
            return [b.column("n").to_numpy(), fixed_width(b.column("h")), b.column("seq").to_numpy()]

        with spill.SortedRuns(table.schema, key, run_rows=int(rng.integers(1, 500)), read_rows=int(rng.integers(1, 200)), fan_in=int(rng.integers(2, 5)), folder=str(tmp_path)) as runs:
            for b in table.to_batches(max_chunksize=int(rng.integers(1, 300))):
                runs.add(b)
            merged = [b.column("seq").to_numpy() for b in runs.merged()]
        got = np.concatenate(merged) if merged else np.zeros(0, dtype=np.int64)
        expected = np.lexsort((np.array(hashes, dtype=object), lengths)) if n else np.zeros(0, dtype=np.int64)
        assert np.array_equal(got, expected), trial
    assert os.listdir(tmp_path) == []  # the runs' folders are removed


# ---------------------------------------------------------------- memory

_MEASURE = """
import json, resource, sys
from embedding_assets.lib.encoders import load_tokenizer
from embedding_assets.lib.stages import buckets, documents
stage, root = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if stage.startswith("length_buckets"):
    tokenizer = load_tokenizer("bundled")
    tokenizer.encode_batch(["warm up"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    buckets.bucket_batch(root, "b1", tokenizer, log=lambda m: None, workers=1)
else:
    documents.document_vectors(root, "b1", log=lambda m: None)
print(json.dumps({"before": before * 1024, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _peak(stage, root):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", _MEASURE, stage, root], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _chunks_table(root, n, with_ids):
    """n chunks of ~42 tokens; with ids stored (as chunks writes them) or in the earlier schema."""
    rng = np.random.default_rng(n)
    words = np.array(["delta", "lake", "vector", "chunk", "token", "bucket", "stream", "memory", "merge", "sorted", "arrow", "batch"])
    texts = [" ".join(words[rng.integers(0, len(words), 40)]) + f" {i}" for i in range(n)]
    hashes = [text_hash(t) for t in texts]
    columns = {
        "batch": [BATCH] * n, "doc_id": [f"d{i}" for i in range(n)], "chunk_id": [f"{i:032x}" for i in range(n)],
        "chunk_index": np.zeros(n, np.int32), "text": pa.array(texts, pa.large_string()), "text_hash": hashes,
        "n_tokens": np.full(n, 42, np.int32), "char_start": np.zeros(n, np.int64), "char_end": np.zeros(n, np.int64),
    }
    if with_ids:
        ids = rng.integers(1000, 30000, size=(n, 42)).astype(np.int32)
        columns["input_ids"] = pa.LargeListArray.from_arrays(pa.array(np.arange(0, 42 * n + 1, 42, dtype=np.int64)), pa.array(ids.reshape(-1)))
        columns["tokenizer"] = [load_tokenizer("bundled").fingerprint] * n
    lake.replace_partition(root, tables.CHUNKS, BATCH, pa.table(columns, schema=tables.CHUNKS_SCHEMA if with_ids else _OLD_CHUNKS_SCHEMA))


@pytest.mark.parametrize("stage", ["length_buckets", "length_buckets_tokenizing", "document_embeddings"])
def test_streaming_stage_memory_does_not_grow_with_the_partition(tmp_path, stage):
    """Peak RSS of the stage in its own process on 1x and 10x data. The whole-partition code grew by
    well over the data's size (10x: ~240 MB of 384-d vectors, ~120 MB of token ids as Python
    ints); streaming, the growth stays a fraction of it."""
    peaks = {}
    for n in (15_000, 150_000):
        root = str(tmp_path / f"n{n}")
        if stage.startswith("length_buckets"):
            _chunks_table(root, n, with_ids=stage == "length_buckets")
        else:
            rows = [(f"doc{(i * 7919) % (n // 3)}", f"{i % (n // 2):064x}", 20) for i in range(n)]
            _buckets_and_embeddings(root, rows, dimension=384)
        measured = _peak(stage, root)
        peaks[n] = measured["peak"] - measured["before"]
    growth = (peaks[150_000] - peaks[15_000]) / (1 << 20)
    assert growth < 80, f"{stage}: peak grew by {growth:.0f} MB from 15k to 150k rows"


def test_a_document_of_one_window_gives_the_chunk_the_general_path_gives(tokenizer, monkeypatch):
    """Short documents skip ranking the gaps; the chunk is the one the general path makes."""
    rng = np.random.default_rng(3)
    words = ["Delta", "lake.", "vector", "  ", "\n\n", "chunk,", "token", "日本語", "über", "e\u0301", "🎉", "x" * 40, "(a)", "-"]
    texts = ["", " ", "\n"] + ["".join(rng.choice(words, int(rng.integers(1, 120)))) for _ in range(300)]
    fast = Chunker(tokenizer.tokenizer, 64, overlap=8, keep_ids=True)
    general = Chunker(tokenizer.tokenizer, 64, overlap=8, keep_ids=True)
    monkeypatch.setattr(general, "_single_chunk", lambda text, plain: None)
    for text in texts:
        a, b = fast.split(text), general.split(text)
        assert a == b, text
        assert all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, b))


def test_cpu_workers_default_to_the_available_cpus(monkeypatch):
    from embedding_assets.lib import settings
    from embedding_assets.lib.cpus import available_cpus

    monkeypatch.delenv("EMBEDDING_CPU_WORKERS", raising=False)
    assert settings.cpu_workers() == available_cpus()
    monkeypatch.setenv("EMBEDDING_CPU_WORKERS", "3")
    assert settings.cpu_workers() == 3
    monkeypatch.setenv("EMBEDDING_CPU_WORKERS", "0")
    with pytest.raises(ValueError, match="EMBEDDING_CPU_WORKERS"):
        settings.cpu_workers()


def test_slices_handed_to_workers_carry_only_their_own_rows():
    """A slice pickled for a worker holds its rows' text, not the buffers of the row group it was
    cut from (a few long documents of a decoded 16 MB row group would each carry 16 MB)."""
    import pickle

    texts = [f"document {i} " + "word " * 20_000 for i in range(100)]  # ~10 MB
    whole = pa.record_batch([pa.array([f"d{i}" for i in range(100)]), pa.array(texts, pa.large_string())], names=["doc_id", "text"])
    slices = list(chunks.text_slices([whole.slice(10, 80)], max_rows=1024, max_bytes=300_000))
    assert [r for s in slices for r in s.column("doc_id").to_pylist()] == [f"d{i}" for i in range(10, 90)]
    for part in slices:
        own = sum(len(t.encode()) for t in part.column("text").to_pylist())
        assert len(pickle.dumps(part)) < own + 64 * 1024, (len(pickle.dumps(part)), own)
