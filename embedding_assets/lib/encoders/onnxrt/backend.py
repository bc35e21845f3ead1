"""The ONNX Runtime CPU backend: the model's transformer exported once, run from token ids.

The sentence-transformers model's transformer is exported with the TorchScript exporter
(`torch.onnx.export(..., dynamo=False)`, dynamic batch and sequence axes, eager attention, which
ONNX Runtime's CPU graph optimizer handles best) into `<cache>/onnx/<key>/model.onnx`, where the
key names the model and a hash of its weights, so a model is exported once per weights revision.
Pooling and normalization run in numpy fp32 with the same math as `engine.pool`.

int8 (`quantize=True`) is dynamic quantization of the weight MatMuls (per output channel, 7-bit
weight range, which AVX2/AVX-512 kernels need to avoid saturation). The FFN down-projections are
the layers that lose most to int8 (their inputs are post-GELU activations with heavy tails), so
a ladder of recipes is tried from fastest to most faithful:

1. `w8-ffn-down-fp32-first-third`: every weight MatMul int8 except the FFN down-projection of the
   first third of the layers;
2. `w8-ffn-down-fp32`: every FFN down-projection kept fp32.

Each is checked by a fidelity gate: mean cosine to the fp32 export over a fixed calibration
sample (Python docstrings plus generated text, mixed lengths) must reach `gate_threshold`
(0.99). The first recipe that passes is used; if none does, the backend runs fp32 (`name` 'onnx',
`precision` 'fp32') and says why in `fallback_reason`. Gate results are cached next to the model.

Measured on all-MiniLM-L6-v2, 2 AMD EPYC cores (see benchmarks/RESULTS.md): all weight MatMuls
int8 gives mean cosine 0.990 on real chunks (too close to the gate), keeping the first third's FFN
down-projections fp32 gives 0.994 at the same speed, keeping all of them fp32 0.996 and ~10% slower;
per-tensor weights or 8-bit weight range lose far more (0.92 / 0.74).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from embedding_assets.lib.batching import Batch, iter_batches

EXPORT_VERSION = 1  # bump when the export recipe changes: old exports are then ignored
OPSET = 17
GATE_THRESHOLD = 0.99
RECIPES = ("w8-ffn-down-fp32-first-third", "w8-ffn-down-fp32")
ONNX_POOLING = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")

log = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    """The model cannot run on the ONNX backend (pooling or pipeline it does not reproduce)."""


def default_cache_dir() -> str:
    from embedding_assets.lib.settings import env

    return os.path.expanduser(env("EMBEDDING_CACHE"))


def cpu_threads() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a Kubernetes
    CPU limit shows every node core in the affinity mask; more threads than the quota thrash)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


# ---------------------------------------------------------------- pooling (numpy, fp32)

def pool_numpy(hidden: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token vectors [rows, seq, dim], in fp32: the math of engine.pool."""
    hidden = hidden.astype(np.float32, copy=False)
    mask = attention_mask.astype(np.float32)[..., None]
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0])
    if mode == "lasttoken":
        last = attention_mask.sum(axis=1).astype(np.int64) - 1
        return hidden[np.arange(hidden.shape[0]), last]
    if mode == "max":
        return np.where(mask == 0, -np.inf, hidden).max(axis=1).astype(np.float32)
    summed = (hidden * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), 1e-9)
    if mode == "mean_sqrt_len_tokens":
        return summed / np.sqrt(counts)
    if mode == "mean":
        return summed / counts
    raise UnsupportedModelError(f"pooling mode {mode!r} is not supported by the onnx backend (supported: {', '.join(ONNX_POOLING)})")


def normalize_numpy(vectors: np.ndarray) -> np.ndarray:
    """L2 normalization with torch.nn.functional.normalize's epsilon."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ---------------------------------------------------------------- calibration sample

_CALIBRATION_OBJECTS = (
    "builtins.str", "builtins.dict", "builtins.list", "builtins.int", "builtins.sorted", "builtins.open",
    "builtins.print", "builtins.zip", "builtins.range", "builtins.isinstance",
    "json.dumps", "json.loads", "re.sub", "re.compile", "os.walk", "os.replace", "os.path.join", "shutil.copytree",
    "collections.OrderedDict", "collections.Counter", "collections.defaultdict", "functools.lru_cache",
    "functools.reduce", "functools.partial", "itertools.groupby", "itertools.product", "textwrap.wrap",
    "textwrap.dedent", "datetime.datetime", "datetime.timedelta", "pathlib.Path", "subprocess.run",
    "subprocess.Popen", "threading.Thread", "threading.Event", "queue.Queue", "logging.Logger",
    "logging.basicConfig", "argparse.ArgumentParser", "csv.DictReader", "tempfile.mkstemp",
    "tempfile.TemporaryDirectory", "heapq.merge", "bisect.bisect_left", "statistics.median", "random.shuffle",
    "contextlib.contextmanager", "dataclasses.dataclass", "typing.NamedTuple", "inspect.signature",
    "hashlib.sha256", "zipfile.ZipFile", "tarfile.open", "urllib.parse.urlparse", "uuid.uuid4", "decimal.Decimal",
)

_WORDS = (
    "the batch of documents is split into chunks each tokenized once and sorted by length so that the "
    "embedder forms token budget batches with almost no padding vectors are written to a delta table in "
    "periodic commits a crash loses at most one commit interval re running a partition embeds only new "
    "chunks the model fingerprint names the weights pooling precision and backend customers reported "
    "latency spikes after the deploy on tuesday invoice 4471 is overdue please contact billing the river "
    "flooded the lower fields in march and the harvest came late café naïve résumé 東京 数据 😀 100% 3.14 "
    "SELECT id, text FROM chunks WHERE batch = 'b1' ORDER BY n_tokens; def f(x): return x ** 2"
).split()


def calibration_texts(n_generated: int = 32) -> list[str]:
    """A fixed calibration sample: stdlib docstrings (real prose with code) plus generated text.

    Lengths are mixed on purpose (a sentence to a few hundred tokens): quantization error
    behaves differently on short and long inputs.
    """
    import importlib
    import inspect

    texts: list[str] = []
    for dotted in _CALIBRATION_OBJECTS:
        module_name, _, attr = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception:
            continue
        doc = inspect.getdoc(obj) or ""
        paragraphs = [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 20]
        if paragraphs:
            texts.append(paragraphs[0])
        if len(doc) > 200:
            texts.append(doc[:1500])
    rng = np.random.default_rng(20240601)
    for i in range(n_generated):
        length = int(rng.choice([6, 12, 24, 48, 96, 180, 300]))
        texts.append(" ".join(rng.choice(_WORDS, size=length).tolist()))
    return texts


# ---------------------------------------------------------------- export

def export_key(resolved: str) -> str:
    from embedding_assets.lib.model import model_label, weights_revision

    label = re.sub(r"[^A-Za-z0-9._-]+", "_", model_label(resolved))[-60:] or "model"
    return f"{label}-{weights_revision(resolved)}-opset{OPSET}-v{EXPORT_VERSION}"


def _load_sentence_transformer(resolved: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolved, device="cpu", model_kwargs={"attn_implementation": "eager"})


def pooling_of(st):
    """(PoolingSpec, dimension) of a Transformer -> Pooling [-> Normalize] model, else a clear error."""
    from embedding_assets.lib.engine import _pooling_spec

    spec = _pooling_spec(st)
    names = [type(m).__name__ for m in st]
    if spec is None:
        mode = getattr(st[1], "pooling_mode", None) if len(names) > 1 else None
        raise UnsupportedModelError(
            f"the onnx backend runs Transformer -> Pooling [-> Normalize] models with one pooling mode of "
            f"{', '.join(ONNX_POOLING)}; this model's modules are {names} (pooling {mode!r}): use EMBEDDING_BACKEND=torch"
        )
    return spec, int(st.get_embedding_dimension())


def export_model(resolved: str, target_dir: Path) -> dict:
    """Exports the transformer of `resolved` into `target_dir` (created atomically); returns its meta."""
    import torch

    st = _load_sentence_transformer(resolved)
    spec, dimension = pooling_of(st)
    auto_model = st[0].auto_model.eval()
    from embedding_assets.lib.engine import _forward_params

    with_token_types = "token_type_ids" in _forward_params(auto_model)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    # Trace with padding in the mask so the masking path is recorded (an all-ones mask may be skipped).
    vocab = int(getattr(auto_model.config, "vocab_size", 1000))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab - 1), vocab, (3, 17), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    args = (ids, mask, torch.zeros_like(ids)) if with_token_types else (ids, mask)
    wrapper = LastHidden(auto_model).eval()

    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.tmp-", dir=target_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        started = time.perf_counter()
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(tmp / "model.onnx"),
                dynamo=False,
                input_names=inputs,
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in inputs + ["last_hidden_state"]},
                opset_version=OPSET,
                do_constant_folding=True,
            )
            expected = wrapper(*args).numpy()
        seconds = time.perf_counter() - started
        session = _session(str(tmp / "model.onnx"), threads=1)
        feed = dict(zip(inputs, (a.numpy() for a in args)))
        got = session.run(None, feed)[0]
        real = mask.numpy().astype(bool)
        error = float(np.abs(got[real] - expected[real]).max())
        if not error < 1e-3:
            raise RuntimeError(f"the ONNX export of {resolved} disagrees with torch (max abs error {error:.2e}); not caching it")
        meta = {
            "model": resolved,
            "key": target_dir.name,
            "inputs": inputs,
            "pooling": spec.mode,
            "normalize": spec.normalize,
            "dimension": dimension,
            "opset": OPSET,
            "torch": torch.__version__,
            "export_seconds": round(seconds, 2),
            "export_max_abs_error": error,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, target_dir)  # atomic: readers see no folder or a complete one
        except OSError:
            if not (target_dir / "meta.json").exists():
                raise
            # Another process exported the same model meanwhile: keep theirs.
        return meta
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- int8

def _weight_matmuls(model) -> list[tuple[str, tuple[int, ...]]]:
    """(node name, weight shape) of every MatMul with a constant 2-D weight, in graph order."""
    initializers = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        for name in node.input:
            if name in initializers and len(initializers[name]) == 2:
                out.append((node.name, initializers[name]))
                break
    return out


def recipe_nodes(model, recipe: str) -> tuple[list[str], list[str]]:
    """(nodes to quantize, nodes kept fp32) for a recipe.

    A FFN down-projection is a weight MatMul whose input width exceeds its output width
    (intermediate -> hidden); layers are counted in graph order.
    """
    matmuls = _weight_matmuls(model)
    down = [name for name, (k, n) in matmuls if k > n]
    if recipe == "w8-ffn-down-fp32-first-third":
        keep = down[: max(1, math.ceil(len(down) / 3))] if down else []
    elif recipe == "w8-ffn-down-fp32":
        keep = down
    elif recipe == "w8-all":
        keep = []
    else:
        raise ValueError(f"unknown int8 recipe {recipe!r}")
    keep_set = set(keep)
    return [name for name, _ in matmuls if name not in keep_set], keep


def quantize(fp32_path: Path, out_path: Path, recipe: str) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path), load_external_data=False)
    nodes, _ = recipe_nodes(model, recipe)
    del model
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    quant_logger = logging.getLogger("onnxruntime.quantization")
    previous = logging.root.level, quant_logger.level
    logging.root.setLevel(logging.ERROR)  # quantize_dynamic warns through the root logger
    try:
        quantize_dynamic(
            str(fp32_path),
            str(tmp),
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
        )
        os.replace(tmp, out_path)
    finally:
        logging.root.setLevel(previous[0])
        if tmp.exists():
            tmp.unlink()


def _calibration_digest(texts: list[str]) -> str:
    return hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ---------------------------------------------------------------- the backend

class OnnxBackend:
    """Backend protocol over ONNX Runtime on CPU: `encode(batch)` -> pooled, normalized fp32 vectors."""

    device = "cpu"

    def __init__(
        self,
        resolved: str,
        quantize: bool = False,
        cache_dir: str | None = None,
        gate_threshold: float = GATE_THRESHOLD,
        threads: int | None = None,
        recipes: tuple[str, ...] = RECIPES,
    ):
        self.resolved = resolved
        self.cache_dir = Path(os.path.expanduser(cache_dir or default_cache_dir()))
        self.threads = threads or cpu_threads()
        self.gate_threshold = gate_threshold
        self.model_dir = self.cache_dir / "onnx" / export_key(resolved)
        self.exported = False  # True when this instance ran the export (False: reused the cache)
        if not (self.model_dir / "meta.json").exists() or not (self.model_dir / "model.onnx").exists():
            export_model(resolved, self.model_dir)
            self.exported = True
        meta = _read_json(self.model_dir / "meta.json")
        from embedding_assets.lib.engine import PoolingSpec

        if meta.get("pooling") not in ONNX_POOLING:
            raise UnsupportedModelError(f"cached export {self.model_dir} has unsupported pooling {meta.get('pooling')!r}")
        self.pooling = PoolingSpec(mode=meta["pooling"], normalize=bool(meta["normalize"]))
        self.dimension = int(meta["dimension"])
        self.inputs = list(meta["inputs"])
        self.fp32_path = self.model_dir / "model.onnx"

        self.fallback_reason: str | None = None
        self.gate_cosine: float | None = None  # mean cosine of int8 to fp32 on the calibration sample
        self.gate_min_cosine: float | None = None
        self.gate_from_cache = False
        self.recipe: str | None = None
        self.model_path = self.fp32_path
        self.name, self.precision = "onnx", "fp32"
        self._session = None
        if quantize:
            self._choose_int8(recipes)
        if self._session is None:
            self._session = _session(str(self.model_path), self.threads)

    # -- int8 with its fidelity gate
    def _choose_int8(self, recipes: tuple[str, ...]) -> None:
        texts = calibration_texts()
        digest = _calibration_digest(texts)
        gate_path = self.model_dir / "int8-gate.json"
        gate = _read_json(gate_path)
        if gate.get("calibration") != digest:
            gate = {"calibration": digest, "results": {}}
        results: dict = gate["results"]
        reference = None
        fp32_session = None
        tried = []
        cached_all = True
        for recipe in recipes:
            path = self.model_dir / f"model-int8-{recipe}.onnx"
            result = results.get(recipe)
            if result is None or not path.exists():
                cached_all = False
                if not path.exists():
                    quantize(self.fp32_path, path, recipe)
                if reference is None:
                    fp32_session = fp32_session or _session(str(self.fp32_path), self.threads)
                    reference = self._embed_texts(fp32_session, texts)
                candidate = self._embed_texts(_session(str(path), self.threads), texts)
                cosines = np.sum(candidate * reference, axis=1)
                result = {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()), "texts": len(texts)}
                results[recipe] = result
                _write_json(gate_path, gate)
            tried.append(f"{recipe}: mean cosine {result['mean_cosine']:.4f}")
            if result["mean_cosine"] >= self.gate_threshold:
                self.name, self.precision, self.recipe = "onnx-int8", "int8", recipe
                self.model_path = path
                self.gate_cosine, self.gate_min_cosine = result["mean_cosine"], result["min_cosine"]
                self.gate_from_cache = cached_all
                self._session = _session(str(path), self.threads)
                return
        best = max((results[r] for r in recipes if r in results), key=lambda r: r["mean_cosine"], default=None)
        self.gate_cosine = best["mean_cosine"] if best else None
        self.gate_min_cosine = best["min_cosine"] if best else None
        self.gate_from_cache = cached_all
        self.fallback_reason = (
            f"int8 failed the fidelity gate (mean cosine to fp32 on {len(texts)} calibration texts must be "
            f">= {self.gate_threshold}; {'; '.join(tried)}): running onnx fp32 instead"
        )
        log.warning(self.fallback_reason)
        self._session = fp32_session

    def _embed_texts(self, session, texts: list[str]) -> np.ndarray:
        from embedding_assets.lib.model import load_tokenizer

        tokenizer = load_tokenizer(self.resolved)
        arrays = [np.asarray(t, dtype=np.int64) for t in tokenizer.encode_batch(texts)]
        order = np.argsort([len(a) for a in arrays], kind="stable")
        out = np.zeros((len(arrays), self.dimension), dtype=np.float32)
        for batch in iter_batches([arrays[i] for i in order], 4096):
            out[order[batch.rows]] = self._run(session, batch)
        return out

    # -- the Backend protocol
    def encode(self, batch: Batch) -> np.ndarray:
        return self._run(self._session, batch)

    def _run(self, session, batch: Batch) -> np.ndarray:
        ids = np.ascontiguousarray(batch.input_ids, dtype=np.int64)
        mask = np.ascontiguousarray(batch.attention_mask, dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(["last_hidden_state"], feed)[0]
        vectors = pool_numpy(hidden, mask, self.pooling.mode)
        if self.pooling.normalize:
            vectors = normalize_numpy(vectors)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def describe(self) -> dict:
        """What runs, for logs and run metadata."""
        return {
            "backend": self.name,
            "precision": self.precision,
            "model_path": str(self.model_path),
            "recipe": self.recipe,
            "gate_threshold": self.gate_threshold,
            "gate_cosine": self.gate_cosine,
            "fallback_reason": self.fallback_reason,
            "threads": self.threads,
        }
