"""The ingest stage against an S3 server whose error bodies echo the access key id: nothing of a
credential reaches the step's logs or its error (issue 13 #12b)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedding_assets.lib import lake, stages
from embedding_assets.lib.lake import tables
from embedding_assets.lib.storage import redacted_error


def _write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


_ECHO_MOTO = """
import logging, os, sys
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # moto checks every request's credentials
logging.disable(logging.CRITICAL)
from moto.iam import access_control
from moto.s3.exceptions import S3ClientError

def echo_key_id(self, reason):
    # AWS's InvalidAccessKeyId body carries the key id (<AWSAccessKeyId>); moto's does not, so this
    # server's does, the way the real one does.
    key_id = self._get_string_between("Credential=", "/", self._headers["Authorization"])
    raise S3ClientError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records. AWSAccessKeyId: " + key_id)

access_control.S3IAMRequest._raise_invalid_access_key = echo_key_id
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture
def echoing_s3(clean_env):
    pytest.importorskip("moto.server")
    child = subprocess.Popen([sys.executable, "-c", _ECHO_MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    if not line.isdigit():
        child.kill()
        pytest.skip(f"moto's S3 server did not start: {child.stderr.read()[-500:]}")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAECHOEDKEYID00001")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "a-very-secret-value-123")
    clean_env.setenv("AWS_REGION", "us-east-1")
    clean_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{line}")
    yield
    child.stdin.close()
    child.wait(timeout=10)


def test_storage_errors_reach_logs_and_the_step_without_credentials(echoing_s3, tmp_path: Path) -> None:
    """Issue 13 #12b: an S3 error body that echoes the access key id (moto, with authentication on,
    answering InvalidAccessKeyId the way AWS does) reaches neither the log nor the step's error;
    the rest of the message still says what failed."""
    landing = tmp_path / "landing"
    _write(landing / "b" / "a.txt", "hello")
    _write(landing / "b" / "bad.txt", "")
    lake_root = "s3://bucket/lake"
    with pytest.raises(Exception) as raw_error:  # what delta-rs says, unredacted: the key id is in it
        lake.replace_partition(lake_root, tables.REJECTED, "b", tables.REJECTED_DOCUMENTS.empty_table())
    assert "AKIAECHOEDKEYID00001" in str(raw_error.value)

    logs: list[str] = []
    with pytest.raises(Exception) as info:
        stages.ingest_batch(str(landing), lake_root, "b", 1 << 20, log=logs.append)
    error = info.value
    shown = [str(error), repr(error)] + logs
    current: BaseException | None = error
    while current is not None:
        shown.append(str(current))
        current = current.__cause__ or current.__context__
    assert all("AKIAECHOEDKEYID00001" not in text and "a-very-secret-value-123" not in text for text in shown), shown
    assert "InvalidAccessKeyId" in str(error) and "***" in str(error)
    assert isinstance(error, OSError)  # the same kind of error as delta-rs raised


def test_redaction_covers_key_ids_account_names_and_service_account_files(clean_env, tmp_path: Path) -> None:
    """Key ids and account names are credentials too; a GCS key file's identifying fields as well."""
    import json

    from embedding_assets.lib.storage import redact

    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "client_email": "robot@project-1234.iam.gserviceaccount.com",
        "client_id": "112233445566778899", "private_key_id": "0123456789abcdef0123", "private_key": "-----BEGIN KEY-----\nMIIsecret\n-----END KEY-----\n",
    }))
    clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    clean_env.setenv("AZURE_STORAGE_ACCOUNT_NAME", "mystorageacct")
    clean_env.setenv("AZURE_CLIENT_ID", "00000000-aaaa-bbbb-cccc-123456789012")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0002")
    message = (
        "403 for robot@project-1234.iam.gserviceaccount.com (client 112233445566778899, key 0123456789abcdef0123) "
        "at https://mystorageacct.blob.core.windows.net/c as 00000000-aaaa-bbbb-cccc-123456789012 "
        "<AWSAccessKeyId>AKIAEXAMPLEKEYID0002</AWSAccessKeyId> in " + str(key_file)
    )
    cleaned = redact(message)
    for value in ("robot@project-1234", "112233445566778899", "0123456789abcdef0123", "mystorageacct", "00000000-aaaa", "AKIAEXAMPLEKEYID0002"):
        assert value not in cleaned, cleaned
    assert str(key_file) in cleaned and "blob.core.windows.net" in cleaned  # paths and hosts stay

    try:
        try:
            raise OSError("upload failed for AKIAEXAMPLEKEYID0002")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        safe = redacted_error(outer)
    assert isinstance(safe, RuntimeError) and safe.__cause__ is None and safe.__context__ is None
    assert "AKIAEXAMPLEKEYID0002" not in str(safe) and "upload failed for ***" in str(safe)
    assert redacted_error(ValueError("nothing secret here")) is None
