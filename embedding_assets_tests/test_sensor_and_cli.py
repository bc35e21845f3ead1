"""The landing sensor against a real instance, and the console commands as a user runs them."""

import json
import os
import subprocess
import sys
import time


import dagster as dg

from embedding_assets.defs.ingest.sensors import landing_sensor, sync_partitions
from embedding_assets.defs.resources import LakeResource
from embedding_assets_tests.conftest import write_corpus

BIN = os.path.dirname(sys.executable)


def _evaluate(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource()})
    return landing_sensor(context), context


def test_sensor_adds_partitions_and_requests_each_batch_once(dirs):
    write_corpus(os.path.join(dirs["landing"], "b1"))
    write_corpus(os.path.join(dirs["landing"], "b2"))
    os.makedirs(os.path.join(dirs["landing"], "bad name!"))
    open(os.path.join(dirs["landing"], "bad name!", "x.txt"), "w").write("text")
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        result, _ = _evaluate(instance)
        assert isinstance(result, dg.SensorResult)
        assert sorted(r.partition_key for r in result.run_requests) == ["b1", "b2"]
        assert len({r.run_key for r in result.run_requests}) == 2
        [add] = result.dynamic_partitions_requests
        assert sorted(add.partition_keys) == ["b1", "b2"]
        instance.add_dynamic_partitions("batches", list(add.partition_keys))

        again, _ = _evaluate(instance, cursor=result.cursor)
        assert isinstance(again, dg.SkipReason)

        # A batch whose files change later gets exactly one new run.
        time.sleep(0.01)
        with open(os.path.join(dirs["landing"], "b2", "added_later.txt"), "w") as handle:
            handle.write("A file that landed after the first run.")
        changed, _ = _evaluate(instance, cursor=result.cursor)
        assert [r.partition_key for r in changed.run_requests] == ["b2"]
        assert changed.run_requests[0].run_key not in {r.run_key for r in result.run_requests}
        assert not changed.dynamic_partitions_requests  # b2 is already a partition


def test_sensor_waits_for_batches_to_settle_unless_marked_ready(dirs, monkeypatch):
    monkeypatch.setenv("EMBEDDING_SETTLE_SECONDS", "3600")
    write_corpus(os.path.join(dirs["landing"], "fresh"))
    write_corpus(os.path.join(dirs["landing"], "marked"))
    open(os.path.join(dirs["landing"], "marked", "_READY"), "w").close()
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        result, _ = _evaluate(instance)
        assert [r.partition_key for r in result.run_requests] == ["marked"]
        assert "fresh" not in json.loads(result.cursor)


def test_sync_registers_only_unknown_batches(dirs):
    write_corpus(os.path.join(dirs["landing"], "b1"))
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        assert sync_partitions(instance, dirs["landing"])[0] == ["b1"]
        assert sync_partitions(instance, dirs["landing"])[0] == []
        assert instance.get_dynamic_partitions("batches") == ["b1"]


def _run(args, env, timeout=600):
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout + done.stderr


def test_cli_sync_materialize_and_search(dirs):
    """What the README tells a user to type: sync, the dagster CLI, then search (real processes)."""
    write_corpus(os.path.join(dirs["landing"], "docs"), extra={"cats.txt": "Cats are small domesticated felines that purr."})
    env = {**os.environ, "DAGSTER_HOME": dirs["home"], "HF_HUB_OFFLINE": "1"}
    assert "added partition docs" in _run([f"{BIN}/embedding-assets", "sync"], env)
    module = ["-m", "embedding_assets.definitions"]
    _run([f"{BIN}/dagster", "asset", "materialize", *module, "--select", "*length_buckets", "--partition", "docs"], env)
    out = _run([f"{BIN}/dagster", "asset", "materialize", *module, "--select", "embeddings", "--partition", "docs"], env)
    assert "RUN_SUCCESS" in out
    search = _run([f"{BIN}/embedding-assets", "search", "a purring feline pet", "--batch", "docs", "-k", "2"], env)
    first = search.splitlines()[0]
    assert "cats.txt" in first, search
    summary = _run([f"{BIN}/embedding-assets", "summary", "--batch", "docs"], env)
    assert "embeddings" in summary


def test_sync_without_dagster_home_says_what_to_do(dirs):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run([f"{BIN}/embedding-assets", "sync"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "DAGSTER_HOME" in done.stderr


def test_cli_migrate_partitions_check_on_a_current_lake(dirs, capsys):
    from embedding_assets.cli import main
    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables
    import pyarrow as pa

    rows = pa.table({"batch": ["a=b"], "source": ["x.txt"], "record": [None], "reason": ["empty"], "rejected_at": [None]}, schema=tables.REJECTED_DOCUMENTS)
    lake.replace_partition(dirs["lake"], tables.REJECTED, "a=b", rows)
    assert main(["migrate-partitions", "--check"]) == 0, capsys.readouterr()
