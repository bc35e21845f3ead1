"""The real Dagster webserver over a materialized partition: what the UI reads through GraphQL.

A partition is materialized into a temporary DAGSTER_HOME first; then `dagster-webserver` is
started on a free port over workspace.yaml with that instance, and the assertions go through its
GraphQL API: the asset graph and the sensor, row counts and column schemas of every table, check
results with their partition, and the resources' described fields.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import dagster as dg

from embedding_assets_tests.conftest import materialize_assets, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLES = {"raw_documents", "rejected_documents", "chunks", "length_buckets", "embeddings", "document_embeddings"}
ENTRIES = (
    "metadataEntries { label "
    "... on IntMetadataEntry { intValue } "
    "... on TextMetadataEntry { text } "
    "... on TableSchemaMetadataEntry { schema { columns { name type description } } } }"
)
GRAPH = (
    "{ assetNodes { assetKey { path } partitionDefinition { description } } "
    "repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name } "
    "allTopLevelResourceDetails { name configFields { name description } } } } } }"
)
MATERIALIZATION = (
    '{ assetOrError(assetKey: {path: ["%s"]}) { ... on Asset { '
    'assetMaterializations(partitions: ["%s"], limit: 1) { partition ' + ENTRIES + " } } } }"
)
CHECKS = (
    '{ assetNodes(assetKeys: [{path: ["%s"]}]) { assetChecksOrError { ... on AssetChecks { checks { '
    "name blocking canExecuteIndividually partitionDefinition { description } "
    "executionForLatestMaterialization { status partition evaluation { success partition severity } } } } } } }"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _query(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def _entries(node: dict) -> dict:
    return {e["label"]: e for e in node["metadataEntries"]}


def test_webserver_serves_row_counts_schemas_and_check_results(dirs):
    write_corpus(os.path.join(dirs["landing"], "b1"))
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", ["b1"])
        materialize_assets(dirs, instance, "b1")

    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": dirs["home"]}
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            try:
                data = _query(port, GRAPH)
                if data["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1)
        assert data and data["assetNodes"], "the webserver did not serve the asset graph within 120 s"
        keys = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
        assert keys == TABLES
        assert all('"batches"' in node["partitionDefinition"]["description"] for node in data["assetNodes"])
        [repository] = data["repositoriesOrError"]["nodes"]
        assert [s["name"] for s in repository["sensors"]] == ["landing_sensor"]
        # Resources: every field says what it does and which variable sets it.
        resources = {r["name"]: {f["name"]: f["description"] for f in r["configFields"]} for r in repository["allTopLevelResourceDetails"]}
        assert "EMBEDDING_LAKE" in resources["lake"]["lake"] and "EMBEDDING_MODEL" in resources["model"]["model"]
        assert all(description for fields in resources.values() for description in fields.values())

        # Row counts and column schemas of every table, for the partition.
        for table in sorted(TABLES):
            [materialization] = _query(port, MATERIALIZATION % (table, "b1"))["assetOrError"]["assetMaterializations"]
            assert materialization["partition"] == "b1"
            entries = _entries(materialization)
            assert entries["dagster/partition_row_count"]["intValue"] > 0, table
            assert entries["dagster/row_count"]["intValue"] == entries["dagster/partition_row_count"]["intValue"]
            columns = entries["dagster/column_schema"]["schema"]["columns"]
            assert columns[0]["name"] == "batch" and all(c["type"] and c["description"] for c in columns), table
            assert entries["dagster/uri"]["text"].endswith(table)
        [embeddings] = _query(port, MATERIALIZATION % ("embeddings", "b1"))["assetOrError"]["assetMaterializations"]
        vector = [c for c in _entries(embeddings)["dagster/column_schema"]["schema"]["columns"] if c["name"] == "embedding"]
        assert vector[0]["type"] == "float32[384]"

        # Check results, each with its partition; the embeddings checks can be executed alone.
        [node] = _query(port, CHECKS % "embeddings")["assetNodes"]
        checks = node["assetChecksOrError"]["checks"]
        assert len(checks) == 5
        for check in checks:
            assert check["blocking"] and check["canExecuteIndividually"] == "CAN_EXECUTE"
            assert '"batches"' in check["partitionDefinition"]["description"]
            execution = check["executionForLatestMaterialization"]
            assert execution["status"] == "SUCCEEDED" and execution["partition"] == "b1", check
            assert execution["evaluation"]["success"] and execution["evaluation"]["partition"] == "b1"
        [node] = _query(port, CHECKS % "rejected_documents")["assetNodes"]
        [reject] = node["assetChecksOrError"]["checks"]
        assert reject["name"] == "reject_fraction_below_threshold" and not reject["blocking"]
        assert reject["executionForLatestMaterialization"]["evaluation"]["severity"] == "WARN"
        assert reject["executionForLatestMaterialization"]["partition"] == "b1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
