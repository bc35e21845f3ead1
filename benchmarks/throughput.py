"""Throughput: the plain approach vs. this project's engine, on the same chunks, in one run.

    .venv/bin/python benchmarks/throughput.py            # in-process comparison
    .venv/bin/python benchmarks/throughput.py --e2e      # + whole-process dagster vs plain script

Corpus: the project's demo corpus (`embedding-assets demo-corpus`: pydoc pages of 32 stdlib
modules, cut at 6,000 characters, plus one record per documented function: real, mixed-length
text), landed, ingested, chunked (our Chunker, at most 256 tokens, 32 overlap) and tokenized
(length_buckets) with the project's own stage functions. The chunks table gives the texts in
file order; length_buckets gives the token ids the engine reads.

"In process": each method is loaded once in its own long-lived worker process (so torch's
OpenMP threads and ONNX Runtime's never share a process or spin next to each other), then timed
in alternating rounds (the order rotates each round; each method's best round counts):
  (a) plain    the loop from the guides: batches of 64 texts in file order through
               SentenceTransformer.encode (fp32, batch_size=64: one forward per 64 texts)
  (b) st-all   SentenceTransformer.encode over all texts at once (it sorts by length itself)
  (c) torch    our engine, torch fp32, token-budget batches of length-sorted pre-tokenized ids
  (d) onnx     our engine, ONNX Runtime fp32
  (e) onnx-int8  our engine, ONNX Runtime int8 (if its fidelity gate passes; else it says so)
Tokens/s counts real tokens (special tokens included, padding excluded), the same number for
every method. Model loading and the one-time ONNX export are not timed here.

With --e2e, whole processes, alternating: `dagster asset materialize --select embeddings` (Delta
write and asset checks included, tokenization done upstream by length_buckets) per backend, vs.
a fresh `python -c` running the plain loop (imports, model load, reading the chunks from parquet,
writing a parquet of vectors).

No Dagster import in this process: Dagster runs only as the measured subprocess.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: works without an install
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH = "bench"
PROTOCOL = "@@throughput@@ "

PLAIN_SCRIPT = r"""
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer
src, dst, model = sys.argv[1:4]
table = pq.read_table(src)
texts = table.column("text").to_pylist()
st = SentenceTransformer(model, device="cpu")
vectors = np.concatenate([st.encode(texts[i:i + 64], batch_size=64) for i in range(0, len(texts), 64)])
flat = pa.array(vectors.astype(np.float32).ravel())
pq.write_table(pa.table({"text_hash": table.column("text_hash"), "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}), dst)
"""


def quiet(_msg: str) -> None:
    pass


def cpu_name() -> str:
    from embedding_assets.lib.encoders.tuning import cpu_model_name

    return cpu_model_name()


# ---------------------------------------------------------------- the corpus

def prepare(workdir: Path, model: str, modules: int | None, max_tokens: int, overlap: int) -> dict:
    """Lands the demo corpus and runs raw_documents, chunks and length_buckets into workdir/lake."""
    from embedding_assets.lib import stages
    from embedding_assets.lib.demo import MODULES, build_demo_corpus
    from embedding_assets.lib.encoders import load_tokenizer

    landing, lake_root = workdir / "landing", workdir / "lake"
    info = build_demo_corpus(str(landing / BATCH), modules=MODULES[:modules] if modules else None)
    tokenizer = load_tokenizer(model)
    timings = {}
    started = time.perf_counter()
    stages.ingest_batch(str(landing), str(lake_root), BATCH, max_file_bytes=1 << 28, log=quiet)
    timings["raw_documents_s"] = time.perf_counter() - started
    started = time.perf_counter()
    stages.chunk_batch(str(lake_root), BATCH, tokenizer, max_tokens, overlap, log=quiet)
    timings["chunks_s"] = time.perf_counter() - started
    started = time.perf_counter()
    stages.bucket_batch(str(lake_root), BATCH, tokenizer, log=quiet)
    timings["length_buckets_s"] = time.perf_counter() - started
    corpus = load_corpus(workdir)
    corpus["documents"] = info["files"] - 1 + info["records"]
    corpus["stage_seconds"] = timings
    return corpus


def load_corpus(workdir: Path) -> dict:
    """The chunks in file order (texts) and the length-sorted token ids from length_buckets."""
    import pyarrow.parquet as pq

    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables

    lake_root = workdir / "lake"
    chunks = lake.read_partition(str(lake_root), tables.CHUNKS, BATCH, columns=["doc_id", "chunk_index", "text", "text_hash"])
    order = sorted(range(chunks.num_rows), key=lambda i: (chunks.column("doc_id")[i].as_py(), chunks.column("chunk_index")[i].as_py()))
    chunks = chunks.take(order)  # file order: document by document, chunk by chunk
    buckets = lake.read_partition(str(lake_root), tables.BUCKETS, BATCH, columns=["position", "text_hash", "input_ids"])
    buckets = buckets.sort_by("position")
    column = buckets.column("input_ids").combine_chunks()
    offsets, values = column.offsets.to_numpy(), column.values.to_numpy().astype(np.int64)
    sorted_ids = [values[offsets[i]:offsets[i + 1]] for i in range(len(buckets))]
    sorted_hashes = buckets.column("text_hash").to_pylist()
    position_of = {}
    for i, h in enumerate(sorted_hashes):
        position_of.setdefault(h, i)
    file_hashes = chunks.column("text_hash").to_pylist()
    file_to_sorted = np.array([position_of[h] for h in file_hashes])
    lengths_sorted = np.array([len(t) for t in sorted_ids])
    chunks_parquet = workdir / "chunks_file_order.parquet"
    if not chunks_parquet.exists():
        pq.write_table(chunks.select(["text_hash", "text"]), chunks_parquet)
    return {
        "landing": str(workdir / "landing"),
        "lake": str(lake_root),
        "texts": chunks.column("text").to_pylist(),
        "file_hashes": file_hashes,
        "sorted_ids": sorted_ids,
        "file_to_sorted": file_to_sorted,
        "lengths_file": lengths_sorted[file_to_sorted],
        "tokens": int(lengths_sorted.sum()),
        "distinct_texts": len(position_of),
        "chunks_parquet": str(chunks_parquet),
    }


def padded_fraction_plain(lengths: np.ndarray, batch: int = 64) -> float:
    """Batches of `batch` in file order, each padded to its longest row."""
    padded = sum(int(lengths[i:i + batch].max()) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    return 1.0 - lengths.sum() / padded


def padded_fraction_st(texts: list[str], lengths: np.ndarray, batch: int = 32) -> float:
    """SentenceTransformer.encode: sorted by character length (longest first), batches of `batch`."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    ls = lengths[order]
    padded = sum(int(ls[i:i + batch].max()) * len(ls[i:i + batch]) for i in range(0, len(ls), batch))
    return 1.0 - ls.sum() / padded


# ---------------------------------------------------------------- in-process methods

def run_engine(engine, corpus: dict, budget: int):
    from embedding_assets.lib.batching import iter_batches
    from embedding_assets.lib.encoders import EngineStats

    stats = EngineStats()
    out = np.zeros((len(corpus["sorted_ids"]), engine.dimension), dtype=np.float32)
    for batch, vectors in engine.encode_batches(iter_batches(corpus["sorted_ids"], budget), stats):
        out[batch.rows] = vectors
    return out[corpus["file_to_sorted"]], stats.padded_fraction


def make_method(name: str, corpus: dict, model: str, budget: int, cache_dir: str):
    """(run() -> (vectors in file order, padded fraction), note) for one method, loaded and warmed up."""
    from embedding_assets.lib.encoders import resolve_model

    texts = corpus["texts"]
    if name in ("plain", "st-all"):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_model(model), device="cpu")
        st.encode(texts[:16])
        if name == "plain":
            return (lambda: (np.concatenate([st.encode(texts[i:i + 64], batch_size=64) for i in range(0, len(texts), 64)]), padded_fraction_plain(corpus["lengths_file"]))), None
        return (lambda: (st.encode(texts), padded_fraction_st(texts, corpus["lengths_file"]))), None
    from embedding_assets.lib.encoders import build_engine

    engine = build_engine(model, device="cpu", precision="fp32", backend=name, cache_dir=cache_dir)
    first = engine.backends[0]
    if getattr(first, "fallback_reason", None):
        return None, first.fallback_reason  # it would only repeat onnx fp32
    note = f"gate passed: mean cosine {first.gate_cosine:.4f} to fp32 on the calibration sample (recipe {first.recipe})" if name == "onnx-int8" else None
    engine.encode_ids(corpus["sorted_ids"][:8])
    return (lambda: run_engine(engine, corpus, budget)), note


def worker(name: str, workdir: Path, model: str, budget: int, cache_dir: str) -> int:
    """One method in its own process: each process has only its own thread pool (torch's OpenMP
    or ONNX Runtime's), so no method runs next to another's spinning threads. Reads 'run' lines
    on stdin, answers one JSON line per run; vectors go to workdir/vectors-<name>.npy."""
    corpus = load_corpus(workdir)
    run, note = make_method(name, corpus, model, budget, cache_dir)
    print(PROTOCOL + json.dumps({"ready": run is not None, "note": note}), flush=True)
    if run is None:
        return 0
    for line in sys.stdin:
        if line.strip() != "run":
            break
        started = time.perf_counter()
        vectors, padded = run()
        elapsed = time.perf_counter() - started
        np.save(workdir / f"vectors-{name}.npy", vectors)
        print(PROTOCOL + json.dumps({"seconds": elapsed, "padded_fraction": padded}), flush=True)
    return 0


def _answer(proc, name: str) -> dict:
    """The worker's next protocol line (anything else a library printed is skipped)."""
    for line in proc.stdout:
        if line.startswith(PROTOCOL):
            return json.loads(line[len(PROTOCOL):])
    raise SystemExit(f"worker {name} died (run it alone to see why: python benchmarks/throughput.py --worker {name} --workdir <dir>)")


def in_process(corpus: dict, workdir: Path, model: str, budget: int, rounds: int, backends: list[str], cache_dir: str, log=print) -> dict:
    """The methods, each loaded once in its own worker process, timed in alternating rounds."""
    names = ["plain", "st-all"] + backends
    workers, notes = {}, {}
    for name in names:
        args = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir), "--model", model, "--token-budget", str(budget)]
        if cache_dir:
            args += ["--cache-dir", cache_dir]
        workers[name] = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    for name in list(names):  # load one after another is not needed: loading is not timed
        ready = _answer(workers[name], name)
        if ready["note"]:
            notes[name] = ready["note"]
        if not ready["ready"]:
            log(f"{name}: {ready['note']}")
            workers.pop(name).wait()
            names.remove(name)
    log(f"loaded and warmed up, one process each: {', '.join(names)}")
    times: dict[str, list[float]] = {n: [] for n in names}
    padded: dict[str, float] = {}
    try:
        for r in range(rounds):
            rotated = names[r % len(names):] + names[: r % len(names)]
            for name in rotated:
                workers[name].stdin.write("run\n")
                workers[name].stdin.flush()
                result = _answer(workers[name], name)
                times[name].append(result["seconds"])
                padded[name] = result["padded_fraction"]
                log(f"round {r + 1}/{rounds} {name:<10} {result['seconds']:7.1f} s  {corpus['tokens'] / result['seconds']:8,.0f} tokens/s")
    finally:
        for proc in workers.values():
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait(timeout=60)
    vectors = {n: np.load(workdir / f"vectors-{n}.npy") for n in names}
    ref = vectors["plain"]
    results = {}
    for name in names:
        cos = np.sum(vectors[name] * ref, axis=1) / (np.linalg.norm(vectors[name], axis=1) * np.linalg.norm(ref, axis=1))
        best = min(times[name])
        results[name] = {
            "seconds_best": best,
            "seconds_all": times[name],
            "tokens_per_s": corpus["tokens"] / best,
            "tokens_per_s_median": corpus["tokens"] / float(np.median(times[name])),
            "padded_fraction": padded[name],
            "cosine_to_plain_mean": float(cos.mean()),
            "cosine_to_plain_min": float(cos.min()),
        }
    for name in names:
        results[name]["ratio_to_plain"] = results[name]["tokens_per_s"] / results["plain"]["tokens_per_s"]
        results[name]["ratio_to_plain_median"] = results[name]["tokens_per_s_median"] / results["plain"]["tokens_per_s_median"]
    return {"methods": results, "notes": notes}


# ---------------------------------------------------------------- end to end (whole processes)

def end_to_end(corpus: dict, workdir: Path, model: str, budget: int, rounds: int, backends: list[str], cache_dir: str, log=print) -> dict:
    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables
    from embedding_assets.lib.encoders import resolve_model

    import pyarrow.parquet as pq

    bin_dir = Path(sys.executable).parent
    dagster = bin_dir / "dagster"
    if not dagster.exists():
        raise SystemExit(f"--e2e needs the dagster CLI next to {sys.executable}")
    home = workdir / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "EMBEDDING_LANDING": corpus["landing"],
        "EMBEDDING_LAKE": corpus["lake"],
        "EMBEDDING_CACHE": cache_dir,
        "EMBEDDING_TOKEN_BUDGET": str(budget),
        "EMBEDDING_DEVICE": "cpu",
        "EMBEDDING_COMMIT_SECONDS": "30",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run([str(bin_dir / "embedding-assets"), "sync"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"embedding-assets sync failed:\n{done.stdout}\n{done.stderr}")
    plain_out = workdir / "plain_vectors.parquet"
    variants = {"plain-process": [sys.executable, "-c", PLAIN_SCRIPT, corpus["chunks_parquet"], str(plain_out), resolve_model(model)]}
    for backend in backends:
        variants[f"dagster-{backend}"] = [str(dagster), "asset", "materialize", "-m", "embedding_assets.definitions", "--select", "embeddings", "--partition", BATCH]
    times: dict[str, list[float]] = {n: [] for n in variants}
    cosines: dict[str, tuple[float, float]] = {}
    names = list(variants)
    for r in range(rounds):
        rotated = names[r % len(names):] + names[: r % len(names)]
        for name in rotated:
            for table in (tables.EMBEDDINGS, tables.STAGING, tables.DOCUMENTS):
                shutil.rmtree(Path(corpus["lake"]) / table, ignore_errors=True)
            run_env = dict(env)
            if name.startswith("dagster-"):
                run_env["EMBEDDING_BACKEND"] = name.removeprefix("dagster-")
            started = time.perf_counter()
            done = subprocess.run(variants[name], env=run_env, capture_output=True, text=True)
            elapsed = time.perf_counter() - started
            if done.returncode != 0 or (name.startswith("dagster-") and "RUN_SUCCESS" not in done.stdout + done.stderr):
                raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
            times[name].append(elapsed)
            log(f"e2e round {r + 1}/{rounds} {name:<18} {elapsed:7.1f} s")
            if name.startswith("dagster-") and name not in cosines:
                table = lake.read_partition(corpus["lake"], tables.EMBEDDINGS, BATCH, columns=["text_hash", "embedding", "model"])
                cosines[name] = table  # compared below, once the plain vectors exist
    plain = pq.read_table(plain_out)
    plain_vectors = tables.arrow_to_vectors(plain.column("embedding"))
    plain_index = {h: i for i, h in enumerate(plain.column("text_hash").to_pylist())}
    results = {}
    for name in names:
        best = min(times[name])
        entry = {"seconds_best": best, "seconds_all": times[name], "tokens_per_s": corpus["tokens"] / best}
        if name in cosines:
            table = cosines[name]
            vecs = tables.arrow_to_vectors(table.column("embedding"))
            ref = plain_vectors[[plain_index[h] for h in table.column("text_hash").to_pylist()]]
            cos = np.sum(vecs * ref, axis=1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref, axis=1))
            entry.update(rows=table.num_rows, model=table.column("model")[0].as_py(), cosine_to_plain_mean=float(cos.mean()), cosine_to_plain_min=float(cos.min()))
        results[name] = entry
    for name in names:
        results[name]["speedup_vs_plain_process"] = results["plain-process"]["seconds_best"] / results[name]["seconds_best"]
        results[name]["speedup_vs_plain_process_median"] = float(np.median(results["plain-process"]["seconds_all"]) / np.median(results[name]["seconds_all"]))
    return results


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--modules", type=int, default=None, help="use the first N modules of the demo corpus (default: all 32)")
    parser.add_argument("--max-tokens", type=int, default=256, help="largest chunk, in tokens (default 256)")
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--token-budget", type=int, default=None, help="padded tokens per engine batch (default: batching.DEFAULT_TOKEN_BUDGET)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", default="torch,onnx,onnx-int8")
    parser.add_argument("--e2e", action="store_true", help="also time whole processes: dagster asset materialize vs a plain script")
    parser.add_argument("--e2e-rounds", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="ONNX exports (default: EMBEDDING_CACHE)")
    parser.add_argument("--workdir", default=None, help="keep the landing, lake and outputs here (default: a temp folder)")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from embedding_assets.lib.settings import env

        return worker(args.worker, Path(args.workdir), args.model, args.token_budget, os.path.expanduser(args.cache_dir or env("EMBEDDING_CACHE")))

    from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET
    from embedding_assets.lib.settings import env

    budget = args.token_budget or DEFAULT_TOKEN_BUDGET
    cache_dir = os.path.expanduser(args.cache_dir or env("EMBEDDING_CACHE"))
    backends = [b for b in args.backends.split(",") if b]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {load[0]:.2f} at start; python {platform.python_version()}")
    corpus = prepare(workdir, args.model, args.modules, args.max_tokens, args.overlap)
    print(
        f"corpus: demo corpus ({args.modules or 'all'} modules): {corpus['documents']} documents -> {len(corpus['texts'])} chunks "
        f"(Chunker, max {args.max_tokens} tokens, overlap {args.overlap}), {corpus['distinct_texts']} distinct, {corpus['tokens']:,} tokens; "
        f"lengths p10/p50/p90 {np.percentile(corpus['lengths_file'], [10, 50, 90]).astype(int).tolist()}; token budget {budget}"
    )
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs",
        "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "corpus": {k: corpus[k] for k in ("documents", "tokens", "distinct_texts", "stage_seconds")} | {"chunks": len(corpus["texts"]), "max_tokens": args.max_tokens},
        "token_budget": budget,
    }
    report["in_process"] = in_process(corpus, workdir, args.model, budget, args.rounds, backends, cache_dir)
    print()
    print(f"{'method':<12}{'best s':>8}{'tokens/s':>10}{'x plain':>9}{'x (median)':>11}{'padded':>8}{'cos mean':>10}{'cos min':>9}")
    for name, r in report["in_process"]["methods"].items():
        print(
            f"{name:<12}{r['seconds_best']:8.1f}{r['tokens_per_s']:10,.0f}{r['ratio_to_plain']:9.2f}{r['ratio_to_plain_median']:11.2f}"
            f"{r['padded_fraction']:8.1%}{r['cosine_to_plain_mean']:10.5f}{r['cosine_to_plain_min']:9.5f}"
        )
    for name, note in report["in_process"]["notes"].items():
        print(f"note: {name}: {note}")
    if args.e2e:
        print()
        report["end_to_end"] = end_to_end(corpus, workdir, args.model, budget, args.e2e_rounds, backends, cache_dir)
        print(f"{'process':<20}{'best s':>8}{'tokens/s':>10}{'speedup':>9}{'(median)':>9}{'cos mean':>10}{'cos min':>9}")
        for name, r in report["end_to_end"].items():
            cos = f"{r['cosine_to_plain_mean']:10.5f}{r['cosine_to_plain_min']:9.5f}" if "cosine_to_plain_mean" in r else ""
            print(f"{name:<20}{r['seconds_best']:8.1f}{r['tokens_per_s']:10,.0f}{r['speedup_vs_plain_process']:9.2f}{r['speedup_vs_plain_process_median']:9.2f}{cos}")
    load = os.getloadavg()
    report["load_average_end"] = load[0]
    print(f"\nload average {load[0]:.2f} at the end (other work on the machine slows every method; rounds alternate so each sees it)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
