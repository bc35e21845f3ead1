"""Object storage (s3://, gs://, az://) for the lake and the landing area: credentials and listing.

No Dagster here: only pyarrow and the standard library.

- `delta_storage_options(root)`: the delta-rs `storage_options` for a lake root, built from the
  standard environment variables of each cloud (only those that are set).
- `list_batches(landing_root)`: the batches (immediate sub-folders / sub-prefixes) of a landing
  area, local or in object storage, with the newest modification time of anything in them, whether
  they hold a `_READY` marker, and how many files the reader will consider.
- `download_batch(...)`: copies one object-storage batch to a local folder, so that ingest reads it
  with the same local reader as a local batch.
- `redact(text)`: removes every credential value of the environment from a message.

Concurrent writers on S3: delta-rs (1.x) commits with a conditional put (`If-None-Match: *`), which
AWS S3, MinIO, Cloudflare R2 and other current S3-compatible stores honour, so runs writing
different partitions of one table at once never lose a commit and no DynamoDB lock is needed (delta-rs
1.x no longer supports one: `AWS_S3_LOCKING_PROVIDER` is refused here with an explanation). For a
store that lacks it, `AWS_CONDITIONAL_PUT=etag` or `AWS_COPY_IF_NOT_EXISTS=...` are passed through;
`AWS_S3_ALLOW_UNSAFE_RENAME=true` is passed through only when set, and is safe only with one writer.

Credential values are never logged or put in exception messages by this module.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import unicodedata
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

READY_MARKER = "_READY"
_COPY_CHUNK = 1 << 20
_GZIP_MARGIN = 4096  # a .gz of incompressible text is a little larger than the text itself

S3_SCHEMES = frozenset({"s3", "s3a"})
GCS_SCHEMES = frozenset({"gs", "gcs"})
AZURE_SCHEMES = frozenset({"az", "azure", "abfs", "abfss"})
OBJECT_STORE_SCHEMES = S3_SCHEMES | GCS_SCHEMES | AZURE_SCHEMES

# environment variable(s), first set wins -> delta-rs storage option
_S3_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("AWS_ACCESS_KEY_ID",), "aws_access_key_id"),
    (("AWS_SECRET_ACCESS_KEY",), "aws_secret_access_key"),
    (("AWS_SESSION_TOKEN",), "aws_session_token"),
    (("AWS_REGION", "AWS_DEFAULT_REGION"), "aws_region"),
    (("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "aws_endpoint_url"),
    (("AWS_VIRTUAL_HOSTED_STYLE_REQUEST",), "aws_virtual_hosted_style_request"),
    (("AWS_CONDITIONAL_PUT",), "aws_conditional_put"),
    (("AWS_COPY_IF_NOT_EXISTS",), "aws_copy_if_not_exists"),
    (("AWS_S3_ALLOW_UNSAFE_RENAME",), "AWS_S3_ALLOW_UNSAFE_RENAME"),
    (("AWS_ALLOW_HTTP",), "aws_allow_http"),
)
_GCS_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GOOGLE_APPLICATION_CREDENTIALS",), "google_application_credentials"),
    (("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH"), "google_service_account"),
    (("GOOGLE_SERVICE_ACCOUNT_KEY",), "google_service_account_key"),
)
_AZURE_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("AZURE_STORAGE_ACCOUNT_NAME",), "azure_storage_account_name"),
    (("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY"), "azure_storage_account_key"),
    (("AZURE_STORAGE_SAS_TOKEN",), "azure_storage_sas_token"),
    (("AZURE_STORAGE_TOKEN",), "azure_storage_token"),
    (("AZURE_STORAGE_CLIENT_ID", "AZURE_CLIENT_ID"), "azure_storage_client_id"),
    (("AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET"), "azure_storage_client_secret"),
    (("AZURE_STORAGE_TENANT_ID", "AZURE_TENANT_ID"), "azure_storage_tenant_id"),
    (("AZURE_FEDERATED_TOKEN_FILE",), "azure_federated_token_file"),
    (("AZURE_STORAGE_USE_EMULATOR",), "azure_storage_use_emulator"),
    (("AZURE_STORAGE_ENDPOINT",), "azure_storage_endpoint"),
    (("AZURE_ALLOW_HTTP",), "azure_allow_http"),
)

# Variables whose values are secrets (redacted from messages), beyond any variable whose name
# looks like a secret's (_SECRET_NAME) and is not a path/URL (_NOT_SECRET_NAME).
CREDENTIAL_VARS = frozenset({
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_CONNECTION_STRING",
    "DAGSTER_PG_PASSWORD",
})
_SECRET_NAME = re.compile(r"SECRET|(PASSWORD|PASSWD|TOKEN|_KEY|_KEY_ID|CONNECTION_STRING|_SAS)$")
_NOT_SECRET_NAME = re.compile(r"(_FILE|_PATH|_URL|_URI|_ENDPOINT|_REGION|_DIR)$|^GOOGLE_APPLICATION_CREDENTIALS$")
_MIN_REDACTED_LENGTH = 4
_WHOLE_WORD_BELOW = 12  # shorter secrets are only redacted where they stand alone, not inside words


@dataclass(frozen=True)
class BatchInfo:
    """One batch of a landing area."""

    name: str
    newest_mtime: float  # epoch seconds; the newest file (any file, hidden ones too) under the batch
    ready_marker: bool  # a `_READY` file directly in the batch
    n_files: int  # files the reader considers (names starting with '.' or '_' excluded)


# --- URIs ------------------------------------------------------------------------------------


def scheme_of(uri: str) -> str:
    """The URI scheme in lower case; '' for a plain local path."""
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[0].lower()


def is_object_store(uri: str) -> bool:
    return scheme_of(uri) in OBJECT_STORE_SCHEMES


def _local_path(uri: str) -> str:
    if scheme_of(uri) == "file":
        return urllib.parse.unquote(urllib.parse.urlparse(uri).path)
    return os.path.abspath(os.path.expanduser(uri))


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip():
            return value.strip()
    return None


def _collect(table: tuple[tuple[tuple[str, ...], str], ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for names, key in table:
        value = _env(*names)
        if value is not None:
            options[key] = value
    return options


def _is_http(url: str | None) -> bool:
    return bool(url) and url.lower().startswith("http://")


# --- Delta storage options -------------------------------------------------------------------


def delta_storage_options(root: str) -> dict[str, str]:
    """delta-rs `storage_options` for a lake root, from the environment (only variables that are set).

    s3:// / s3a://  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
                    AWS_DEFAULT_REGION), AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL; an http:// endpoint
                    also sets aws_allow_http), AWS_VIRTUAL_HOSTED_STYLE_REQUEST, AWS_CONDITIONAL_PUT,
                    AWS_COPY_IF_NOT_EXISTS, AWS_S3_ALLOW_UNSAFE_RENAME, AWS_ALLOW_HTTP. Without keys,
                    delta-rs uses the AWS default chain (IRSA / EKS pod identity / instance profile).
    gs://           GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_SERVICE_ACCOUNT (or _PATH), GOOGLE_SERVICE_ACCOUNT_KEY.
    az:// abfs[s]:// AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN,
                    AZURE_STORAGE_TOKEN, AZURE_STORAGE_CLIENT_ID / _CLIENT_SECRET / _TENANT_ID (or
                    AZURE_CLIENT_ID, ...), AZURE_FEDERATED_TOKEN_FILE, AZURE_STORAGE_USE_EMULATOR,
                    AZURE_STORAGE_ENDPOINT (http:// also sets azure_allow_http).
    Anything else (a local folder, file://): {}.
    """
    scheme = scheme_of(root)
    if scheme in S3_SCHEMES:
        if _env("AWS_S3_LOCKING_PROVIDER"):
            raise ValueError(
                "AWS_S3_LOCKING_PROVIDER is set, but the DynamoDB locking provider is gone from delta-rs 1.x: "
                "commits to S3 use conditional puts (If-None-Match), which AWS S3 and current S3-compatible "
                "stores support. Unset AWS_S3_LOCKING_PROVIDER (and DELTA_DYNAMO_TABLE_NAME); for a store "
                "without conditional puts set AWS_CONDITIONAL_PUT=etag or AWS_COPY_IF_NOT_EXISTS."
            )
        options = _collect(_S3_OPTIONS)
        if _is_http(options.get("aws_endpoint_url")):
            options.setdefault("aws_allow_http", "true")
        return options
    if scheme in GCS_SCHEMES:
        return _collect(_GCS_OPTIONS)
    if scheme in AZURE_SCHEMES:
        options = _collect(_AZURE_OPTIONS)
        if _is_http(options.get("azure_storage_endpoint")):
            options.setdefault("azure_allow_http", "true")
        return options
    return {}


# --- redaction -------------------------------------------------------------------------------


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    if upper in CREDENTIAL_VARS:
        return True
    return not _NOT_SECRET_NAME.search(upper) and bool(_SECRET_NAME.search(upper))


def _secret_values() -> list[str]:
    values: set[str] = set()
    for name, value in os.environ.items():
        if not value or not _is_secret_name(name):
            continue
        candidates = {value, value.strip(), value.strip().lstrip("?")}
        if value.lstrip().startswith("{"):
            # a service-account key: its private key and key id can surface on their own
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                for field in ("private_key", "private_key_id", "client_secret", "refresh_token"):
                    if isinstance(parsed.get(field), str):
                        candidates.add(parsed[field])
                        candidates.add(parsed[field].replace("\n", "\\n"))
        for candidate in candidates:
            if len(candidate) >= _MIN_REDACTED_LENGTH:
                values.add(candidate)
                # as it would appear in a URL (SAS tokens, keys with + / =)
                values.add(urllib.parse.quote(candidate, safe=""))
                values.add(urllib.parse.quote_plus(candidate, safe=""))
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every credential value of the current environment replaced by '***'."""
    if not text:
        return text
    for value in _secret_values():
        if value not in text:
            continue
        if len(value) >= _WHOLE_WORD_BELOW:
            text = text.replace(value, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", "***", text)
    return text


# --- filesystems for the landing area --------------------------------------------------------


def _split_bucket_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b')."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError("an object-storage URI needs a bucket or container after the scheme, e.g. s3://bucket/landing")
    return bucket, key.strip("/")


def _s3_filesystem(bucket: str):
    from pyarrow import fs

    kwargs: dict[str, Any] = {}
    key_id, secret = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        kwargs.update(access_key=key_id, secret_key=secret)
        token = _env("AWS_SESSION_TOKEN")
        if token:
            kwargs["session_token"] = token
    elif key_id or secret:
        raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use the AWS default credential chain)")
    region = _env("AWS_REGION", "AWS_DEFAULT_REGION")
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme or "https"
    elif not region:
        try:
            region = fs.resolve_s3_region(bucket)
        except Exception:  # noqa: BLE001 - the SDK default applies
            region = None
    if region:
        kwargs["region"] = region
    if (_env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST") or "").lower() == "true":
        kwargs["force_virtual_addressing"] = True
    return fs.S3FileSystem(**kwargs)


def _azure_filesystem(uri: str) -> tuple[Any, str]:
    from pyarrow import fs

    parsed = urllib.parse.urlparse(uri)
    account = _env("AZURE_STORAGE_ACCOUNT_NAME")
    if "@" in parsed.netloc:  # abfss://container@account.dfs.core.windows.net/path
        container, host = parsed.netloc.split("@", 1)
        account = host.split(".", 1)[0]
    else:  # az://container/path
        container = parsed.netloc
    if not account:
        raise ValueError("set AZURE_STORAGE_ACCOUNT_NAME (or use abfss://container@account.dfs.core.windows.net/...)")
    if not container:
        raise ValueError("an Azure URI needs a container: az://container/path")
    kwargs: dict[str, Any] = {}
    key, sas = _env("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY"), _env("AZURE_STORAGE_SAS_TOKEN")
    client_id = _env("AZURE_STORAGE_CLIENT_ID", "AZURE_CLIENT_ID")
    client_secret = _env("AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET")
    tenant_id = _env("AZURE_STORAGE_TENANT_ID", "AZURE_TENANT_ID")
    if key:
        kwargs["account_key"] = key
    elif sas:
        kwargs["sas_token"] = sas.lstrip("?")
    elif client_id and client_secret and tenant_id:
        kwargs.update(client_id=client_id, client_secret=client_secret, tenant_id=tenant_id)
    elif client_id:
        kwargs["client_id"] = client_id  # a user-assigned managed identity / workload identity
    endpoint = _env("AZURE_STORAGE_ENDPOINT")
    if endpoint:
        ep = urllib.parse.urlparse(endpoint)
        kwargs.update(blob_storage_authority=ep.netloc, blob_storage_scheme=ep.scheme or "https",
                      dfs_storage_authority=ep.netloc, dfs_storage_scheme=ep.scheme or "https")
    filesystem = fs.AzureFileSystem(account, **kwargs)
    return filesystem, f"{container}/{parsed.path.strip('/')}".rstrip("/")


def _filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, base path in it) for an object-storage URI."""
    scheme = scheme_of(uri)
    if scheme in S3_SCHEMES:
        bucket, key = _split_bucket_uri(uri)
        return _s3_filesystem(bucket), f"{bucket}/{key}".rstrip("/")
    if scheme in GCS_SCHEMES:
        from pyarrow import fs

        bucket, key = _split_bucket_uri(uri)
        # Credentials: GOOGLE_APPLICATION_CREDENTIALS or the workload's identity (GKE metadata server).
        return fs.GcsFileSystem(), f"{bucket}/{key}".rstrip("/")
    if scheme in AZURE_SCHEMES:
        return _azure_filesystem(uri)
    raise ValueError(f"not an object-storage URI (expected one of {sorted(OBJECT_STORE_SCHEMES)}): {scheme or 'local path'}")


def _hidden(part: str) -> bool:
    return part.startswith((".", "_"))


def _epoch(mtime: Any) -> float | None:
    if mtime is None:
        return None
    if hasattr(mtime, "timestamp"):
        return float(mtime.timestamp())
    return float(mtime)


# --- list_batches ----------------------------------------------------------------------------


def list_batches(landing_root: str, *, skip: Collection[str] = ()) -> dict[str, BatchInfo]:
    """The batches of a landing area: immediate sub-folders (local) or sub-prefixes (object storage).

    Names starting with '.' or '_' are not batches. A batch named in `skip` (e.g. one already
    ingested) is not walked, which keeps a sensor tick cheap on a large landing area. A missing
    landing root has no batches.
    """
    skip = frozenset(skip)
    if is_object_store(landing_root):
        return _list_remote_batches(landing_root, skip)
    if "://" in landing_root and scheme_of(landing_root) != "file":
        raise ValueError(f"unsupported landing URI scheme {scheme_of(landing_root)!r}: use a local folder, s3://, gs:// or az://")
    return _list_local_batches(_local_path(landing_root), skip)


def _list_local_batches(root: str, skip: frozenset[str]) -> dict[str, BatchInfo]:
    try:
        with os.scandir(root) as it:
            children = [c for c in it if not _hidden(c.name) and c.name not in skip and c.is_dir()]
    except FileNotFoundError:
        return {}
    batches: dict[str, BatchInfo] = {}
    for child in children:
        newest, n_files = None, 0
        for dirpath, dirnames, filenames in os.walk(child.path, followlinks=False):
            rel_parts = os.path.relpath(dirpath, child.path).split(os.sep)
            inside_hidden = any(_hidden(p) for p in rel_parts if p != ".")
            for name in filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
                if not inside_hidden and not _hidden(name):
                    n_files += 1
            # links to folders are files to the reader (it rejects them or reads them in place)
            for name in dirnames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
        if newest is None:
            try:
                newest = os.stat(child.path).st_mtime
            except OSError:
                newest = 0.0
        ready = os.path.isfile(os.path.join(child.path, READY_MARKER))
        batches[child.name] = BatchInfo(child.name, float(newest), ready, n_files)
    return batches


def _list_remote_batches(landing_root: str, skip: frozenset[str]) -> dict[str, BatchInfo]:
    from pyarrow import fs

    filesystem, base = _filesystem(landing_root)
    top = filesystem.get_file_info(fs.FileSelector(base, recursive=False, allow_not_found=True))
    batches: dict[str, BatchInfo] = {}
    for entry in top:
        name = entry.path.rstrip("/").rsplit("/", 1)[-1]
        if entry.type != fs.FileType.Directory or _hidden(name) or name in skip or not name:
            continue
        newest, n_files, ready = None, 0, False
        prefix = entry.path.rstrip("/")
        for info in filesystem.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True)):
            if info.type != fs.FileType.File:
                continue
            rel = info.path[len(prefix) + 1 :]
            mtime = _epoch(info.mtime)
            if mtime is not None:
                newest = mtime if newest is None else max(newest, mtime)
            parts = rel.split("/")
            if rel == READY_MARKER:
                ready = True
            if not any(_hidden(p) for p in parts):
                n_files += 1
        batches[name] = BatchInfo(name, float(newest if newest is not None else _epoch(entry.mtime) or 0.0), ready, n_files)
    return batches


# --- download_batch --------------------------------------------------------------------------


def _check_batch_name(batch: str) -> None:
    if not batch or batch in (".", "..") or "/" in batch or "\\" in batch or "\x00" in batch:
        raise ValueError(f"batch must be one folder name, got {batch!r}")


def _unsafe_reason(parts: list[str]) -> str | None:
    for part in parts:
        if part in ("", ".", ".."):
            return "object name has an empty, '.' or '..' path segment and cannot be stored as a local file; rename it"
        if "\x00" in part:
            return "object name contains a NUL character; rename it"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return "a path segment of the object name is longer than 255 bytes; rename it"
    return None


def download_batch_with_reasons(landing_root: str, batch: str, dest_dir: str, max_file_bytes: int) -> list[tuple[str, str]]:
    """Copies an object-storage batch into `dest_dir`; returns (relative path, reason) for each file not copied.

    Files the reader ignores (any path segment starting with '.' or '_', such as the `_READY`
    marker) are neither copied nor reported. A file bigger than `max_file_bytes` (for .gz files, a
    little more: the cap applies after decompression) is skipped, as is a name that cannot be a
    local file. Relative paths are '/'-separated and NFC-normalised, as the reader reports them.
    """
    from pyarrow import fs

    if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be a positive integer, got {max_file_bytes!r}")
    _check_batch_name(batch)
    if not is_object_store(landing_root):
        raise ValueError("download_batch is for object-storage landing areas; a local batch is read in place")
    filesystem, base = _filesystem(landing_root)
    prefix = f"{base}/{batch}" if base else batch
    dest_root = os.path.abspath(dest_dir)
    os.makedirs(dest_root, exist_ok=True)
    skipped: list[tuple[str, str]] = []
    infos = filesystem.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != fs.FileType.File:
            continue
        rel = info.path[len(prefix) + 1 :]
        parts = rel.split("/")
        if any(_hidden(p) for p in parts if p):
            continue
        shown = unicodedata.normalize("NFC", rel)
        reason = _unsafe_reason(parts)
        if reason:
            skipped.append((shown, reason))
            continue
        cap = max_file_bytes + (max_file_bytes // 100 + _GZIP_MARGIN if rel.lower().endswith(".gz") else 0)
        if info.size is not None and info.size > cap:
            skipped.append((shown, f"file is larger than the {max_file_bytes}-byte limit ({info.size} bytes)"))
            continue
        target = os.path.join(dest_root, *parts)
        if os.path.commonpath([dest_root, os.path.abspath(target)]) != dest_root:  # defensive; parts are checked
            skipped.append((shown, "object name points outside the batch; rename it"))
            continue
        try:
            written = _copy_capped(filesystem, info.path, target, cap)
        except OSError as exc:
            skipped.append((shown, f"could not copy the file: {type(exc).__name__}: {redact(str(exc))}"))
            continue
        if written is None:
            skipped.append((shown, f"file is larger than the {max_file_bytes}-byte limit"))
    return skipped


def download_batch(landing_root: str, batch: str, dest_dir: str, max_file_bytes: int) -> list[str]:
    """Copies an object-storage batch into `dest_dir`; returns the relative paths of files not copied.

    Almost always they were over `max_file_bytes`; `download_batch_with_reasons` says why for each.
    """
    return [name for name, _reason in download_batch_with_reasons(landing_root, batch, dest_dir, max_file_bytes)]


def _copy_capped(filesystem: Any, path: str, target: str, cap: int) -> int | None:
    """Streams one object to `target`; None (and nothing left behind) if it grew past `cap`."""
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    # a hidden temporary name: the reader never sees a half-copied file
    handle, partial = tempfile.mkstemp(dir=folder, prefix=f".{name[:64]}.", suffix=".partial")
    written = 0
    try:
        with os.fdopen(handle, "wb") as sink, filesystem.open_input_stream(path) as source:
            while written <= cap:
                chunk = source.read(_COPY_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written <= cap:
                    sink.write(chunk)
        if written > cap:
            os.unlink(partial)
            return None
        os.replace(partial, target)
        return written
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
