"""The ONNX export of a model's transformer, cached once per weights revision, and the calibration corpus.

The sentence-transformers model's transformer is exported with the TorchScript exporter
(`torch.onnx.export(..., dynamo=False)`, dynamic batch and sequence axes, eager attention, which
ONNX Runtime's CPU graph optimizer handles best) into `<cache>/onnx/<key>/model.onnx`, where the
key names the model and a hash of its weights, so a model is exported once per weights revision.
An export is checked against torch before it is cached, and written atomically: a reader sees no
folder or a complete one.

The calibration corpus (stdlib docstrings plus generated text of mixed lengths) is what the int8
fidelity gate compares int8 and fp32 vectors on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from embedding_assets.lib.encoders.base import SUPPORTED_POOLING, UnsupportedModelError
from embedding_assets.lib.encoders.model import forward_params, model_label, pooling_spec, weights_revision

EXPORT_VERSION = 1  # bump when the export recipe changes: old exports are then ignored
OPSET = 17


def default_cache_dir() -> str:
    from embedding_assets.lib.settings import env

    return os.path.expanduser(env("EMBEDDING_CACHE"))


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
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", model_label(resolved))[-60:] or "model"
    return f"{label}-{weights_revision(resolved)}-opset{OPSET}-v{EXPORT_VERSION}"


def _load_sentence_transformer(resolved: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolved, device="cpu", model_kwargs={"attn_implementation": "eager"})


def pooling_of(st):
    """(PoolingSpec, dimension) of a Transformer -> Pooling [-> Normalize] model, else a clear error."""
    spec = pooling_spec(st)
    names = [type(m).__name__ for m in st]
    if spec is None:
        mode = getattr(st[1], "pooling_mode", None) if len(names) > 1 else None
        raise UnsupportedModelError(
            f"the onnx backend runs Transformer -> Pooling [-> Normalize] models with one pooling mode of "
            f"{', '.join(SUPPORTED_POOLING)}; this model's modules are {names} (pooling {mode!r}): use EMBEDDING_BACKEND=torch"
        )
    return spec, int(st.get_embedding_dimension())


def export_model(resolved: str, target_dir: Path) -> dict:
    """Exports the transformer of `resolved` into `target_dir` (created atomically); returns its meta."""
    import torch

    st = _load_sentence_transformer(resolved)
    spec, dimension = pooling_of(st)
    auto_model = st[0].auto_model.eval()
    with_token_types = "token_type_ids" in forward_params(auto_model)
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
        check = session(str(tmp / "model.onnx"), threads=1)
        feed = dict(zip(inputs, (a.numpy() for a in args)))
        got = check.run(None, feed)[0]
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


def session(path: str, threads: int):
    """An ONNX Runtime CPU session on one model file, with every graph optimization on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Replaces `path` atomically (concurrent readers see the old or the new file, never a torn one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
