"""The tuned batch config: the smallest budget within 3% of the best, stored per (model, device, precision)."""

import json
import time
from types import SimpleNamespace

import numpy as np

from embedding_assets.lib.encoders import tuning
from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET
from embedding_assets.lib.encoders import EncoderEngine


def fake_engine(fingerprint="model@abc/mean/norm/max256/fp32/torch", precision="fp32", device="cpu"):
    backend = SimpleNamespace(name="torch", device=device, precision=precision, dimension=4)
    return SimpleNamespace(fingerprint=fingerprint, precision=precision, backends=[backend], backend="torch", tokenizer=None, max_seq_length=256)


IDS = [np.arange(1, n + 1) for n in (5, 9, 17, 33, 60)]


def table_measure(table):
    calls = []

    def measure(engine, token_ids, budget, seconds):
        calls.append(budget)
        value = table[budget]
        return value if isinstance(value, dict) else {"tokens_per_s": value, "peak_memory_bytes": budget * 1000}

    measure.calls = calls
    return measure


def test_picks_the_smallest_budget_within_3_percent_of_the_best(tmp_path):
    measure = table_measure({1024: 100.0, 2048: 180.0, 4096: 196.0, 8192: 200.0, 16384: 199.0, 32768: 150.0})
    result = tuning.tune(fake_engine(), IDS, seconds_per_budget=0.01, cache_dir=str(tmp_path), measure=measure, log=lambda m: None, rounds=1)
    assert result["chosen"] == 4096  # 196 >= 0.97 * 200; 2048 is 10% slower
    assert sorted(measure.calls) == [1024, 2048, 4096, 8192, 16384, 32768]
    assert tuning.pick_budget([{"budget": 1, "tokens_per_s": 96.9}, {"budget": 2, "tokens_per_s": 100.0}]) == 2
    assert tuning.pick_budget([{"budget": 1, "tokens_per_s": 97.0}, {"budget": 2, "tokens_per_s": 100.0}]) == 1


def test_best_round_counts_and_out_of_memory_budgets_are_never_picked(tmp_path):
    rounds = iter([50.0, 100.0, 300.0, 90.0, 120.0])  # round 1: 1024, 2048, 4096; round 2: 1024, 2048 (4096 ran out of memory)

    def measure(engine, token_ids, budget, seconds):
        if budget == 4096:
            return {"tokens_per_s": next(rounds), "oom": True}
        return {"tokens_per_s": next(rounds)}

    result = tuning.tune(fake_engine(), IDS, budgets=(1024, 2048, 4096), cache_dir=str(tmp_path), measure=measure, log=lambda m: None, rounds=2)
    by_budget = {m["budget"]: m["tokens_per_s"] for m in result["measurements"]}
    assert by_budget[1024] == 90.0 and by_budget[2048] == 120.0  # the better round of each
    assert result["chosen"] == 2048  # 4096 was fastest but ran out of memory


def test_stored_per_fingerprint_device_and_precision(tmp_path, monkeypatch):
    cache = str(tmp_path)
    monkeypatch.setattr(tuning, "device_name", lambda engine: engine.backends[0].device_label)
    engine = fake_engine()
    engine.backends[0].device_label = "NVIDIA H100 80GB HBM3"
    tuning.tune(engine, IDS, budgets=(2048, 4096), cache_dir=cache, measure=table_measure({2048: 10.0, 4096: 20.0}), log=lambda m: None, rounds=1)
    budget, source = tuning.load_tuned_budget(engine, cache)
    assert budget == 4096 and source == f"tuned {time.strftime('%Y-%m-%d', time.gmtime())} on NVIDIA H100 80GB HBM3"

    other_device = fake_engine()
    other_device.backends[0].device_label = "NVIDIA H200"
    other_precision = fake_engine(precision="bf16")
    other_precision.backends[0].device_label = "NVIDIA H100 80GB HBM3"
    other_model = fake_engine(fingerprint="model@def/mean/norm/max256/fp32/torch")
    other_model.backends[0].device_label = "NVIDIA H100 80GB HBM3"
    for e in (other_device, other_precision, other_model):
        assert tuning.load_tuned_budget(e, cache) == (DEFAULT_TOKEN_BUDGET, tuning.DEFAULT_SOURCE)

    tuning.tune(other_precision, IDS, budgets=(2048, 4096), cache_dir=cache, measure=table_measure({2048: 20.0, 4096: 20.0}), log=lambda m: None, rounds=1)
    assert tuning.load_tuned_budget(other_precision, cache)[0] == 2048
    assert tuning.load_tuned_budget(engine, cache)[0] == 4096  # the first entry is kept
    stored = json.loads((tmp_path / "tuning.json").read_text())["configs"]
    assert set(stored) == {
        "model@abc/mean/norm/max256/fp32/torch | NVIDIA H100 80GB HBM3 | fp32",
        "model@abc/mean/norm/max256/fp32/torch | NVIDIA H100 80GB HBM3 | bf16",
    }


def test_without_a_tuned_config_the_default_says_so(tmp_path):
    budget, source = tuning.load_tuned_budget(fake_engine(), str(tmp_path))
    assert budget == DEFAULT_TOKEN_BUDGET
    assert source == "default (no tuned config for this model on this device; run embedding-assets tune)"
    (tmp_path / "tuning.json").write_text("{not json")
    assert tuning.load_tuned_budget(fake_engine(), str(tmp_path))[0] == DEFAULT_TOKEN_BUDGET


def test_cpu_device_name_is_the_cpu_model():
    name = tuning.cpu_model_name()
    assert name and "cores)" in name
    assert tuning.device_name(fake_engine()) == name


class SleepyBackend:
    """Cost proportional to padded tokens plus a fixed per-batch overhead: bigger batches amortize it."""

    name, device, precision, dimension = "fake", "cpu", "fp32", 3

    def encode(self, batch):
        time.sleep(0.002 + batch.padded_tokens * 2e-7)
        return np.ones((len(batch.rows), 3), dtype=np.float32)


def test_measure_budget_runs_the_real_engine_loop(tmp_path):
    engine = EncoderEngine(model="fake", backends=[SleepyBackend()], tokenizer=SimpleNamespace(), fingerprint="fake/fp32/fake")
    ids = sorted((np.arange(1, n + 1) for n in np.random.default_rng(0).integers(4, 200, 400)), key=len)
    r = tuning.measure_budget(engine, ids, 1024, 0.05)
    assert r["tokens_per_s"] > 0 and r["batches"] >= 2 and not r["oom"]
    assert r["memory"].startswith("cpu rss") and r["peak_memory_bytes"] >= 0
    result = tuning.tune(engine, ids, budgets=(256, 4096), seconds_per_budget=0.05, cache_dir=str(tmp_path), log=lambda m: None, rounds=1)
    assert result["chosen"] in (256, 4096) and (tmp_path / "tuning.json").exists()
