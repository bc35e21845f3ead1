"""Ceiling: how fast can the embeddings step feed an encoder? The real step on real Delta tables.

    .venv/bin/python benchmarks/ceiling.py                         # 30 M tokens, short chunks
    .venv/bin/python benchmarks/ceiling.py --tokens 3000000 --json out.json

Partition: one-chunk documents of 16..112 tokens (uniform, all texts distinct), ~30 M tokens,
written straight into length_buckets with the lake's streaming writer (`feedkit.write_length_buckets`:
random token ids, sorted by length like the real stage) instead of running ingest, chunks and
length_buckets: the stage under test is the embeddings step, and this saves minutes.

Encoders (benchmark-only, `feedkit`): `zero-cost` returns rows of a preallocated 384-d matrix (the
feed path's own cost), `rate-limited` occupies a simulated device for real_tokens / 5 M s per batch
(a GPU at 5 M tokens/s, with the CUDA backend's asynchronous launch: the engine queues the next
batch before it waits for the current one); `rate-limited-sync` (not run by default) is the same
device without a queue (each batch queued and awaited in one call). For each, in a fresh process:

- engine loop: `engine.encode_batches` over the step's pending batches alone (`_pending_batches`
  streamed from length_buckets: read, pick, sort, cut, collate on the reader thread), no sink;
- whole step: `stages.embed_batch` from an empty embeddings partition (plan, embed into staging
  with checkpoints, swap the partition in, tidy up).

Targets (issue 12): whole step >= 10 M tokens/s and engine loop >= 20 M tokens/s with the
zero-cost encoder; >= 4.75 M tokens/s delivered against the 5 M tokens/s encoder.
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

BATCH = "ceiling"
TARGETS = {"zero-cost": {"whole_step": 10e6, "engine_loop": 20e6}, "rate-limited": {"delivered": 4.75e6}}


def quiet(_msg: str) -> None:
    pass


def _engine(kind: str, rate: float):
    from benchmarks.feedkit import RateLimitedBackend, ZeroCostBackend, benchmark_engine

    if kind == "zero-cost":
        return benchmark_engine(ZeroCostBackend())
    return benchmark_engine(RateLimitedBackend(rate, pipelined=kind != "rate-limited-sync"))


def _reset(lake_root: str) -> None:
    """No embeddings yet: the embeddings and checkpoint tables are removed whole (a partition delete
    would leave every earlier measurement's data files on disk: gigabytes a run at 30 M tokens)."""
    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables

    for table in (tables.EMBEDDINGS, tables.STAGING):
        shutil.rmtree(lake.table_uri(lake_root, table), ignore_errors=True)


def child(lake_root: str, kind: str, what: str, rate: float, budget: int) -> dict:
    """One measurement in this (fresh) process."""
    import resource

    from embedding_assets.lib import stages
    from embedding_assets.lib.encoders import EngineStats
    from embedding_assets.lib.stages import embed

    engine = _engine(kind, rate)
    _reset(lake_root)
    started = time.perf_counter()
    if what == "engine_loop":
        plan, meta = embed.plan_embeddings(lake_root, BATCH, engine.fingerprint, engine.tokenizer.fingerprint)
        planned = time.perf_counter()
        stats = EngineStats()
        loop_started = time.perf_counter()
        for _ in engine.encode_batches(embed._pending_batches(lake_root, BATCH, meta, plan.pending, budget), stats):
            pass
        seconds = time.perf_counter() - loop_started
        out = {"tokens": stats.real_tokens, "rows": stats.rows, "batches": stats.batches, "seconds": seconds,
               "plan_seconds": planned - started, "padded_fraction": stats.padded_fraction}
    else:
        result = stages.embed_batch(lake_root, BATCH, engine, token_budget=budget, log=quiet)
        seconds = time.perf_counter() - started
        out = {"tokens": result["tokens"], "rows": result["embedded_texts"], "batches": result.get("batches"), "seconds": seconds,
               "commits": result["commits"], "padded_fraction": result.get("padded_fraction"), "engine_tokens_per_s": result.get("tokens_per_s")}
    out["tokens_per_s"] = out["tokens"] / out["seconds"] if out["seconds"] else 0.0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=30_000_000, help="tokens in the partition (approximately)")
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=112)
    parser.add_argument("--rate", type=float, default=5e6, help="the simulated encoder's tokens/s")
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--encoders", default="zero-cost,rate-limited")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=3, metavar=("LAKE", "ENCODER", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.child[2], args.rate, args.token_budget)))
        return 0

    from benchmarks.feedkit import write_length_buckets
    from embedding_assets.lib.encoders.tuning import cpu_model_name

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ceiling-"))
    lake_root = str(workdir / "lake")
    chunks = int(args.tokens / ((args.min_tokens + args.max_tokens) / 2))
    setup = write_length_buckets(lake_root, BATCH, chunks, args.min_tokens, args.max_tokens)
    print(f"machine: {cpu_model_name()}; partition: {setup['chunks']:,} chunks, {setup['tokens']:,} tokens "
          f"({args.min_tokens}-{args.max_tokens} tokens each), length_buckets written directly in {setup['setup_s']:.0f} s", flush=True)
    report = {"date": dt.date.today().isoformat(), "machine": cpu_model_name(), "command": "python benchmarks/ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "partition": setup, "rate": args.rate, "token_budget": args.token_budget, "results": {}}
    env = {**os.environ, "_RJEM_MALLOC_CONF": os.environ.get("_RJEM_MALLOC_CONF", "dirty_decay_ms:250,muzzy_decay_ms:0")}
    for kind in args.encoders.split(","):
        for what in ("engine_loop", "whole_step"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", lake_root, kind, what, "--rate", str(args.rate), "--token-budget", str(args.token_budget)],
                capture_output=True, text=True, env=env,
            )
            if done.returncode != 0:
                raise SystemExit(f"child failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            report["results"][f"{kind}/{what}"] = r
            print(f"{kind:>12} {what:<11}: {r['tokens']:,} tokens in {r['seconds']:.1f} s = {r['tokens_per_s'] / 1e6:6.2f} M tokens/s "
                  f"(peak RSS {r['peak_rss_mb']:,.0f} MB)", flush=True)
    verdicts = []
    for kind, targets in TARGETS.items():
        for name, target in targets.items():
            key = f"{kind}/{'engine_loop' if name == 'delivered' else name}"
            if key not in report["results"]:
                continue
            value = report["results"][key]["tokens_per_s"]
            verdicts.append({"encoder": kind, "measure": name, "tokens_per_s": value, "target": target, "holds": value >= target})
            print(f"target {kind} {name} >= {target / 1e6:g} M tokens/s: {value / 1e6:.2f} M -> {'holds' if value >= target else 'MISSES'}")
    if "rate-limited/whole_step" in report["results"]:
        value = report["results"]["rate-limited/whole_step"]["tokens_per_s"]
        print(f"rate-limited whole step delivered {value / 1e6:.2f} M tokens/s of the encoder's {args.rate / 1e6:g} M")
    report["targets"] = verdicts
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
