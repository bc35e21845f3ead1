"""A damaged Delta log under a real run of the chain: batch B is embedded, then the embeddings table's
log is damaged (latest commit truncated to 0 bytes, garbled, or the whole `_delta_log` gone), then
batch A runs. The run must fail naming the table and the version, write nothing to that table, and
leave batch B's vectors recoverable by the fix the message names. Real Dagster, real Delta tables,
the bundled model.
"""

import os
import shutil

import dagster as dg
import numpy as np
import pytest

from embedding_assets.definitions import ASSETS
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake
from embedding_assets.lib.lake import tables
from embedding_assets_tests.conftest import materialize_assets, write_corpus

A, B = "a=1", "b"


@pytest.fixture(scope="module")
def lake_with_b(tmp_path_factory):
    """Landing with batches A and B, and a lake where only B went through the whole chain."""
    base = tmp_path_factory.mktemp("with_b")
    dirs = {"landing": str(base / "landing"), "lake": str(base / "lake"), "home": str(base / "home")}
    os.makedirs(dirs["home"])
    write_corpus(os.path.join(dirs["landing"], A), extra={"a.txt": "Only batch A has this document about rivers."})
    write_corpus(os.path.join(dirs["landing"], B), extra={"b.txt": "Only batch B has this document about mountains."})
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [A, B])
        materialize_assets(dirs, instance, B)
    return dirs


@pytest.fixture
def damaged(lake_with_b, dirs):
    """A copy of the lake with B embedded, and a function that runs A's chain on it."""
    shutil.rmtree(dirs["landing"])
    shutil.copytree(lake_with_b["landing"], dirs["landing"])
    shutil.copytree(lake_with_b["lake"], dirs["lake"])

    def run_a():
        with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
            instance.add_dynamic_partitions("batches", [A, B])
            resources = {"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"], commit_seconds=0.0), "model": ModelResource()}
            return dg.materialize(ASSETS, partition_key=A, instance=instance, resources=resources, raise_on_error=False)

    return dirs, run_a


def vectors_of_b(root):
    table = lake.read_partition(root, tables.EMBEDDINGS, B, columns=["chunk_id", "embedding"])
    order = np.argsort(table.column("chunk_id").to_numpy(zero_copy_only=False))
    return table.column("chunk_id").take(order).to_pylist(), tables.arrow_to_vectors(table.column("embedding"))[order]


def failure_of(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the run did not fail"
    assert {e.step_key for e in failures} == {"embeddings"}
    return str(failures[0].event_specific_data.error)


def assert_b_recovers(root, before):
    ids, vectors = vectors_of_b(root)
    assert ids == before[0] and len(ids) > 8
    np.testing.assert_array_equal(vectors, before[1])
    assert lake.read_partition(root, tables.EMBEDDINGS, A) is not None and lake.read_partition(root, tables.EMBEDDINGS, A).num_rows == 0


@pytest.mark.parametrize("damage, problem", [
    ("truncated", r"is empty \(0 bytes\)"),
    ("garbled", r"is not valid JSON at line 1"),
])
def test_a_damaged_latest_commit_stops_the_next_run_and_loses_nothing(damaged, damage, problem):
    dirs, run_a = damaged
    root = dirs["lake"]
    before = vectors_of_b(root)
    log = os.path.join(root, tables.EMBEDDINGS, "_delta_log")
    version = lake.open_table(root, tables.EMBEDDINGS).version()
    commit = os.path.join(log, f"{version:020d}.json")
    good = open(commit, "rb").read()
    with open(commit, "wb") as handle:
        handle.write(b"" if damage == "truncated" else b'{"commitInfo": {"timestamp": 17, garbage\n' + good)
    listing = sorted(os.listdir(log))

    result = run_a()
    assert not result.success
    error = failure_of(result)
    assert f"table embeddings is damaged: its commit of version {version}" in error and f"{version:020d}.json" in error
    assert __import__("re").search(problem, error), error
    assert sorted(os.listdir(log)) == listing  # nothing was committed over the damage
    assert not lake.exists(root, tables.DOCUMENTS) or A not in lake.partitions(root, tables.DOCUMENTS)

    with open(commit, "wb") as handle:  # the fix the message names
        handle.write(good)
    assert_b_recovers(root, before)


def test_a_missing_log_is_not_a_missing_table(damaged):
    dirs, run_a = damaged
    root = dirs["lake"]
    before = vectors_of_b(root)
    folder = os.path.join(root, tables.EMBEDDINGS)
    files = sorted(os.listdir(os.path.join(folder, "batch=b")))
    shutil.move(os.path.join(folder, "_delta_log"), os.path.join(dirs["home"], "saved_log"))

    result = run_a()
    assert not result.success
    error = failure_of(result)
    assert f"table embeddings is damaged: {folder} holds data (batch=b) but no readable Delta log" in error
    assert "Restore _delta_log" in error
    assert not os.path.exists(os.path.join(folder, "_delta_log"))  # not created anew
    assert sorted(os.listdir(os.path.join(folder, "batch=b"))) == files

    shutil.move(os.path.join(dirs["home"], "saved_log"), os.path.join(folder, "_delta_log"))
    assert_b_recovers(root, before)
