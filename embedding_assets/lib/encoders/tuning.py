"""The tuned batch config: which token budget runs fastest for this model on this device.

`tune` measures throughput (real tokens per second) through the engine at each candidate token
budget on a fixed sample, picks the smallest budget whose throughput is within `tolerance` (3%)
of the best (the smallest budget is the one with the least memory), and stores it in
`<cache_dir>/tuning.json` keyed by (model fingerprint, device name, precision). The model
resource calls `load_tuned_budget` and falls back to `batching.DEFAULT_TOKEN_BUDGET`, saying so,
when nothing was tuned for this combination.

Each budget is measured on the same length-sorted sample, with its batches run in a fixed
shuffled order so that a time-limited measurement still covers short and long rows alike.
Memory: on CUDA the peak allocated bytes (`torch.cuda.max_memory_allocated`) over the engine's
devices; on CPU the growth of the process's resident set over its level before the budget ran
(sampled every 20 ms). A budget whose batches had to be split after out-of-memory is marked
`oom` and never picked.

No Dagster imports; torch only on CUDA engines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET, iter_batches
from embedding_assets.lib.cpus import available_cpus
from embedding_assets.lib.encoders.engine import EngineStats

DEFAULT_BUDGETS = (1024, 2048, 4096, 8192, 16384, 32768)
QUICK_BUDGETS = {"cpu": (1024, 2048, 4096, 8192), "cuda": (4096, 8192, 16384, 32768)}
TOLERANCE = 0.03
TUNING_FILE = "tuning.json"
TUNING_TABLE = "_tuning"  # in the lake, beside the data tables; not partitioned (a few rows per model and device)
DEFAULT_SOURCE = "default (no tuned config for this model on this device; run embedding-assets tune)"

Log = Callable[[str], None]
# measure(engine, token_ids sorted by length, budget, seconds) -> {"tokens_per_s": float, "peak_memory_bytes": int|None, ...}
Measure = Callable[[object, list, int, float], dict]


# ---------------------------------------------------------------- device names

def cpu_model_name() -> str:
    """The CPU's model string (from /proc/cpuinfo on Linux) and how many cores this process may use."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({available_cpus()} cores)"


def device_name(engine) -> str:
    """A readable, stable name of the hardware the engine runs on: the key tuned configs are stored under."""
    devices = [b.device for b in engine.backends]
    if devices[0].startswith("cuda"):
        import torch

        names = [torch.cuda.get_device_name(torch.device(d)) for d in devices]
        if len(names) == 1:
            return names[0]
        return f"{len(names)}x {names[0]}" if len(set(names)) == 1 else " + ".join(names)
    return cpu_model_name()


def config_key(fingerprint: str, device: str, precision: str) -> str:
    return f"{fingerprint} | {device} | {precision}"


# ---------------------------------------------------------------- the sample

def default_sample(engine, quick: bool = False) -> list[np.ndarray]:
    """Token ids of a fixed, mixed-length sample of real text: the standard library's docs."""
    import importlib
    import pydoc
    import warnings

    from embedding_assets.lib.chunking import Chunker

    modules = ("json", "re", "collections", "functools", "pathlib", "argparse", "logging", "datetime", "subprocess", "textwrap")
    chunker = Chunker(engine.tokenizer.tokenizer, max_tokens=engine.max_seq_length, overlap=0)
    texts: list[str] = []
    for name in modules[:4] if quick else modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
        page = pydoc.render_doc(module, renderer=pydoc.plaintext)[:20_000]
        texts.extend(c.text for c in chunker.split(page))
        for attr in sorted(vars(module)):  # docstrings: the short end of the length mix
            doc = getattr(getattr(module, attr), "__doc__", None)
            if not attr.startswith("_") and isinstance(doc, str) and doc.strip():
                texts.append(doc.strip()[:2000])
    rng = np.random.default_rng(0)
    limit = 192 if quick else 1024
    if len(texts) > limit:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), size=limit, replace=False))]
    return as_token_ids(engine, texts)


def as_token_ids(engine, texts_or_token_ids: Sequence) -> list[np.ndarray]:
    items = list(texts_or_token_ids)
    if items and isinstance(items[0], str):
        items = engine.tokenizer.encode_batch(items)
    arrays = [np.asarray(t, dtype=np.int64) for t in items if len(t)]
    arrays.sort(key=len)
    return arrays


# ---------------------------------------------------------------- measuring

class _RssSampler:
    """Peak resident set size of this process while a block runs (CPU memory growth)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def measure_budget(engine, token_ids: list, budget: int, seconds: float, rss_baseline: int | None = None) -> dict:
    """Throughput of the engine at one token budget: batches in a fixed shuffled order until
    `seconds` have passed (at least two batches). On CUDA one batch at the budget warms up first."""
    batches = list(iter_batches(token_ids, budget))
    order = np.random.default_rng(budget).permutation(len(batches))
    cuda = [b.device for b in engine.backends if b.device.startswith("cuda")]
    if cuda:
        import torch

        for _ in engine.encode_batches([batches[order[0]]]):  # kernels and allocator at this shape
            pass
        for d in cuda:
            torch.cuda.synchronize(d)
            torch.cuda.reset_peak_memory_stats(d)
    stats = EngineStats()
    deadline = time.perf_counter() + seconds

    def timed():
        for n, i in enumerate(order):
            if n >= 2 and time.perf_counter() > deadline:
                return
            yield batches[i]

    sampler = None if cuda else _RssSampler()
    started = time.perf_counter()
    if sampler:
        sampler.__enter__()
    try:
        for _ in engine.encode_batches(timed(), stats):
            pass
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    elapsed = time.perf_counter() - started
    if cuda:
        peak = max(torch.cuda.max_memory_allocated(d) for d in cuda)
        memory_kind = "cuda max_memory_allocated (largest device)"
    else:
        peak = sampler.peak - (sampler.baseline if rss_baseline is None else rss_baseline)
        memory_kind = "cpu rss growth over the start of tuning"
    return {
        "tokens_per_s": stats.real_tokens / elapsed if elapsed else 0.0,
        "tokens": stats.real_tokens,
        "batches": stats.batches,
        "seconds": elapsed,
        "padded_fraction": stats.padded_fraction,
        "peak_memory_bytes": int(peak),
        "memory": memory_kind,
        "oom": stats.oom_splits > 0,
    }


def _warm_up(engine, token_ids: list) -> None:
    """One small batch through every backend: lazy initialization stays out of the first measurement."""
    small = token_ids[: min(len(token_ids), 8 * max(1, len(engine.backends)))]
    for _ in engine.encode_batches(iter_batches(small, 1024)):
        pass


def pick_budget(results: list[dict], tolerance: float = TOLERANCE) -> int:
    """The smallest budget whose throughput is within `tolerance` of the best (OOM budgets excluded)."""
    usable = [r for r in results if not r.get("oom") and r.get("tokens_per_s", 0) > 0]
    if not usable:
        raise RuntimeError("no token budget could be measured (every one failed or ran out of memory)")
    best = max(r["tokens_per_s"] for r in usable)
    return min(r["budget"] for r in usable if r["tokens_per_s"] >= (1.0 - tolerance) * best)


# ---------------------------------------------------------------- tune / load

def tune(
    engine,
    texts_or_token_ids: Sequence | None = None,
    budgets: Sequence[int] | None = None,
    seconds_per_budget: float | None = None,
    log: Log = print,
    *,
    quick: bool = False,
    rounds: int | None = None,
    cache_dir: str | None = None,
    tolerance: float = TOLERANCE,
    measure: Measure | None = None,
    save: bool = True,
    lake_root: str | None = None,
) -> dict:
    """Measures each token budget, picks one, stores it under (fingerprint, device, precision).

    Every budget is measured `rounds` times, interleaved (budget 1, 2, ..., then again), and its
    best round counts: a busy machine slows some rounds down, never speeds one up.
    `quick` uses a small sample, four budgets, 2 s each and one round (under a minute on a 2-core CPU).
    `measure` is injectable (tests); by default `measure_budget`. With `lake_root` the result is
    also stored in the lake's `_tuning` table, where every pod's model resource finds it.
    """
    on_cuda = engine.backends[0].device.startswith("cuda")
    budgets = tuple(budgets or (QUICK_BUDGETS["cuda" if on_cuda else "cpu"] if quick else DEFAULT_BUDGETS))
    seconds = seconds_per_budget if seconds_per_budget is not None else (2.0 if quick else 6.0)
    rounds = rounds or (1 if quick else 2)
    token_ids = default_sample(engine, quick) if texts_or_token_ids is None else as_token_ids(engine, texts_or_token_ids)
    if not token_ids:
        raise ValueError("tune needs a non-empty sample")
    if measure is None:
        _warm_up(engine, token_ids)
        import psutil

        baseline = psutil.Process().memory_info().rss

        def measure(engine, token_ids, budget, seconds):
            return measure_budget(engine, token_ids, budget, seconds, rss_baseline=baseline)
    device = device_name(engine)
    precision = engine.precision
    sample_tokens = int(sum(len(t) for t in token_ids))
    log(f"tuning {engine.fingerprint} on {device} ({precision}): {len(token_ids)} texts, {sample_tokens} tokens, budgets {list(budgets)}, {seconds:g} s each")
    best_by_budget: dict[int, dict] = {}
    for round_ in range(rounds):
        for budget in sorted(budgets):
            previous = best_by_budget.get(budget)
            if previous is not None and previous.get("oom"):
                continue
            try:
                r = dict(measure(engine, token_ids, budget, seconds))
            except Exception as exc:  # a budget that cannot run is recorded, not fatal
                r = {"tokens_per_s": 0.0, "error": f"{type(exc).__name__}: {exc}", "oom": True}
            r["budget"] = budget
            memory = r.get("peak_memory_bytes")
            mem = f", peak memory +{memory / 2**20:,.0f} MiB" if memory is not None else ""
            tag = f"round {round_ + 1}/{rounds} " if rounds > 1 else ""
            log(f"  {tag}budget {budget:>6}: {r['tokens_per_s']:>10,.0f} tokens/s{mem}{' (out of memory or failed)' if r.get('oom') else ''}")
            kept = r if previous is None or r.get("oom") or r["tokens_per_s"] > previous["tokens_per_s"] else previous
            peaks = [x.get("peak_memory_bytes") for x in (r, previous) if x is not None and x.get("peak_memory_bytes") is not None]
            if peaks:
                kept["peak_memory_bytes"] = max(peaks)  # memory: the worst round
            best_by_budget[budget] = kept
    results = [best_by_budget[b] for b in sorted(best_by_budget)]
    chosen = pick_budget(results, tolerance)
    best = max(r["tokens_per_s"] for r in results)
    chosen_tps = next(r["tokens_per_s"] for r in results if r["budget"] == chosen)
    now = dt.datetime.now(dt.timezone.utc)
    entry = {
        "budget": chosen,
        "tokens_per_s": chosen_tps,
        "best_tokens_per_s": best,
        "tolerance": tolerance,
        "fingerprint": engine.fingerprint,
        "device": device,
        "precision": precision,
        "backend": getattr(engine, "backend", None),
        "sample_texts": len(token_ids),
        "sample_tokens": sample_tokens,
        "seconds_per_budget": seconds,
        "rounds": rounds,
        "quick": quick,
        "tuned_at": now.isoformat(timespec="seconds"),
        "measurements": results,
    }
    key = config_key(engine.fingerprint, device, precision)
    path = table = None
    if save:
        path = store(cache_dir, key, entry)
        if lake_root:
            table = store_in_lake(lake_root, key, entry)
    where = "; ".join(str(w) for w in (table, path) if w)
    log(f"chosen token budget {chosen} ({chosen_tps:,.0f} tokens/s; best {best:,.0f}){f'; stored in {where}' if where else ''}")
    return {**entry, "chosen": chosen, "key": key, "path": str(path) if path else None, "lake_table": table}


def _tuning_path(cache_dir: str | None) -> Path:
    if cache_dir is None:
        from embedding_assets.lib.settings import env

        cache_dir = env("EMBEDDING_CACHE")
    return Path(os.path.expanduser(cache_dir)) / TUNING_FILE


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"version": 1, "configs": {}}
    if not isinstance(data, dict) or not isinstance(data.get("configs"), dict):
        return {"version": 1, "configs": {}}
    return data


def store(cache_dir: str | None, key: str, entry: dict) -> Path:
    """Adds or replaces one config in tuning.json (read-modify-write under a lock, atomic replace)."""
    path = _tuning_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(TUNING_FILE + ".lock"), "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: last writer wins
            pass
        data = _read(path)
        data["configs"][key] = entry
        tmp = path.with_name(f".{TUNING_FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    return path


def _tuning_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()),
        ("fingerprint", pa.string()),
        ("device", pa.string()),
        ("precision", pa.string()),
        ("budget", pa.int64()),
        ("tokens_per_s", pa.float64()),
        ("tuned_at", pa.timestamp("us", tz="UTC")),
        ("entry", pa.string()),  # the whole measurement (every budget's figures), as JSON
    ])


def store_in_lake(lake_root: str, key: str, entry: dict) -> str:
    """Appends one config row to the lake's `_tuning` table (created on first use); returns its URI.

    Appends never conflict, so pods tuning at once all land; readers take the latest row per key.
    """
    import pyarrow as pa
    from deltalake import write_deltalake

    from embedding_assets.lib import lake

    tuned_at = dt.datetime.now(dt.timezone.utc)  # the write's time, to the microsecond: the last write per key wins
    row = pa.table({
        "key": [key], "fingerprint": [entry.get("fingerprint")], "device": [entry.get("device")], "precision": [entry.get("precision")],
        "budget": [int(entry["budget"])], "tokens_per_s": [float(entry.get("tokens_per_s") or 0.0)], "tuned_at": [tuned_at],
        "entry": [json.dumps(entry, sort_keys=True, default=str)],
    }, schema=_tuning_schema())
    uri = lake.table_uri(lake_root, TUNING_TABLE)
    write_deltalake(uri, row, mode="append", storage_options=lake.storage_options(lake_root))
    return uri


def load_from_lake(lake_root: str, key: str) -> dict | None:
    """The latest config stored under `key` in the lake's `_tuning` table, or None."""
    import pyarrow.compute as pc

    from embedding_assets.lib import lake

    rows = lake.read_table(lake_root, TUNING_TABLE, columns=["key", "tuned_at", "entry"], filter=pc.field("key") == key)
    if rows is None or rows.num_rows == 0:
        return None
    latest = max(range(rows.num_rows), key=lambda i: (rows.column("tuned_at")[i].value, i))  # a tie: the later row
    try:
        entry = json.loads(rows.column("entry")[latest].as_py())
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _usable(entry: dict | None) -> bool:
    return bool(entry) and isinstance(entry.get("budget"), int) and entry["budget"] > 0


def _tuned_label(entry: dict) -> str:
    return f"tuned {str(entry.get('tuned_at', '?'))[:10]} on {entry.get('device', '?')}"


def load_tuned_budget(engine, cache_dir: str | None = None, *, lake_root: str | None = None, log: Log | None = None) -> tuple[int, str]:
    """(token budget, where it came from) for this engine's model, device and precision.

    Looks in the lake's `_tuning` table when `lake_root` is given (source "lake:_tuning (tuned
    <date> on <device>)"), then in this machine's `tuning.json` ("tuned <date> on <device>"), and
    falls back to the default. A lake that cannot be read is reported through `log` and skipped.
    """
    key = config_key(engine.fingerprint, device_name(engine), engine.precision)
    if lake_root:
        try:
            entry = load_from_lake(lake_root, key)
        except Exception as exc:  # the lake being unreachable must not stop the model from loading
            entry = None
            if log:
                log(f"could not read the tuned config from {lake_root}/{TUNING_TABLE} ({type(exc).__name__}: {exc}); trying the local cache")
        if _usable(entry):
            return entry["budget"], f"lake:{TUNING_TABLE} ({_tuned_label(entry)})"
    entry = _read(_tuning_path(cache_dir))["configs"].get(key)
    if not _usable(entry):
        return DEFAULT_TOKEN_BUDGET, DEFAULT_SOURCE
    return entry["budget"], _tuned_label(entry)
