"""Chunker memory and speed: the whole-document chunker against the segmented one, and the chunks
work over one process against two.

  HF_HUB_OFFLINE=1 python benchmarks/chunker_memory.py [--sizes-mb 5,10] [--workers 2] [--docs 4000]

For every document size, each chunker runs in a fresh process (python ... child) on generated
text (Python's own pydoc documentation, repeated): the peak RSS over what the process held before
chunking (tokenizer loaded, text built, a warm-up run), as MiB and as a multiple of the text's
UTF-8 size, and chunk tokens per second. The old chunker is the test suite's `reference_split`.
Then `chunk_documents` over many small documents, inline and over a worker pool.
"""

from __future__ import annotations

import argparse
import json
import os
import pydoc
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODULES = ["json", "collections", "argparse", "typing", "http.client", "email.message", "pathlib", "re", "logging", "subprocess"]


def corpus() -> str:
    import importlib

    return "\n\n".join(pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in MODULES)


def document(base: str, chars: int) -> str:
    return (base * (chars // len(base) + 1))[:chars]


def child(impl: str, mb: float, max_tokens: int, overlap: int, corpus_path: str) -> None:
    from embedding_assets.lib.chunking import Chunker
    from embedding_assets.lib.encoders import load_tokenizer

    tokenizer = load_tokenizer("bundled").tokenizer
    with open(corpus_path, encoding="utf-8") as handle:  # one text for every run (pydoc shows addresses)
        text = document(handle.read(), int(mb * 1_000_000))
    if impl == "old":
        from embedding_assets_tests.lib.test_chunking import reference_split

        def run(t):
            return [c[4] for c in reference_split(tokenizer, max_tokens, overlap, t)]
    else:
        chunker = Chunker(tokenizer, max_tokens, overlap=overlap)

        def run(t):
            return [c.n_tokens for c in chunker.iter_split(t)]
    run(text[:200_000])  # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    tokens = sum(run(text))
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"extra": peak - before, "utf8": len(text.encode()), "tokens": tokens, "seconds": elapsed}))


def measure(impl: str, mb: float, max_tokens: int, overlap: int, corpus_path: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "child", impl, str(mb), str(max_tokens), str(overlap), corpus_path],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ROOT},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def pool_throughput(workers: int, docs: int, max_tokens: int, overlap: int, per_batch: int) -> tuple[float, int, float]:
    import pyarrow as pa

    from embedding_assets.lib import parallel
    from embedding_assets.lib.encoders import load_tokenizer

    tokenizer = load_tokenizer("bundled").tokenizer
    base = corpus()
    texts = [base[(i * 1237) % (len(base) - 6000):][: 1500 + (i * 769) % 4500] for i in range(docs)]
    batches = [
        pa.record_batch([pa.array([f"d{i}" for i in range(s, min(s + per_batch, docs))]), pa.array(texts[s:s + per_batch])], names=["doc_id", "text"])
        for s in range(0, docs, per_batch)
    ]
    started = time.perf_counter()
    tokens = chunks = 0
    for result in parallel.ordered_map(
        parallel.chunk_record_batch, batches, workers,
        initializer=parallel.init_chunker, initargs=(tokenizer.to_str(), max_tokens, overlap),
    ):
        tokens += int(pa.compute.sum(result.chunks.column("n_tokens")).as_py() or 0)
        chunks += result.chunks.num_rows
    return time.perf_counter() - started, tokens, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="5,10")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--per-batch", type=int, default=256)
    parser.add_argument("--skip-old", action="store_true", help="only the segmented chunker (the old one needs ~200x the text)")
    args = parser.parse_args()
    import pyarrow.compute  # noqa: F401

    corpus_file = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False)
    with corpus_file:
        corpus_file.write(corpus())

    print(f"one document, max_tokens={args.max_tokens} overlap={args.overlap}, a fresh process per run")
    print(f"{'size':>8} {'chunker':>8} {'peak extra':>12} {'x UTF-8':>8} {'tokens/s':>10}")
    for mb in [float(s) for s in args.sizes_mb.split(",")]:
        rows = {}
        for impl in (("new",) if args.skip_old else ("old", "new")):
            r = rows[impl] = measure(impl, mb, args.max_tokens, args.overlap, corpus_file.name)
            print(f"{mb:>6g}MB {impl:>8} {r['extra'] / 2**20:>9.0f} MiB {r['extra'] / r['utf8']:>8.1f} {r['tokens'] / r['seconds']:>10,.0f}", flush=True)
        if "old" in rows:
            old, new = rows["old"], rows["new"]
            assert old["tokens"] == new["tokens"]
            print(f"{mb:>6g}MB    ratio  memory old/new {old['extra'] / max(new['extra'], 1):.0f}x, speed new/old {old['seconds'] / new['seconds']:.2f}x")
    os.unlink(corpus_file.name)
    print(f"\nchunk_documents over {args.docs} documents in record batches of {args.per_batch} (pool start-up included)")
    serial = pool_throughput(1, args.docs, args.max_tokens, args.overlap, args.per_batch)
    pooled = pool_throughput(args.workers, args.docs, args.max_tokens, args.overlap, args.per_batch)
    assert serial[1:] == pooled[1:]
    for name, (seconds, tokens, chunks) in (("1 worker (inline)", serial), (f"{args.workers} workers", pooled)):
        print(f"{name:>18}: {seconds:6.1f} s, {chunks:,} chunks, {tokens / seconds:10,.0f} tokens/s")
    print(f"{'speed-up':>18}: {serial[0] / pooled[0]:.2f}x on {len(os.sched_getaffinity(0))} CPUs")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
