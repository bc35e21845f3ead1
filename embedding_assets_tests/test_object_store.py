"""Object storage: credentials -> delta-rs storage options, redaction, landing listing and download.

The S3 tests run against moto's S3-compatible server on 127.0.0.1 (a random free port), so the
real delta-rs and pyarrow S3 clients talk HTTP to a real endpoint: writes, reads, concurrent
commits (conditional puts), listing and downloading a batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from embedding_assets.lib import object_store
from embedding_assets.lib.object_store import BatchInfo, delta_storage_options, download_batch, list_batches, redact

_ALL_CLOUD_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP", "AWS_S3_ALLOW_UNSAFE_RENAME",
    "AWS_CONDITIONAL_PUT", "AWS_COPY_IF_NOT_EXISTS", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "AWS_S3_LOCKING_PROVIDER",
    "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN", "AZURE_STORAGE_CLIENT_ID", "AZURE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET", "AZURE_STORAGE_TENANT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_STORAGE_USE_EMULATOR", "AZURE_STORAGE_ENDPOINT", "AZURE_ALLOW_HTTP",
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in _ALL_CLOUD_VARS:
        monkeypatch.delenv(name, raising=False)
    # no ~/.aws of the machine running the tests
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


# --- storage options -------------------------------------------------------------------------


def test_s3_options_map_only_the_variables_that_are_set(clean_env):
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE123")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/with+chars=")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert delta_storage_options("s3://bucket/lake") == {
        "aws_access_key_id": "AKIAEXAMPLE123",
        "aws_secret_access_key": "s3cr3t/with+chars=",
        "aws_region": "eu-west-1",
    }
    clean_env.setenv("AWS_REGION", "us-west-2")  # AWS_REGION wins over AWS_DEFAULT_REGION
    clean_env.setenv("AWS_SESSION_TOKEN", "session-token-value")
    options = delta_storage_options("s3a://bucket/lake")
    assert options["aws_region"] == "us-west-2"
    assert options["aws_session_token"] == "session-token-value"
    # concurrent writers: never opted out of safe commits behind the user's back
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in options and "aws_allow_http" not in options


def test_s3_endpoint_http_allows_http_and_passthroughs(clean_env):
    clean_env.setenv("AWS_ENDPOINT_URL", "http://minio.minio.svc:9000")
    options = delta_storage_options("s3://bucket/lake")
    assert options == {"aws_endpoint_url": "http://minio.minio.svc:9000", "aws_allow_http": "true"}
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")  # the S3-specific one wins
    clean_env.setenv("AWS_CONDITIONAL_PUT", "etag")
    clean_env.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    options = delta_storage_options("s3://bucket/lake")
    assert options == {
        "aws_endpoint_url": "https://s3.example.com",
        "aws_conditional_put": "etag",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


def test_dynamodb_locking_provider_is_refused_with_an_explanation(clean_env):
    clean_env.setenv("AWS_S3_LOCKING_PROVIDER", "dynamodb")
    with pytest.raises(ValueError, match="conditional puts"):
        delta_storage_options("s3://bucket/lake")


def test_gcs_and_azure_options(clean_env):
    assert delta_storage_options("gs://bucket/lake") == {}
    clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/var/secrets/google/key.json")
    clean_env.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", '{"type": "service_account"}')
    assert delta_storage_options("gs://bucket/lake") == {
        "google_application_credentials": "/var/secrets/google/key.json",
        "google_service_account_key": '{"type": "service_account"}',
    }
    clean_env.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    clean_env.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024&sig=abc")
    clean_env.setenv("AZURE_CLIENT_ID", "client-id")
    clean_env.setenv("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:10000/acct")
    for root in ("az://container/lake", "abfss://container@acct.dfs.core.windows.net/lake"):
        assert delta_storage_options(root) == {
            "azure_storage_account_name": "acct",
            "azure_storage_sas_token": "sv=2024&sig=abc",
            "azure_storage_client_id": "client-id",
            "azure_storage_endpoint": "http://127.0.0.1:10000/acct",
            "azure_allow_http": "true",
        }
    # a cloud's variables never leak into another cloud's options
    assert "aws_access_key_id" not in delta_storage_options("az://c/x")
    assert delta_storage_options("/tmp/lake") == {} and delta_storage_options("file:///tmp/lake") == {}


def test_redact_removes_every_credential_value(clean_env):
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    clean_env.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=2024-01-01&sig=Zm9vYmFy%2Bc2lnbmF0dXJl")
    clean_env.setenv("DAGSTER_PG_PASSWORD", "test")
    clean_env.setenv("EMBEDDING_TOKEN_BUDGET", "16384")  # not a credential
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    message = (
        f"signature mismatch for key AKIAIOSFODNN7EXAMPLE secret={secret} "
        f"url=https://x/?k={secret.replace('/', '%2F').replace('+', '%2B')} "
        "sas sv=2024-01-01&sig=Zm9vYmFy%2Bc2lnbmF0dXJl password 'test' in the latest tests, budget 16384"
    )
    cleaned = redact(message)
    for value in ("AKIAIOSFODNN7EXAMPLE", secret, "%2BbPxRfiCYEXAMPLEKEY", "sig=Zm9vYmFy", "'test'"):
        assert value not in cleaned
    assert "latest tests" in cleaned  # a short secret only where it stands alone
    assert "budget 16384" in cleaned
    assert redact("") == ""


# --- local landing areas ---------------------------------------------------------------------


def _touch(path, content=b"x", mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_list_batches_local(tmp_path):
    landing = tmp_path / "landing"
    _touch(landing / "b1" / "a.txt", mtime=1_000)
    _touch(landing / "b1" / "sub" / "b.md", mtime=3_000)
    _touch(landing / "b1" / "_READY", b"", mtime=2_000)
    _touch(landing / "b2" / "x.jsonl", mtime=5_000)
    _touch(landing / "b2" / ".upload.tmp", mtime=9_000)  # in-flight upload: not a file to read, but fresh
    _touch(landing / "b2" / "_skip" / "y.txt", mtime=4_000)
    (landing / "empty").mkdir()
    _touch(landing / "_staging" / "z.txt")
    _touch(landing / ".hidden" / "z.txt")
    _touch(landing / "loose.txt")  # a file at the top is not a batch
    batches = list_batches(str(landing))
    assert set(batches) == {"b1", "b2", "empty"}
    assert batches["b1"] == BatchInfo("b1", 3_000.0, True, 2)
    assert batches["b2"] == BatchInfo("b2", 9_000.0, False, 1)
    assert batches["empty"].n_files == 0 and not batches["empty"].ready_marker
    assert set(list_batches(f"file://{landing}", skip={"b1"})) == {"b2", "empty"}
    assert list_batches(str(tmp_path / "missing")) == {}
    with pytest.raises(ValueError, match="object-storage"):
        download_batch(str(landing), "b1", str(tmp_path / "dest"), 100)


# --- S3 (moto server) ------------------------------------------------------------------------


_MOTO_CHILD = """
import logging, sys
logging.disable(logging.CRITICAL)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serve until the test process closes our stdin (or dies)
server.stop()
"""


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (a free port it picks), in a child process.

    Not in a thread of the test process: some delta-rs calls (DeltaTable.is_deltatable) block
    while holding the GIL, so a server thread in this process could not answer them.
    """
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"moto[server] is not installed ({exc}); `pip install 'moto[server]'` to run the S3 tests")
    child = subprocess.Popen(
        [sys.executable, "-c", _MOTO_CHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = child.stdout.readline().strip()
    if not line.isdigit():  # pragma: no cover
        child.kill()
        pytest.skip(f"moto's S3 server did not start: {child.stderr.read()[-500:]}")
    port = int(line)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline:  # pragma: no cover
                child.kill()
                pytest.skip("moto's S3 server did not accept connections within 10 s")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    child.stdin.close()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        child.kill()


@pytest.fixture
def s3(s3_endpoint, clean_env):
    """A fresh bucket on the moto server, with the environment pointing at it."""
    import boto3

    clean_env.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    clean_env.setenv("AWS_REGION", "us-east-1")
    clean_env.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing-key-id", aws_secret_access_key="testing-secret-key",
    )
    bucket = f"bucket-{time.time_ns()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_delta_table_round_trip_on_s3(s3):
    from deltalake import DeltaTable, write_deltalake

    _client, bucket = s3
    uri = f"s3://{bucket}/lake/x"
    options = delta_storage_options(uri)
    assert options["aws_allow_http"] == "true" and options["aws_endpoint_url"].startswith("http://127.0.0.1:")
    data = pa.table({"batch": ["a", "a", "b"], "x": [1, 2, 3]})
    write_deltalake(uri, data, partition_by=["batch"], storage_options=options)
    write_deltalake(uri, pa.table({"batch": ["a"], "x": [9]}), mode="overwrite", predicate="batch = 'a'",
                    partition_by=["batch"], storage_options=options)
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    rows = sorted(zip(*table.to_pyarrow_table().select(["batch", "x"]).to_pydict().values(), strict=True))
    assert rows == [("a", 9), ("b", 3)]


def test_lake_helpers_use_the_storage_options(s3):
    """The real lake module, pointed at s3://, goes through delta_storage_options."""
    from embedding_assets.lib import lake

    _client, bucket = s3
    root = f"s3://{bucket}/lake"
    lake.replace_partition(root, "t", "b1", pa.table({"batch": ["b1"], "v": [1]}))
    lake.replace_partition(root, "t", "b2", pa.table({"batch": ["b2"], "v": [2]}))
    lake.replace_partition(root, "t", "b1", pa.table({"batch": ["b1", "b1"], "v": [3, 4]}))
    assert lake.partitions(root, "t") == ["b1", "b2"]
    assert sorted(lake.read_partition(root, "t", "b1").column("v").to_pylist()) == [3, 4]


def test_concurrent_commits_on_s3_lose_nothing(s3):
    """Several writers committing to one table at once: conditional puts make every commit land."""
    from deltalake import DeltaTable, write_deltalake

    _client, bucket = s3
    uri = f"s3://{bucket}/lake/concurrent"
    options = delta_storage_options(uri)
    write_deltalake(uri, pa.table({"batch": ["seed"], "x": [0]}), partition_by=["batch"], storage_options=options)
    start = threading.Barrier(6)

    def append(i: int) -> None:
        start.wait()
        write_deltalake(uri, pa.table({"batch": [f"b{i}"], "x": [i]}), mode="append",
                        partition_by=["batch"], storage_options=options)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(append, range(1, 7)))
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 6  # six distinct commits after the first
    assert sorted(table.to_pyarrow_table().column("x").to_pylist()) == [0, 1, 2, 3, 4, 5, 6]


def _put(client, bucket, key, body=b"hello"):
    client.put_object(Bucket=bucket, Key=key, Body=body)


def test_list_batches_on_s3(s3):
    client, bucket = s3
    before = time.time() - 5
    _put(client, bucket, "landing/b1/a.txt")
    _put(client, bucket, "landing/b1/sub/c.md")
    _put(client, bucket, "landing/b1/_READY", b"")
    _put(client, bucket, "landing/b2/x.jsonl", b'{"id": "1", "text": "hi"}\n')
    _put(client, bucket, "landing/b2/.partial-upload")
    _put(client, bucket, "landing/_staging/y.txt")
    _put(client, bucket, "landing/top-level-file.txt")
    _put(client, bucket, "elsewhere/b9/z.txt")
    batches = list_batches(f"s3://{bucket}/landing/")
    assert set(batches) == {"b1", "b2"}
    assert batches["b1"].ready_marker and batches["b1"].n_files == 2
    assert not batches["b2"].ready_marker and batches["b2"].n_files == 1
    assert all(before <= b.newest_mtime <= time.time() + 5 for b in batches.values())
    assert set(list_batches(f"s3://{bucket}/landing", skip={"b2"})) == {"b1"}
    assert list_batches(f"s3://{bucket}/nothing-here") == {}
    assert set(list_batches(f"s3://{bucket}")) == {"landing", "elsewhere"}  # the bucket root works too


def test_download_batch_from_s3_then_read_it(s3, tmp_path):
    from embedding_assets.lib.ingest import Document, read_batch

    client, bucket = s3
    _put(client, bucket, "landing/b1/a.txt", b"first document")
    _put(client, bucket, "landing/b1/nested/b.md", b"# second\n\ndocument")
    _put(client, bucket, "landing/b1/big.txt", b"y" * 500)
    _put(client, bucket, "landing/b1/_READY", b"")
    _put(client, bucket, "landing/b1/.hidden", b"never copied")
    _put(client, bucket, "landing/b10/other.txt", b"another batch with a common prefix")
    dest = tmp_path / "b1"
    skipped = download_batch(f"s3://{bucket}/landing", "b1", str(dest), max_file_bytes=100)
    assert skipped == ["big.txt"]
    reasons = object_store.download_batch_with_reasons(f"s3://{bucket}/landing", "b1", str(tmp_path / "again"), 100)
    assert reasons == [("big.txt", "file is larger than the 100-byte limit (500 bytes)")]
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["a.txt", "nested/b.md"]  # no marker, no hidden file, no other batch, no temp file
    docs = [item for item in read_batch(str(dest)) if isinstance(item, Document)]
    assert sorted(d.source for d in docs) == ["a.txt", "nested/b.md"]
    with pytest.raises(ValueError, match="one folder name"):
        download_batch(f"s3://{bucket}/landing", "../b1", str(tmp_path / "x"), 100)


def test_errors_carry_no_credentials(s3, clean_env):
    """A failing call's message, passed through redact, shows neither the key id nor the secret."""
    from deltalake import DeltaTable

    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "a-very-secret-value-123")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTESTKEY0001")
    _client, bucket = s3
    uri = f"s3://{bucket}/lake/missing-table"
    with pytest.raises(Exception) as info:
        DeltaTable(uri, storage_options=delta_storage_options(uri))
    message = redact(f"{info.value} {delta_storage_options(uri)}")
    assert "a-very-secret-value-123" not in message and "AKIAUNITTESTKEY0001" not in message


def test_sensor_and_whole_chain_on_object_storage(s3, clean_env, tmp_path):
    """Landing and lake both on (moto's) S3: the sensor finds the batch, the chain writes Delta there."""
    import dagster as dg

    from embedding_assets.defs.assets import ASSETS
    from embedding_assets.defs.resources import LakeResource, ModelResource
    from embedding_assets.defs.sensors import landing_sensor
    from embedding_assets.lib import lake as delta

    client, bucket = s3
    landing, lake_root = f"s3://{bucket}/landing", f"s3://{bucket}/lake"
    _put(client, bucket, "landing/b1/cats.txt", b"Cats are small domesticated felines that purr.")
    _put(client, bucket, "landing/b1/notes.md", b"# Notes\n\nDelta tables keep every version.")
    _put(client, bucket, "landing/b1/records.jsonl", b'{"id": "r1", "text": "A record about rivers."}\n{broken\n')
    _put(client, bucket, "landing/b1/_READY", b"")
    clean_env.setenv("EMBEDDING_LANDING", landing)
    clean_env.setenv("EMBEDDING_SETTLE_SECONDS", "3600")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = landing_sensor(dg.build_sensor_context(instance=instance))
        assert [r.partition_key for r in result.run_requests] == ["b1"]
        instance.add_dynamic_partitions("batches", ["b1"])
        materialized = dg.materialize(
            ASSETS, partition_key="b1", instance=instance,
            resources={"lake": LakeResource(landing=landing, lake=lake_root), "model": ModelResource()},
        )
        assert materialized.success
    raw = delta.read_partition(lake_root, "raw_documents", "b1")
    assert sorted(raw.column("doc_id").to_pylist()) == ["cats.txt", "notes.md", "records.jsonl#r1"]
    assert delta.read_partition(lake_root, "rejected_documents", "b1").column("record").to_pylist() == ["line 2"]
    embedded = delta.read_partition(lake_root, "embeddings", "b1")
    chunks = delta.read_partition(lake_root, "chunks", "b1")
    assert sorted(embedded.column("chunk_id").to_pylist()) == sorted(chunks.column("chunk_id").to_pylist())
