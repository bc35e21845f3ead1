"""Memory: peak RSS of the embeddings step at 10k and 100k chunks; does it grow with the partition?

    .venv/bin/python benchmarks/memory.py                     # 10k and 100k chunks, tiny model
    .venv/bin/python benchmarks/memory.py --sizes 10000,100000 --model bundled
    .venv/bin/python benchmarks/memory.py --model zero --direct --sizes 50000,500000   # issue 12's target

Corpus: synthetic documents of 8 to 64 random English words (one chunk each, all distinct),
landed as one .jsonl and taken through the real stage functions (ingest_batch, chunk_batch,
bucket_batch) into a local Delta lake. Each size is embedded by `stages.embed_batch` in a
fresh subprocess; peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of that process, and a
20 ms RSS sampler attributes the peak to the step's phases (plan, embed into checkpoints, swap in).

Model: by default a tiny random-weight BERT with the bundled model's tokenizer, 1 layer, hidden
384 (so vectors are 384-d like all-MiniLM-L6-v2's and the output buffers are real size), 6 heads,
FFN 384, mean pooling + normalize, saved as a local sentence-transformers folder: 100k chunks
embed in about a minute on 2 cores. Memory of the step does not depend on the weights, only on
shapes. `--model bundled` uses the real model (slow on CPU).

`--model zero` embeds with the benchmark-only zero-cost encoder (`feedkit.ZeroCostBackend`: rows of a
preallocated random 384-d matrix), and `--direct` writes length_buckets straight with the lake's
writer (random token ids, 8-64 tokens, one chunk per document) instead of running ingest, chunks and
length_buckets: the embeddings step's own memory, at 500k chunks in seconds of setup.
The measured process gets `_RJEM_MALLOC_CONF` from the environment, as the Makefile sets it.

Targets: issue 3, peak at 100k chunks within 300 MB of the peak at 10k; issue 12, peak at 500k
within 300 MB of the peak at 50k.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: works without an install
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_MB = 300
MB = 1 << 20


def quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------- setup (parent process)

def tiny_model(folder: Path, hidden: int = 384, layers: int = 1, heads: int = 6, intermediate: int = 384) -> str:
    """A random-weight BERT with the bundled tokenizer, saved as a sentence-transformers folder."""
    if (folder / "modules.json").exists():
        return str(folder)
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    from embedding_assets.lib.encoders import resolve_model

    bundled = Path(resolve_model("bundled"))
    raw = folder.with_name(folder.name + "-hf")
    raw.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=512)
    BertModel(config).save_pretrained(raw)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (bundled / name).exists():
            shutil.copy(bundled / name, raw / name)
    transformer = Transformer(str(raw), max_seq_length=256)
    st = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), Normalize()], device="cpu")
    st.save(str(folder))
    shutil.rmtree(raw, ignore_errors=True)
    return str(folder)


def words(tokenizer_model: str) -> list[str]:
    from embedding_assets.lib.encoders import load_tokenizer

    vocab = load_tokenizer(tokenizer_model).tokenizer.get_vocab()
    return sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2)


def build_partition(workdir: Path, batch: str, n: int, model: str, seed: int = 0) -> dict:
    import numpy as np

    from embedding_assets.lib import stages
    from embedding_assets.lib.encoders import load_tokenizer

    landing, lake_root = workdir / "landing", workdir / "lake"
    folder = landing / batch
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = np.array(words(model))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 65, size=n)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as handle:
        for i, length in enumerate(lengths):
            text = " ".join(vocabulary[rng.integers(0, len(vocabulary), size=int(length))].tolist())
            handle.write(json.dumps({"id": f"d{i}", "text": f"{i} {text}."}) + "\n")
    tokenizer = load_tokenizer(model)
    started = time.perf_counter()
    stages.ingest_batch(str(landing), str(lake_root), batch, max_file_bytes=1 << 30, log=quiet)
    stages.chunk_batch(str(lake_root), batch, tokenizer, 256, 32, log=quiet)
    info = stages.bucket_batch(str(lake_root), batch, tokenizer, log=quiet)
    return {"lake": str(lake_root), "chunks": info["chunks"], "tokens": info["tokens"], "setup_s": time.perf_counter() - started}


# ---------------------------------------------------------------- the measured step (child process)

def child(lake_root: str, batch: str, model: str, budget: int, commit_seconds: float, backend: str = "auto") -> dict:
    import resource
    import threading

    import psutil

    import pyarrow as pa

    process = psutil.Process()
    phase = {"name": "import"}
    peaks: dict[str, int] = {}
    arrow_peaks: dict[str, int] = {}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            rss = process.memory_info().rss
            arrow = pa.total_allocated_bytes()
            name = phase["name"]
            if rss > peaks.get(name, 0):
                peaks[name] = rss
            if arrow > arrow_peaks.get(name, 0):
                arrow_peaks[name] = arrow

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    from embedding_assets.lib import stages
    from embedding_assets.lib.encoders import build_engine

    phase["name"] = "load model"
    if model == "zero":
        from benchmarks.feedkit import ZeroCostBackend, benchmark_engine

        engine = benchmark_engine(ZeroCostBackend())
    else:
        engine = build_engine(model, device="cpu", precision="fp32", backend=backend)
    engine.encode_ids([[101, 2023, 102]])
    rss_loaded = process.memory_info().rss

    def phased(name, fn):
        def wrapper(*args, **kwargs):
            before = phase["name"]
            phase["name"] = name
            try:
                return fn(*args, **kwargs)
            finally:
                phase["name"] = before
        return wrapper

    # Attribute memory to the step's phases without changing them.
    from embedding_assets.lib.stages import embed as embed_stage

    embed_stage.plan_embeddings = phased("plan_embeddings", embed_stage.plan_embeddings)
    embed_stage._embed_into_checkpoints = phased("_embed_into_checkpoints", embed_stage._embed_into_checkpoints)
    embed_stage._swap_in = phased("_swap_in", embed_stage._swap_in)
    phase["name"] = "embed_batch (other)"
    started = time.perf_counter()
    result = stages.embed_batch(lake_root, batch, engine, token_budget=budget, commit_seconds=commit_seconds, log=quiet)
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    return {
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_model_load_bytes": rss_loaded,
        "phase_peak_rss_bytes": peaks,
        "phase_peak_arrow_bytes": arrow_peaks,
        "arrow_memory_pool": result.get("arrow_memory_pool"),
        "backend": result.get("backend"),
        "embed_seconds": elapsed,
        "embedded_texts": result.get("embedded_texts"),
        "commits": result.get("commits"),
        "tokens_per_s": result.get("tokens_per_s"),
        "padded_fraction": result.get("padded_fraction"),
        "dimension": engine.dimension,
        "model": engine.fingerprint,
    }


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, comma separated")
    parser.add_argument("--model", default="tiny", help="'tiny' (random 1-layer BERT, 384-d), 'zero' (the zero-cost benchmark encoder, 384-d) or any model name, e.g. bundled")
    parser.add_argument("--direct", action="store_true", help="write length_buckets straight with the lake writer (random token ids, 8-64 tokens) instead of running ingest/chunks/length_buckets")
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--commit-seconds", type=float, default=30.0)
    parser.add_argument("--backend", default="auto", help="auto (the CPU default: onnx), torch, onnx or onnx-int8")
    parser.add_argument("--child-env", action="append", default=[], metavar="KEY=VALUE", help="environment for the measured process (e.g. ONEDNN_PRIMITIVE_CACHE_CAPACITY=64)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, metavar=("LAKE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.model, args.token_budget, args.commit_seconds, args.backend)))
        return 0

    from embedding_assets.lib.encoders.tuning import cpu_model_name

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model(workdir / "tiny-model") if args.model == "tiny" else args.model
    if args.direct and args.model != "zero":
        raise SystemExit("--direct writes token ids of the bundled tokenizer: use it with --model zero")
    sizes = [int(s) for s in args.sizes.split(",")]
    label = {"tiny": "tiny random-weight BERT (1 layer, hidden 384, bundled tokenizer)", "zero": "zero-cost benchmark encoder (rows of a preallocated random 384-d matrix)"}.get(args.model, model)
    print(f"machine: {cpu_model_name()}; model: {label}")
    report = {
        "date": dt.date.today().isoformat(), "machine": cpu_model_name(), "command": "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "backend": args.backend, "child_env": args.child_env, "sizes": {},
    }
    child_env = {**os.environ, **dict(item.split("=", 1) for item in args.child_env)}
    for n in sizes:
        batch = f"m{n}"
        if (workdir / "lake" / "length_buckets").exists() and (workdir / "landing" / batch).exists():
            from embedding_assets.lib import lake
            from embedding_assets.lib.lake import tables

            info = lake.read_partition(str(workdir / "lake"), tables.BUCKETS, batch, columns=["n_tokens"])
            setup = {"lake": str(workdir / "lake"), "chunks": info.num_rows, "tokens": int(sum(info.column("n_tokens").to_pylist())), "setup_s": 0.0}
            for table in (tables.EMBEDDINGS, tables.STAGING):  # re-embed from scratch
                lake.delete_partition(setup["lake"], table, batch)
        elif args.direct:
            from benchmarks.feedkit import write_length_buckets

            setup = {"lake": str(workdir / "lake"), **write_length_buckets(str(workdir / "lake"), batch, n, 8, 64)}
        else:
            setup = build_partition(workdir, batch, n, model)
        print(f"{n:>7} chunks: {setup['tokens']:,} tokens, length_buckets built in {setup['setup_s']:.0f} s; embedding in a fresh process ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", setup["lake"], batch, "--model", model, "--token-budget", str(args.token_budget),
             "--commit-seconds", str(args.commit_seconds), "--backend", args.backend],
            capture_output=True, text=True, env=child_env,
        )
        if done.returncode != 0:
            raise SystemExit(f"child failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result.update(setup)
        report["sizes"][n] = result
        phases = ", ".join(f"{k} {v / MB:,.0f}" for k, v in result["phase_peak_rss_bytes"].items())
        print(
            f"{n:>7} chunks: peak RSS {result['ru_maxrss_bytes'] / MB:,.0f} MB (after model load {result['rss_after_model_load_bytes'] / MB:,.0f} MB), "
            f"embedded {result['embedded_texts']} in {result['embed_seconds']:.0f} s, {result['commits']} checkpoint commits; phase peaks MB: {phases}",
            flush=True,
        )
    if len(sizes) >= 2:
        small, large = report["sizes"][sizes[0]], report["sizes"][sizes[-1]]
        growth = (large["ru_maxrss_bytes"] - small["ru_maxrss_bytes"]) / MB
        report["growth_mb"] = growth
        report["target_holds"] = growth <= TARGET_MB
        print(f"peak at {sizes[-1]} chunks - peak at {sizes[0]}: {growth:+,.0f} MB (target <= {TARGET_MB} MB: {'holds' if growth <= TARGET_MB else 'FAILS'})")
        for name in large["phase_peak_rss_bytes"]:
            a = small["phase_peak_rss_bytes"].get(name, 0) / MB
            b = large["phase_peak_rss_bytes"][name] / MB
            aa = small["phase_peak_arrow_bytes"].get(name, 0) / MB
            ab = large["phase_peak_arrow_bytes"].get(name, 0) / MB
            print(f"  {name:<22} {a:8,.0f} -> {b:8,.0f} MB ({b - a:+,.0f}); of it Arrow-allocated at peak {aa:6,.0f} -> {ab:6,.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
