"""What the UI reads from a real run: standard table metadata, rejected_documents, checks per partition.

Real Dagster instance, real Delta tables, the real bundled model, on the small test corpus.
"""

import os

import pytest

import dagster as dg

from embedding_assets import definitions
from embedding_assets.definitions import ASSETS
from embedding_assets.defs.embedding.checks import EMBEDDING_CHECKS
from embedding_assets.defs.ingest.assets import REJECT_FRACTION_CHECK
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake
from embedding_assets_tests.conftest import materialize_assets, write_corpus

TABLES = ["raw_documents", "rejected_documents", "chunks", "length_buckets", "embeddings", "document_embeddings"]


def _events(result):
    return {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}


@pytest.fixture
def instance(dirs):
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", ["b1", "b2"])
        yield instance


def test_every_table_reports_row_counts_column_schema_and_uri(dirs, instance):
    write_corpus(os.path.join(dirs["landing"], "b1"))
    write_corpus(os.path.join(dirs["landing"], "b2"), extra={"more.txt": "One more document, only in b2."})
    materialize_assets(dirs, instance, "b1")
    result = materialize_assets(dirs, instance, "b2")
    events = _events(result)
    assert sorted(events) == sorted(TABLES)
    for table in TABLES:
        metadata = events[table]
        b1 = lake.read_partition(dirs["lake"], table, "b1", columns=["batch"]).num_rows
        b2 = lake.read_partition(dirs["lake"], table, "b2", columns=["batch"]).num_rows
        assert metadata["dagster/partition_row_count"].value == b2, table
        assert metadata["dagster/row_count"].value == b1 + b2, table
        assert metadata["dagster/uri"].value == lake.table_uri(dirs["lake"], table)
        schema = metadata["dagster/column_schema"].value
        names = [c.name for c in schema.columns]
        assert names[0] == "batch" and all(c.description for c in schema.columns), table
    columns = {c.name: c for c in events["embeddings"]["dagster/column_schema"].value.columns}
    assert columns["embedding"].type == "float32[384]" and "unit length" in columns["embedding"].description
    documents = {c.name: c.type for c in events["document_embeddings"]["dagster/column_schema"].value.columns}
    assert documents["embedding"] == "float32[384]"
    # The column schema is on the definitions too: the Columns section shows before any run.
    specs = {k.to_user_string(): s for a in ASSETS for k, s in a.specs_by_key.items()}
    assert [c.name for c in specs["rejected_documents"].metadata["dagster/column_schema"].columns] == ["batch", "source", "record", "reason", "rejected_at"]
    # raw_documents' data version is the batch's landing fingerprint.
    raw = events["raw_documents"]
    assert len(raw["landing_fingerprint"].value) == 32
    # rejected_documents: the broken JSON line, and the warn check passes (1 of 9 is under 20 %).
    assert events["rejected_documents"]["rejected"].value == 1
    [reject_check] = [c for c in result.get_asset_check_evaluations() if c.asset_key == dg.AssetKey("rejected_documents")]
    assert reject_check.passed and reject_check.partition == "b2" and reject_check.severity == dg.AssetCheckSeverity.WARN
    # Every check result belongs to its partition.
    assert {c.partition for c in result.get_asset_check_evaluations()} == {"b2"}
    # CPU telemetry in the embeddings step.
    assert events["embeddings"]["cpu/utilization_pct"].value > 0 and events["embeddings"]["cpu/threads_max"].value >= 1


def test_reject_fraction_check_warns_above_the_threshold(dirs, instance):
    write_corpus(os.path.join(dirs["landing"], "b1"), extra={"empty.txt": "", "blank.md": "   \n"})
    result = dg.materialize(
        ASSETS,
        selection=["raw_documents", "rejected_documents"],
        partition_key="b1",
        instance=instance,
        resources={"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"], max_reject_fraction=0.1), "model": ModelResource()},
    )
    assert result.success  # a warning, not a failure
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and check.partition == "b1"
    assert check.metadata["rejected"].value == 3 and check.metadata["threshold"].value == 0.1
    assert "3 of 10" in check.description


def test_embedding_checks_run_alone_for_a_chosen_partition(dirs, instance):
    write_corpus(os.path.join(dirs["landing"], "b1"))
    materialize_assets(dirs, instance, "b1")
    version = lake.open_table(dirs["lake"], "embeddings").version()
    # What the UI's "Execute" on the checks launches: the code location's asset job with only the
    # checks selected, the partition as the run's partition tag (the lake comes from EMBEDDING_LAKE).
    job = definitions.defs.resolve_implicit_global_asset_job_def()
    checks_only = job.get_subset(asset_selection=set(), asset_check_selection={spec.key for spec in EMBEDDING_CHECKS})
    result = checks_only.execute_in_process(tags={"dagster/partition": "b1"}, instance=instance)
    assert result.success
    assert not result.get_asset_materialization_events()  # nothing embedded, nothing written
    assert lake.open_table(dirs["lake"], "embeddings").version() == version
    checks = result.get_asset_check_evaluations()
    assert sorted(c.check_name for c in checks) == ["expected_dimension", "finite_values", "one_vector_per_chunk", "single_fingerprint", "unit_norm"]
    assert all(c.passed and c.partition == "b1" for c in checks)
    # The reject check alone, likewise: it reads the row counts, it does not ingest again.
    reject_only = job.get_subset(asset_selection=set(), asset_check_selection={REJECT_FRACTION_CHECK.key})
    version = lake.open_table(dirs["lake"], "raw_documents").version()
    [reject] = reject_only.execute_in_process(tags={"dagster/partition": "b1"}, instance=instance).get_asset_check_evaluations()
    assert reject.passed and reject.partition == "b1" and reject.metadata["rejected"].value == 1 and reject.metadata["read"].value == 7
    assert lake.open_table(dirs["lake"], "raw_documents").version() == version


def test_an_up_to_date_rerun_keeps_the_measured_figures(dirs, instance):
    write_corpus(os.path.join(dirs["landing"], "b1"))
    first = _events(materialize_assets(dirs, instance, "b1"))["embeddings"]
    assert first["tokens_per_s"].value > 0 and "figures_from_run" not in first
    rerun = materialize_assets(dirs, instance, "b1", selection=["embeddings"])
    again = _events(rerun)["embeddings"]
    assert again["skipped"].value is True and again["embedded_texts"].value == 0
    for key in ("tokens_per_s", "padded_fraction", "tokens", "cpu/utilization_pct"):
        assert again[key].value == first[key].value, key
    [first_run] = {r.run_id for r in instance.get_runs()} - {rerun.run_id}
    assert again["figures_from_run"].value == first_run
    # A second no-op still points at the run that measured them.
    third = _events(materialize_assets(dirs, instance, "b1", selection=["embeddings"]))["embeddings"]
    assert third["figures_from_run"].value == first_run and third["tokens_per_s"].value == first["tokens_per_s"].value


def test_a_batch_with_nothing_readable_fails_with_a_description_and_metadata(dirs, instance):
    batch_dir = os.path.join(dirs["landing"], "b1")
    os.makedirs(batch_dir)
    open(os.path.join(batch_dir, "empty.txt"), "w").close()
    with open(os.path.join(batch_dir, "broken.jsonl"), "w") as handle:
        handle.write("{not json\n")
    result = dg.materialize(
        ASSETS,
        selection=["raw_documents", "rejected_documents"],
        partition_key="b1",
        instance=instance,
        resources={"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"]), "model": ModelResource()},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    data = failure.step_failure_data
    assert "every document was rejected" in data.user_failure_data.description
    assert data.user_failure_data.metadata["rejected"].value == 2
    rejections = data.user_failure_data.metadata["rejections"].value
    assert "empty.txt" in rejections and "broken.jsonl" in rejections
    assert data.error.cause is None  # no chained traceback of the library's exception
    # rejected_documents is still recorded for the batch, with its (failing) warn check.
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["rejected_documents"]
