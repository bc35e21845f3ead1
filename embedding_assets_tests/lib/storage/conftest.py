"""Fixtures for the storage tests: a clean cloud environment, and moto's S3 server on 127.0.0.1.

The S3 tests run against moto's S3-compatible server on 127.0.0.1 (a random free port), so the
real delta-rs and pyarrow S3 clients talk HTTP to a real endpoint.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

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


@pytest.fixture(scope="package")
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
