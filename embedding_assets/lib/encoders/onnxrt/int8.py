"""int8 for the ONNX backend: a ladder of quantization recipes and the fidelity gate that picks one.

int8 is dynamic quantization of the weight MatMuls (per output channel, 7-bit weight range, which
AVX2/AVX-512 kernels need to avoid saturation). The FFN down-projections are the layers that lose
most to int8 (their inputs are post-GELU activations with heavy tails), so a ladder of recipes is
tried from fastest to most faithful:

1. `w8-ffn-down-fp32-first-third`: every weight MatMul int8 except the FFN down-projection of the
   first third of the layers;
2. `w8-ffn-down-fp32`: every FFN down-projection kept fp32.

Each is checked by a fidelity gate: mean cosine to the fp32 export over a fixed calibration
sample (Python docstrings plus generated text, mixed lengths) must reach the gate threshold
(0.99). The first recipe that passes is used; if none does, the backend runs fp32 and says why.
Gate results are cached next to the model, keyed by a digest of the calibration sample.

Measured on all-MiniLM-L6-v2, 2 AMD EPYC cores (see benchmarks/RESULTS.md): all weight MatMuls
int8 gives mean cosine 0.990 on real chunks (too close to the gate), keeping the first third's FFN
down-projections fp32 gives 0.994 at the same speed, keeping all of them fp32 0.996 and ~10% slower;
per-tensor weights or 8-bit weight range lose far more (0.92 / 0.74).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from embedding_assets.lib.encoders.onnxrt.export import calibration_texts, read_json, session, write_json

GATE_THRESHOLD = 0.99
RECIPES = ("w8-ffn-down-fp32-first-third", "w8-ffn-down-fp32")

log = logging.getLogger(__name__)


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


@dataclass
class GateOutcome:
    """What the fidelity gate decided: the recipe that passed (None: none did) and its evidence."""

    recipe: str | None
    model_path: Path | None  # the int8 model of `recipe`
    session: object  # an open session on the chosen int8 model, or on fp32 when one was opened, else None
    mean_cosine: float | None  # of the chosen recipe, or of the best one tried when none passed
    min_cosine: float | None
    from_cache: bool  # every recipe tried was already quantized and measured
    fallback_reason: str | None


def choose_recipe(
    model_dir: Path,
    fp32_path: Path,
    recipes: tuple[str, ...],
    threshold: float,
    threads: int,
    embed_texts: Callable[[object, list[str]], np.ndarray],
) -> GateOutcome:
    """Walks the recipe ladder: quantizes and measures each recipe not yet in the gate cache, and
    returns the first one whose mean cosine to fp32 reaches `threshold`.

    `embed_texts(session, texts)` gives pooled, normalized vectors from one ONNX Runtime session.
    """
    texts = calibration_texts()
    digest = _calibration_digest(texts)
    gate_path = model_dir / "int8-gate.json"
    gate = read_json(gate_path)
    if gate.get("calibration") != digest:
        gate = {"calibration": digest, "results": {}}
    results: dict = gate["results"]
    reference = None
    fp32_session = None
    tried = []
    cached_all = True
    for recipe in recipes:
        path = model_dir / f"model-int8-{recipe}.onnx"
        result = results.get(recipe)
        if result is None or not path.exists():
            cached_all = False
            if not path.exists():
                quantize(fp32_path, path, recipe)
            if reference is None:
                fp32_session = fp32_session or session(str(fp32_path), threads)
                reference = embed_texts(fp32_session, texts)
            candidate = embed_texts(session(str(path), threads), texts)
            cosines = np.sum(candidate * reference, axis=1)
            result = {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()), "texts": len(texts)}
            results[recipe] = result
            write_json(gate_path, gate)
        tried.append(f"{recipe}: mean cosine {result['mean_cosine']:.4f}")
        if result["mean_cosine"] >= threshold:
            return GateOutcome(recipe, path, session(str(path), threads), result["mean_cosine"], result["min_cosine"], cached_all, None)
    best = max((results[r] for r in recipes if r in results), key=lambda r: r["mean_cosine"], default=None)
    reason = (
        f"int8 failed the fidelity gate (mean cosine to fp32 on {len(texts)} calibration texts must be "
        f">= {threshold}; {'; '.join(tried)}): running onnx fp32 instead"
    )
    log.warning(reason)
    return GateOutcome(
        recipe=None,
        model_path=None,
        session=fp32_session,
        mean_cosine=best["mean_cosine"] if best else None,
        min_cosine=best["min_cosine"] if best else None,
        from_cache=cached_all,
        fallback_reason=reason,
    )
