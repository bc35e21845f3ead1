"""The tuned config in the lake: `tune` writes it to `<lake>/_tuning`, `load_tuned_budget` reads it
from there first (then the local cache, then the default), the latest write per key wins, and the
source names where the budget came from. On a local lake and on moto's S3 server."""

import time

import pytest

from embedding_assets.lib import lake
from embedding_assets.lib.batching import DEFAULT_TOKEN_BUDGET
from embedding_assets.lib.encoders import tuning
from embedding_assets_tests.lib.encoders.test_tuning import IDS, fake_engine, table_measure
from embedding_assets_tests.lib.storage.conftest import clean_env, s3, s3_endpoint  # noqa: F401 (fixtures)


@pytest.fixture
def h100(monkeypatch):
    monkeypatch.setattr(tuning, "device_name", lambda engine: engine.backends[0].device_label)

    def make(**kwargs):
        engine = fake_engine(**kwargs)
        engine.backends[0].device_label = "NVIDIA H100 80GB HBM3"
        return engine

    return make


def _tune(engine, lake_root, cache, table):
    return tuning.tune(engine, IDS, budgets=tuple(table), cache_dir=cache, lake_root=lake_root, measure=table_measure(table), log=lambda m: None, rounds=1)


def _round_trip(lake_root, tmp_path, make):
    tuner_cache, pod_cache = str(tmp_path / "tuner-home"), str(tmp_path / "pod-home")  # the pod has no local file
    engine = make()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert tuning.load_tuned_budget(engine, pod_cache, lake_root=lake_root) == (DEFAULT_TOKEN_BUDGET, tuning.DEFAULT_SOURCE)

    result = _tune(engine, lake_root, tuner_cache, {2048: 10.0, 4096: 20.0})
    assert result["lake_table"] == lake.table_uri(lake_root, "_tuning")
    assert tuning.load_tuned_budget(engine, pod_cache, lake_root=lake_root) == (4096, f"lake:_tuning (tuned {today} on NVIDIA H100 80GB HBM3)")
    # The same budget from the tuner's local file when the lake is not given (the old behaviour).
    assert tuning.load_tuned_budget(engine, tuner_cache) == (4096, f"tuned {today} on NVIDIA H100 80GB HBM3")

    # Another precision is another key; a re-tune of the first key replaces it (last write wins).
    other = make(precision="bf16")
    _tune(other, lake_root, tuner_cache, {1024: 30.0, 2048: 30.0})
    _tune(engine, lake_root, tuner_cache, {2048: 20.0, 8192: 20.0})
    assert tuning.load_tuned_budget(engine, pod_cache, lake_root=lake_root)[0] == 2048
    assert tuning.load_tuned_budget(other, pod_cache, lake_root=lake_root)[0] == 1024
    assert tuning.load_tuned_budget(make(fingerprint="another@model/fp32"), pod_cache, lake_root=lake_root)[0] == DEFAULT_TOKEN_BUDGET
    stored = lake.read_table(lake_root, "_tuning")
    assert stored.num_rows == 3 and set(stored.column("budget").to_pylist()) == {4096, 1024, 2048}
    import json

    measurements = json.loads(stored.column("entry")[0].as_py())["measurements"]
    assert {m["budget"] for m in measurements} >= {2048}


def test_tuned_config_round_trips_through_a_local_lake(tmp_path, h100):
    _round_trip(str(tmp_path / "lake"), tmp_path, h100)


def test_tuned_config_round_trips_through_the_lake_on_s3(s3, tmp_path, h100):
    _client, bucket = s3
    _round_trip(f"s3://{bucket}/lake", tmp_path, h100)


def test_lake_falls_back_to_the_local_cache_then_the_default(tmp_path, h100):
    engine, cache, lake_root = h100(), str(tmp_path / "home"), str(tmp_path / "lake")
    tuning.tune(engine, IDS, budgets=(2048, 4096), cache_dir=cache, measure=table_measure({2048: 20.0, 4096: 10.0}), log=lambda m: None, rounds=1)
    # Nothing in the lake for this key: the local file's budget, named as such.
    budget, source = tuning.load_tuned_budget(engine, cache, lake_root=lake_root)
    assert budget == 2048 and source.startswith("tuned ")
    # A lake that cannot be read is reported and skipped, not fatal.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "_tuning").mkdir()
    (tmp_path / "broken" / "_tuning" / "_delta_log").mkdir()
    (tmp_path / "broken" / "_tuning" / "_delta_log" / "00000000000000000000.json").write_text("{not json")
    messages = []
    assert tuning.load_tuned_budget(engine, cache, lake_root=str(tmp_path / "broken"), log=messages.append)[0] == 2048
    assert messages and "could not read the tuned config" in messages[0]
