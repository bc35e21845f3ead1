"""Scale: the whole chain as a user runs it, at two sizes 10x apart; does any step grow with the data?

    .venv/bin/python benchmarks/scale.py                                  # 50k and 500k records, long docs 150 and 1500
    .venv/bin/python benchmarks/scale.py --records 5000,50000 --long-docs 0   # quicker

Corpora (synthetic, random English words from the bundled tokenizer's vocabulary):
- records: one-chunk JSONL records of 8 to 24 words (about 20 tokens each), all distinct;
- long documents: JSONL records of about 5,000 words in sentences and paragraphs (about 30
  chunks of up to 256 tokens each: EMBEDDING_CHUNK_TOKENS=256, as all-MiniLM-L6-v2).

Each stage (raw_documents, chunks, length_buckets, embeddings, document_embeddings) runs as its own
`dagster asset materialize -m embedding_assets.definitions --select <asset> --partition <batch>`
subprocess, with a fresh instance and lake per corpus. Measured per step: wall time, tokens/s (the
partition's chunk tokens over the step's wall time) and peak RSS of the step's process tree
(psutil, sampled every 50 ms: the dagster process plus its pool workers; the main process alone
is also reported). chunks and length_buckets of the larger size of each corpus also run with
EMBEDDING_CPU_WORKERS=1 (and TOKENIZERS_PARALLELISM=false: one core) for the 1 -> 2 workers ratio;
with `--repeat N`, N times each (1 and 2 workers alternately), the ratio taken between the best of
each. Each step also reports the CPU seconds the rest of the machine used while it ran (/proc/stat
minus the step's own), so a figure taken on a shared machine says how shared it was.

The baseline is the bare tokenizer (the `tokenizers` library batch-encoding the same chunk texts
once, truncated like the stages, on all cores), measured in the same run. CPU prep = chunks +
length_buckets whole step processes.

Model: a random-weight BERT (1 layer, hidden 32) with the bundled tokenizer, saved with
sentence-transformers next to it in a temporary folder; EMBEDDING_BACKEND=torch. The model costs
little, so the steps' own work shows.

Targets (issue 12): peak RSS of every step at the larger size within 300 MB of the smaller size;
CPU prep >= 40% of the bare tokenizer's tokens/s; 1 -> 2 workers >= 1.7x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = ["raw_documents", "chunks", "length_buckets", "embeddings", "document_embeddings"]
PREP = ("chunks", "length_buckets")
TARGET_MB = 300
MB = 1 << 20


def tiny_model(folder: Path) -> str:
    """A 1-layer, hidden-32 random-weight BERT with the bundled tokenizer (memory.py builds it)."""
    from benchmarks.memory import tiny_model as build

    return build(folder, hidden=32, layers=1, heads=2, intermediate=32)


def vocabulary():
    import numpy as np

    from embedding_assets.lib.encoders import load_tokenizer

    vocab = load_tokenizer("bundled").tokenizer.get_vocab()
    return np.array(sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2))


def write_records(folder: Path, n: int, seed: int = 0) -> None:
    import numpy as np

    words = vocabulary()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = rng.integers(8, 25, size=n)
    picks = rng.integers(0, len(words), size=int(lengths.sum()))
    at = 0
    with open(folder / "records.jsonl", "w", encoding="utf-8") as handle:
        for i, length in enumerate(lengths):
            text = " ".join(words[picks[at:at + length]].tolist())
            at += length
            handle.write(json.dumps({"id": f"r{i}", "text": f"{i} {text}."}) + "\n")


def write_long_documents(folder: Path, n: int, words_per_doc: int = 5000, seed: int = 1, file_docs: int = 500) -> None:
    import numpy as np

    words = vocabulary()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    handle = None
    for i in range(n):
        if i % file_docs == 0:
            if handle:
                handle.close()
            handle = open(folder / f"docs-{i // file_docs:04d}.jsonl", "w", encoding="utf-8")
        picks = words[rng.integers(0, len(words), size=words_per_doc)].tolist()
        sentences, at = [], 0
        while at < len(picks):
            size = int(rng.integers(6, 25))
            sentences.append(" ".join(picks[at:at + size]).capitalize() + ".")
            at += size
        paragraphs = [" ".join(sentences[j:j + 6]) for j in range(0, len(sentences), 6)]
        handle.write(json.dumps({"id": f"doc{i}", "text": f"Document {i}.\n\n" + "\n\n".join(paragraphs)}) + "\n")
    if handle:
        handle.close()


def run_step(asset: str, batch: str, env: dict, log: Path) -> dict:
    """One `dagster asset materialize` subprocess; wall time and peak RSS of its process tree."""
    import psutil

    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "embedding_assets.definitions",
               "--select", asset, "--partition", batch]
    busy_before, children_before, sampler_before = _busy_cpu_s(), _children_cpu_s(), time.process_time()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
        peak_tree = peak_main = 0
        stop = threading.Event()

        def sample():
            nonlocal peak_tree, peak_main
            parent = psutil.Process(proc.pid)
            while not stop.wait(0.05):
                try:
                    main = parent.memory_info().rss
                    tree = main
                    for child in parent.children(recursive=True):
                        try:
                            tree += child.memory_info().rss
                        except psutil.Error:
                            pass
                except psutil.Error:
                    return
                peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    own = _children_cpu_s() - children_before
    # CPU time the rest of the machine used meanwhile (other jobs on a shared machine; not this
    # process's sampler): what the step could not use. Speed figures with much of it are noisy.
    other = max(0.0, _busy_cpu_s() - busy_before - own - (time.process_time() - sampler_before))
    text = log.read_text(errors="replace")
    ok = code == 0 and "RUN_SUCCESS" in text
    if not ok:
        print(f"  {asset} failed (exit {code}); log: {log}\n" + "\n".join(text.splitlines()[-25:]), file=sys.stderr)
    return {"wall_s": wall, "peak_tree_mb": peak_tree / MB, "peak_main_mb": peak_main / MB, "ok": ok, "cpu_s": own, "other_cpu_s": other}


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children (their pool workers included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; Linux /proc/stat)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def bare_tokenizer(lake_root: str, batch: str, model: str) -> dict:
    """The tokenizers library batch-encoding the partition's chunk texts once, on all cores."""
    from embedding_assets.lib import lake
    from embedding_assets.lib.encoders import load_tokenizer
    from embedding_assets.lib.lake import tables

    texts = lake.read_partition(lake_root, tables.CHUNKS, batch, columns=["text"]).column("text").to_pylist()
    tokenizer = load_tokenizer(model)._truncating()  # the stages' tokenizer, truncating like them
    # All cores: the tokenizers library reads this at each call (building the model in this process
    # left it "false").
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    busy_before = _busy_cpu_s()
    own_before = time.process_time()
    started = time.perf_counter()
    tokens = 0
    try:
        for start in range(0, len(texts), 20_000):
            tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[start:start + 20_000], add_special_tokens=True))
    finally:
        _restore("TOKENIZERS_PARALLELISM", saved)
    elapsed = time.perf_counter() - started
    own = time.process_time() - own_before
    other = max(0.0, _busy_cpu_s() - busy_before - own)
    return {"tokens": tokens, "wall_s": elapsed, "tokens_per_s": tokens / elapsed, "cpu_s": own, "other_cpu_s": other}


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def run_corpus(name: str, size: int, write, workdir: Path, model: str, extra_workers: bool, repeat: int = 1) -> dict:
    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables

    base = workdir / f"{name}-{size}"
    shutil.rmtree(base, ignore_errors=True)
    landing, lake_root, home = base / "landing", base / "lake", base / "dagster_home"
    batch = f"{name}-{size}"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    write(landing / batch, size)
    env = {
        **os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_LANDING": str(landing), "EMBEDDING_LAKE": str(lake_root),
        "EMBEDDING_MODEL": model, "EMBEDDING_BACKEND": "torch", "EMBEDDING_CHUNK_TOKENS": "256", "EMBEDDING_DEVICE": "cpu", "EMBEDDING_PRECISION": "fp32",
        "EMBEDDING_MAX_FILE_BYTES": str(1 << 30), "EMBEDDING_CACHE": str(base / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    code = (
        "import dagster as dg; from embedding_assets.defs.partitions import batches; "
        f"dg.DagsterInstance.get().add_dynamic_partitions(batches.name, [{batch!r}])"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    steps = {}
    for asset in STEPS:
        steps[asset] = run_step(asset, batch, env, base / f"{asset}.log")
        print(f"  {batch} {asset}: {steps[asset]['wall_s']:.1f} s, peak {steps[asset]['peak_tree_mb']:.0f} MB", flush=True)
        if not steps[asset]["ok"]:
            break
    chunks = lake.read_partition(str(lake_root), tables.CHUNKS, batch, columns=["n_tokens"])
    tokens = int(sum(chunks.column("n_tokens").to_pylist())) if chunks is not None else 0
    result = {"corpus": name, "size": size, "chunks": chunks.num_rows if chunks is not None else 0, "tokens": tokens, "steps": steps}
    result["bare_tokenizer"] = bare_tokenizer(str(lake_root), batch, model)
    if extra_workers:
        # One worker runs inline; the tokenizer's own threads off too, so it is one core's worth.
        # The CPU prep at 1 and 2 workers, alternately, `repeat` times (the first 2-worker run is the
        # one above); each figure is the best of its runs (the least disturbed by other jobs).
        one = {**env, "EMBEDDING_CPU_WORKERS": "1", "TOKENIZERS_PARALLELISM": "false"}
        two = {**env, "EMBEDDING_CPU_WORKERS": "2"}
        runs = {1: [], 2: [{a: steps[a] for a in PREP}]}
        for attempt in range(repeat):
            runs[1].append({a: run_step(a, batch, one, base / f"{a}-1worker-{attempt}.log") for a in PREP})
            if attempt + 1 < repeat:
                runs[2].append({a: run_step(a, batch, two, base / f"{a}-2workers-{attempt}.log") for a in PREP})
        for workers, found in runs.items():
            best = min(found, key=lambda r: sum(r[a]["wall_s"] for a in PREP))
            result[f"workers_{workers}"] = {"best": best, "prep_walls_s": [round(sum(r[a]["wall_s"] for a in PREP), 2) for r in found],
                                            "other_cpu_s": [round(sum(r[a]["other_cpu_s"] for a in PREP), 1) for r in found]}
        result["one_worker"] = result["workers_1"]["best"]
        print(f"  {batch} CPU prep walls: 1 worker {result['workers_1']['prep_walls_s']} s, 2 workers {result['workers_2']['prep_walls_s']} s", flush=True)
    for key in STEPS:
        if key in steps:
            steps[key]["tokens_per_s"] = tokens / steps[key]["wall_s"]
    shutil.rmtree(landing, ignore_errors=True)
    return result


def report(results: list[dict]) -> list[str]:
    lines = [f"{'corpus':<8} {'size':>8} {'chunks':>9} {'tokens':>11}  " + "  ".join(f"{s[:14]:>26}" for s in STEPS)]
    lines.append(" " * 40 + "  ".join(f"{'wall s / ktok/s / RSS MB':>26}" for _ in STEPS))
    for r in results:
        cells = []
        for s in STEPS:
            st = r["steps"].get(s)
            cells.append(f"{st['wall_s']:>8.1f} {st.get('tokens_per_s', 0) / 1e3:>8.0f} {st['peak_tree_mb']:>8.0f}" if st else f"{'-':>26}")
        lines.append(f"{r['corpus']:<8} {r['size']:>8} {r['chunks']:>9} {r['tokens']:>11}  " + "  ".join(f"{c:>26}" for c in cells))
    lines.append("")
    lines.append("peak RSS of the main step process alone (MB): " + "; ".join(
        f"{r['corpus']}-{r['size']}: " + ", ".join(f"{s} {r['steps'][s]['peak_main_mb']:.0f}" for s in STEPS if s in r["steps"]) for r in results))
    lines.append("other jobs' CPU seconds during each step (a shared machine): " + "; ".join(
        f"{r['corpus']}-{r['size']}: " + ", ".join(f"{s} {r['steps'][s].get('other_cpu_s', 0):.1f}" for s in STEPS if s in r["steps"])
        + f", bare tokenizer {r['bare_tokenizer'].get('other_cpu_s', 0):.1f}" for r in results))
    lines.append("")
    by_corpus: dict[str, list[dict]] = {}
    for r in results:
        by_corpus.setdefault(r["corpus"], []).append(r)
    for corpus, runs in by_corpus.items():
        runs.sort(key=lambda r: r["size"])
        small, large = runs[0], runs[-1]
        if small is not large:
            for s in STEPS:
                if s in small["steps"] and s in large["steps"]:
                    growth = large["steps"][s]["peak_tree_mb"] - small["steps"][s]["peak_tree_mb"]
                    verdict = "ok" if growth <= TARGET_MB else "MISSED"
                    lines.append(f"{corpus}: {s} peak RSS {small['size']} -> {large['size']}: {small['steps'][s]['peak_tree_mb']:.0f} -> {large['steps'][s]['peak_tree_mb']:.0f} MB (+{growth:.0f}; target <= +{TARGET_MB}) {verdict}")
        for r in runs:
            prep_s = r["steps"]["chunks"]["wall_s"] + r["steps"]["length_buckets"]["wall_s"]
            prep = r["tokens"] / prep_s
            bare = r["bare_tokenizer"]["tokens_per_s"]
            cores = r["bare_tokenizer"].get("cpu_s", 0) / r["bare_tokenizer"]["wall_s"]
            lines.append(f"{corpus}-{r['size']}: CPU prep {prep / 1e3:.0f}k tokens/s vs bare tokenizer {bare / 1e3:.0f}k tokens/s ({cores:.1f} cores busy) = {prep / bare:.0%} (target >= 40%) {'ok' if prep >= 0.4 * bare else 'MISSED'}")
            if "one_worker" in r:
                one, two = r["workers_1"]["best"], r["workers_2"]["best"]
                one_s, two_s = (sum(w[a]["wall_s"] for a in PREP) for w in (one, two))
                lines.append(
                    f"{corpus}-{r['size']}: 1 -> 2 workers (best of {len(r['workers_1']['prep_walls_s'])} and {len(r['workers_2']['prep_walls_s'])}): "
                    f"chunks {one['chunks']['wall_s']:.1f} -> {two['chunks']['wall_s']:.1f} s, "
                    f"length_buckets {one['length_buckets']['wall_s']:.1f} -> {two['length_buckets']['wall_s']:.1f} s, "
                    f"CPU prep {one_s / two_s:.2f}x (target >= 1.7x) {'ok' if one_s / two_s >= 1.7 else 'MISSED'}; "
                    f"other jobs' CPU during the runs (s): 1 worker {r['workers_1']['other_cpu_s']}, 2 workers {r['workers_2']['other_cpu_s']}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="50000,500000", help="one-chunk record counts, comma separated ('' for none)")
    parser.add_argument("--long-docs", default="150,1500", help="long-document counts, comma separated ('0' for none)")
    parser.add_argument("--workdir", default=None, help="where lakes go (default: a temporary folder, removed at the end)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--repeat", type=int, default=1, help="CPU prep runs at 1 and at 2 workers for the 1 -> 2 workers ratio (best of each)")
    args = parser.parse_args(argv)

    from embedding_assets.lib.cpus import available_cpus

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="scale-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    model = tiny_model(workdir / "tiny-model")
    _restore("TOKENIZERS_PARALLELISM", saved)  # building it sets "false", which the steps would inherit
    print(f"model {model}; {available_cpus()} CPUs; workdir {workdir}", flush=True)
    plan = [("records", int(s), write_records) for s in args.records.split(",") if s.strip() and int(s)]
    plan += [("longdocs", int(s), write_long_documents) for s in args.long_docs.split(",") if s.strip() and int(s)]
    largest = {}
    for corpus, size, _ in plan:
        largest[corpus] = max(largest.get(corpus, 0), size)
    results = []
    try:
        for corpus, size, write in plan:
            print(f"{corpus} x {size}", flush=True)
            results.append(run_corpus(corpus, size, write, workdir, model, extra_workers=size == largest[corpus], repeat=max(1, args.repeat)))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report(results)))
    return 0 if all(s["ok"] for r in results for s in r["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
