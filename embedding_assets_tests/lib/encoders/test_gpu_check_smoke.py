"""benchmarks/gpu_check.py --smoke runs on CPU and prints the JSON summary the GPU run fills in."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert json.loads(done.stdout) == summary
    assert summary["smoke"] is True and summary["device"] == "cpu"
    assert summary["import_check"]["ok"] is True  # the engine core imports no dagster/polars/deltalake
    assert "2*P_nonembedding + 4*L*s*h" in summary["flops_formula"]
    for name in ("minilm-l6", "bert-base"):
        model = summary["models"][name]
        assert model["params_nonembedding"] > 0
        assert model["agreement"]["fp16_vs_fp32"]["mean_cosine"] > 0.99
        assert model["agreement"]["bf16_vs_fp32"]["mean_cosine"] > 0.99
        modes = {(r["mode"], r["attention"]) for r in model["engine"]}
        assert {("fixed128", "sdpa"), ("fixed512", "sdpa"), ("mixed", "sdpa"), ("fixed512", "eager")} <= modes
        assert all(r["tokens_per_s"] > 0 and "mfu" in r for r in model["engine"] + model["st"])
        assert {r["mode"] for r in model["st"]} == {"fixed128", "fixed512", "mixed"}
        assert model["engine_vs_st_mixed"] > 0 and model["best_mixed"]["tokens_per_s"] > 0
