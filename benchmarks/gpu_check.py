"""GPU check: precision agreement, tokens/s and model-FLOPs utilization of the engine vs. SentenceTransformer.

    python benchmarks/gpu_check.py                 # on the GPU machine (< 6 minutes on one H100/H200)
    python benchmarks/gpu_check.py --compile       # + torch.compile variants (adds compile time)
    python benchmarks/gpu_check.py --smoke         # tiny sizes, runs on CPU in ~30 s (the test uses it)

Needs torch, transformers and numpy (plus sentence-transformers for the baseline and the model
folders the engine loads); no Dagster, no network, no tokenizer download: the models are
random-weight BertModels of all-MiniLM-L6-v2 shape (6 layers, hidden 384, 12 heads, FFN 1536)
and BERT-base shape (12 / 768 / 12 / 3072), with a generated word-level vocabulary ("w17" is one
token), so text lengths in tokens are exact. Weights do not change speed; agreement between
precisions on random weights is a fair check of numerics (pooling and normalization in fp32).

Measured, per model shape:
  agreement   cosine of pooled vectors fp16 vs fp32 and bf16 vs fp32 (mean, min), mixed lengths
  engine      our engine (TorchBackend, SDPA attention, pre-tokenized, length-sorted token-budget
              batches) at fixed 128 and 512 tokens and on mixed lengths (16..512), fp16 and bf16;
              `--compile`: the same with torch.compile; seq 512 also with eager attention
  st_fp16     SentenceTransformer.encode (model.half(), batch_size 32, its default; it tokenizes)
              on the same texts
MFU = achieved model FLOP/s / dense fp16 peak of the device (H100 SXM and H200: 989 TFLOP/s).
Model FLOPs per real token of a row of length s (padding is not useful work, so not counted):
    2 * P_nonembedding  +  4 * L * s * h        (the second term: QK^T and attention x V, 2*s*h each per layer)
Prints a JSON summary and writes it to $OUT/gpu_check.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: works without an install
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The engine's core must not pull in the Dagster layer or the Delta/dataframe stack at import.
import embedding_assets.lib.batching as batching  # noqa: E402
import embedding_assets.lib.encoders as encoders  # noqa: E402
from embedding_assets.lib.encoders.torch_backend import TorchBackend  # noqa: E402

IMPORT_CHECK = {m: (m in sys.modules) for m in ("dagster", "polars", "deltalake")}

import numpy as np  # noqa: E402

SHAPES = {
    "minilm-l6": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
SMOKE_SHAPES = {
    "minilm-l6": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128),
    "bert-base": dict(num_hidden_layers=2, hidden_size=96, num_attention_heads=2, intermediate_size=192),
}
VOCAB = 30522
# Dense fp16/bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name.
PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12))
TARGETS = {"bert-base_fixed512_tokens_per_s": 2.0e6, "minilm-l6_tokens_per_s": 5.0e6, "engine_vs_st_fp16_mixed": 3.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAKS:
        if key in device_name:
            return value
    return None


# ---------------------------------------------------------------- models

def build_model_folder(folder: Path, shape: dict, seed: int = 0) -> tuple[str, int]:
    """A random-weight BERT saved as a sentence-transformers folder (Transformer, mean Pooling, Normalize).

    Returns (folder, non-embedding parameter count)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    raw = folder / "hf"
    raw.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(raw / "vocab.txt"), do_lower_case=True).save_pretrained(raw)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, **shape)
    model = BertModel(config)  # with its (unused) pooler, so loading reports nothing missing
    model.save_pretrained(raw)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    st = SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=512), Pooling(shape["hidden_size"], "mean"), Normalize()], device="cpu")
    out = folder / "st"
    st.save(str(out))
    return str(out), int(non_embedding)


def token_lengths(mode: str, n: int, rng) -> np.ndarray:
    """Row lengths (special tokens included): fixed, or a mixed distribution like chunked documents."""
    if mode.startswith("fixed"):
        return np.full(n, int(mode.removeprefix("fixed")), dtype=np.int64)
    # mixed: a third short (16-64), a third medium (64-256), a third long (256-512)
    parts = [rng.integers(16, 65, n // 3), rng.integers(64, 257, n // 3), rng.integers(256, 513, n - 2 * (n // 3))]
    lengths = np.concatenate(parts)
    rng.shuffle(lengths)
    return lengths


def make_rows(lengths: np.ndarray, rng) -> list[np.ndarray]:
    """Token id rows: [CLS] w... [SEP] with ids of generated words."""
    rows = []
    for length in lengths:
        ids = rng.integers(5, VOCAB, size=int(length))
        ids[0], ids[-1] = 2, 3
        rows.append(ids.astype(np.int64))
    return rows


def rows_to_texts(rows: list[np.ndarray]) -> list[str]:
    return [" ".join(f"w{int(i) - 5}" for i in r[1:-1]) for r in rows]


def model_flops(lengths: np.ndarray, params: int, layers: int, hidden: int) -> float:
    lengths = lengths.astype(np.float64)
    return float(np.sum(lengths * (2.0 * params + 4.0 * layers * lengths * hidden)))


# ---------------------------------------------------------------- measurements

def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_engine(folder: str, device: str, precision: str, compile_: bool = False, attn: str = "sdpa"):
    backends = [TorchBackend(folder, d, precision) for d in (encoders.cuda_devices(device) if device.startswith("cuda") else [device])]
    for b in backends:
        if attn != "sdpa":
            b._model.set_attn_implementation(attn)
        if compile_:
            import torch

            b._model = torch.compile(b._model, dynamic=True)
    return encoders.EncoderEngine(model=folder, backends=backends, tokenizer=None, fingerprint=f"gpu-check/{precision}")


def run_engine(engine, rows_sorted: list[np.ndarray], budget: int, min_seconds: float, device: str) -> dict:
    stats = encoders.EngineStats()
    batches = list(batching.iter_batches(rows_sorted, budget))
    for _ in engine.encode_batches(batches[:2] + batches[-2:]):  # warm-up: small and large shapes
        pass
    sync(device)
    started = time.perf_counter()
    passes = 0
    while True:
        for _ in engine.encode_batches(batches, stats):
            pass
        passes += 1
        sync(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            break
    return {"seconds": elapsed, "passes": passes, "real_tokens": stats.real_tokens, "padded_fraction": stats.padded_fraction, "tokens_per_s": stats.real_tokens / elapsed, "oom_splits": stats.oom_splits, "nonfinite_recomputed": stats.nonfinite_recomputed}


def run_st(st, texts: list[str], min_seconds: float, device: str, batch_size: int = 32) -> dict:
    st.encode(texts[:64], batch_size=batch_size)
    sync(device)
    started = time.perf_counter()
    passes = 0
    while True:
        st.encode(texts, batch_size=batch_size)
        passes += 1
        sync(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            break
    return {"seconds": elapsed, "passes": passes, "rows": len(texts) * passes, "batch_size": batch_size}


def agreement(folder: str, device: str, rows: list[np.ndarray], precisions: list[str]) -> dict:
    """Cosine of pooled vectors in each precision vs fp32 (the model run in that dtype, pooling in fp32)."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folder, device=device, model_kwargs={"attn_implementation": "sdpa"})
    base = st[0].auto_model.eval()
    order = np.argsort([len(r) for r in rows], kind="stable")
    batches = list(batching.iter_batches([rows[i] for i in order], 16384))

    def vectors(dtype):
        model = base.to(dtype)
        out = []
        with torch.inference_mode():
            for b in batches:
                ids = torch.from_numpy(b.input_ids).to(device)
                mask = torch.from_numpy(b.attention_mask).to(device)
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = encoders.pool(hidden, mask, "mean")
                out.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
        return np.concatenate(out)

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    reference = vectors(torch.float32)
    result = {}
    for p in precisions:
        if p == "fp32":
            continue
        v = vectors(dtypes[p])
        cos = np.sum(v * reference, axis=1)
        result[f"{p}_vs_fp32"] = {"mean_cosine": float(np.nanmean(cos)), "min_cosine": float(np.nanmin(cos)), "nonfinite_rows": int((~np.isfinite(v).all(axis=1)).sum())}
    base.to(torch.float32)
    del st
    return result


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes; runs on CPU")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (dynamic=True) variants")
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --smoke)")
    parser.add_argument("--seconds", type=float, default=None, help="least seconds per measurement (default 2.0; 0.05 with --smoke)")
    parser.add_argument("--budgets", default=None, help="token budgets to try for the engine, comma separated (default 32768,131072; 4096 with --smoke)")
    parser.add_argument("--shapes", default="minilm-l6,bert-base")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT)")
    args = parser.parse_args(argv)

    import torch

    started_all = time.perf_counter()
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    on_cuda = device.startswith("cuda")
    seconds = args.seconds if args.seconds is not None else (0.05 if args.smoke else 2.0)
    budgets = [int(b) for b in (args.budgets or ("4096" if args.smoke else "32768,131072")).split(",")]
    precisions = ["fp16", "bf16"] if on_cuda else ["fp32"]
    n_rows = {"fixed128": 64, "fixed512": 16, "mixed": 48} if args.smoke else {"fixed128": 32768, "fixed512": 8192, "mixed": 16384}
    st_rows = 32 if args.smoke else 4096
    device_name = torch.cuda.get_device_name(0) if on_cuda else platform.processor() or platform.machine()
    peak = peak_flops(device_name) if on_cuda else None
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    summary: dict = {
        "device": device,
        "device_name": device_name,
        "gpus": torch.cuda.device_count() if on_cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": args.smoke,
        "peak_flops_fp16_dense": peak,
        "flops_formula": "per real token of a row of length s: 2*P_nonembedding + 4*L*s*h",
        "import_check": {"dagster_polars_deltalake_imported_by_engine": IMPORT_CHECK, "ok": not any(IMPORT_CHECK.values())},
        "models": {},
        "targets": {},
    }
    rng = np.random.default_rng(0)
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for name in [s for s in args.shapes.split(",") if s]:
        shape = shapes[name]
        t0 = time.perf_counter()
        folder, params = build_model_folder(workdir / name, shape)
        layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
        entry: dict = {"shape": shape, "params_nonembedding": params, "engine": [], "st": []}
        log(f"{name}: {params / 1e6:.1f}M non-embedding parameters, built in {time.perf_counter() - t0:.1f} s")
        data = {}
        for mode, n in n_rows.items():
            lengths = token_lengths(mode, n, rng)
            rows = make_rows(lengths, rng)
            order = np.argsort(lengths, kind="stable")
            data[mode] = (lengths, rows, [rows[i] for i in order])
        entry["agreement"] = agreement(folder, device, data["mixed"][1][: (16 if args.smoke else 1024)], ["fp32", "fp16", "bf16"])
        log(f"  agreement: {json.dumps(entry['agreement'])}")
        variants = [(p, False, "sdpa") for p in precisions]
        if args.compile:
            variants += [(p, True, "sdpa") for p in precisions[:1]]
        for precision, compile_, attn in variants + [(precisions[0], False, "eager")]:
            eng = make_engine(folder, device, precision, compile_, attn)
            modes = ["fixed512"] if attn == "eager" else list(n_rows)
            for mode in modes:
                lengths, _, rows_sorted = data[mode]
                best = None
                for budget in budgets:
                    r = run_engine(eng, rows_sorted, budget, seconds, device)
                    r.update(mode=mode, precision=precision, compile=compile_, attention=attn, budget=budget)
                    if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
                        best = r
                flops = model_flops(lengths, params, layers, hidden) * best["passes"]
                best["model_tflops_per_s"] = flops / best["seconds"] / 1e12
                best["mfu"] = (flops / best["seconds"] / peak) if peak else None
                entry["engine"].append(best)
                mfu = f", MFU {best['mfu']:.1%}" if best["mfu"] is not None else ""
                log(f"  engine {precision} {attn}{' compiled' if compile_ else ''} {mode}: {best['tokens_per_s']:,.0f} tokens/s (budget {best['budget']}, padded {best['padded_fraction']:.1%}{mfu})")
            del eng
            if on_cuda:
                torch.cuda.empty_cache()
        # The baseline: SentenceTransformer.encode in fp16 (fp32 on CPU), default batch size, from text.
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(folder, device=device)
        st_precision = "fp16" if on_cuda else "fp32"
        if on_cuda:
            st.half()
        for mode in n_rows:
            lengths, rows, _ = data[mode]
            pick = rng.choice(len(rows), size=min(st_rows, len(rows)), replace=False)
            texts = rows_to_texts([rows[i] for i in pick])
            r = run_st(st, texts, seconds, device)
            tokens = float(lengths[pick].sum()) * r["passes"]
            r.update(mode=mode, precision=st_precision, tokens_per_s=tokens / r["seconds"])
            flops = model_flops(lengths[pick], params, layers, hidden) * r["passes"]
            r["mfu"] = (flops / r["seconds"] / peak) if peak else None
            entry["st"].append(r)
            log(f"  SentenceTransformer.encode {st_precision} {mode}: {r['tokens_per_s']:,.0f} tokens/s")
        del st
        if on_cuda:
            torch.cuda.empty_cache()
        st_mixed = next(r for r in entry["st"] if r["mode"] == "mixed")["tokens_per_s"]
        best_mixed = max((r for r in entry["engine"] if r["mode"] == "mixed"), key=lambda r: r["tokens_per_s"])
        entry["engine_vs_st_mixed"] = best_mixed["tokens_per_s"] / st_mixed
        for mode in n_rows:
            runs = [r for r in entry["engine"] if r["mode"] == mode]
            st_run = next(r for r in entry["st"] if r["mode"] == mode)
            b = max(runs, key=lambda r: r["tokens_per_s"])
            entry[f"best_{mode}"] = {"tokens_per_s": b["tokens_per_s"], "precision": b["precision"], "compile": b["compile"], "attention": b["attention"], "mfu": b["mfu"], "vs_st": b["tokens_per_s"] / st_run["tokens_per_s"]}
        summary["models"][name] = entry
    if not args.smoke and on_cuda:
        models = summary["models"]
        if "bert-base" in models:
            v = models["bert-base"]["best_fixed512"]["tokens_per_s"]
            summary["targets"]["bert-base fixed512 >= 2.0M tokens/s"] = {"value": v, "holds": v >= TARGETS["bert-base_fixed512_tokens_per_s"]}
        if "minilm-l6" in models:
            v = min(models["minilm-l6"][f"best_{m}"]["tokens_per_s"] for m in ("fixed128", "fixed512", "mixed"))
            summary["targets"]["minilm-l6 >= 5M tokens/s (worst of fixed128/fixed512/mixed)"] = {"value": v, "holds": v >= TARGETS["minilm-l6_tokens_per_s"]}
        for name, entry in models.items():
            v = entry["engine_vs_st_mixed"]
            summary["targets"][f"{name} engine >= 3x ST fp16 on mixed"] = {"value": v, "holds": v >= TARGETS["engine_vs_st_fp16_mixed"]}
    summary["seconds_total"] = time.perf_counter() - started_all
    text = json.dumps(summary, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
