"""Credentials: environment -> delta-rs storage options, redaction, and Delta tables on (moto's) S3.

The S3 tests write, read and commit concurrently through the real delta-rs client against moto's
S3-compatible server (see conftest.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from embedding_assets.lib.storage import delta_storage_options, redact


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
