"""The Dagster UI's server loads the code location from workspace.yaml and serves the assets."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = (
    "{ assetNodes { assetKey { path } partitionDefinition { description } } "
    "repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name } } } } }"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_webserver_serves_the_asset_graph(dirs):
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
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": QUERY}).encode(), headers={"Content-Type": "application/json"}
                )
                data = json.loads(urllib.request.urlopen(request, timeout=10).read())["data"]
                if data["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1)
        assert data and data["assetNodes"], "the webserver did not serve the asset graph within 120 s"
        keys = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
        assert keys == {"raw_documents", "rejected_documents", "chunks", "length_buckets", "embeddings", "document_embeddings"}
        assert all('"batches"' in node["partitionDefinition"]["description"] for node in data["assetNodes"])
        [repository] = data["repositoriesOrError"]["nodes"]
        assert [s["name"] for s in repository["sensors"]] == ["landing_sensor"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
