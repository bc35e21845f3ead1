"""Object-storage credentials (s3://, gs://, az://): read from the environment once, used three ways.

The standard environment variables of each cloud (only those that are set) are mapped to delta-rs
storage option names in one table per cloud (`_S3_OPTIONS`, ...). From that one mapping come:

- `delta_storage_options(root)`: the delta-rs `storage_options` for a lake root.
- `filesystem(uri)`: a pyarrow FileSystem and the path in it, for listing and downloading a
  landing area (a local path or file:// gives the local file system).
- `redact(text)`: removes every credential value of the environment from a message; `redactor()`
  the same with the values collected once (for many messages); `redacted_error(exc)` an exception
  safe to log in place of one whose message (or chained cause) held a credential.

What is redacted: every variable of CREDENTIAL_VARS (key ids, account names and client ids
included: they identify an account), any variable whose name looks like a secret's, the fields of
a service-account JSON key given inline or by file (private key and its id, client email and id),
each also as it appears URL-encoded.

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
import urllib.parse
from typing import Any

from embedding_assets.lib.storage.uri import AZURE_SCHEMES, GCS_SCHEMES, OBJECT_STORE_SCHEMES, S3_SCHEMES, local_path, scheme_of

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
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_TENANT_ID",
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
# Variables that name a file holding a service-account JSON key: its identifying fields are redacted.
_KEY_FILE_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH")
_KEY_FILE_MAX_BYTES = 1 << 20
_KEY_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token", "client_email", "client_id")
_MIN_REDACTED_LENGTH = 4
_WHOLE_WORD_BELOW = 12  # shorter secrets are only redacted where they stand alone, not inside words


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip():
            return value.strip()
    return None


def _collect(table: tuple[tuple[tuple[str, ...], str], ...]) -> dict[str, str]:
    """The environment mapped through one cloud's table: {storage option: value} for each variable set."""
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


def _key_fields(text: str) -> set[str]:
    """The identifying values of a service-account JSON key (empty if `text` is not one)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return set()
    found: set[str] = set()
    if isinstance(parsed, dict):
        for name in _KEY_FIELDS:
            if isinstance(parsed.get(name), str):
                found.add(parsed[name])
                found.add(parsed[name].replace("\n", "\\n"))
    return found


def _key_file_values() -> set[str]:
    values: set[str] = set()
    for name in _KEY_FILE_VARS:
        path = os.environ.get(name, "").strip()
        if not path or path.lstrip().startswith("{"):
            continue
        try:
            with open(os.path.expanduser(path), "rb") as handle:
                text = handle.read(_KEY_FILE_MAX_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        values |= _key_fields(text)
    return values


def _secret_values() -> list[str]:
    values: set[str] = set()
    candidates: set[str] = set()
    for name, value in os.environ.items():
        if not value or not _is_secret_name(name):
            continue
        candidates |= {value, value.strip(), value.strip().lstrip("?")}
        if value.lstrip().startswith("{"):
            # a service-account key: its private key and key id can surface on their own
            candidates |= _key_fields(value)
    candidates |= _key_file_values()
    for candidate in candidates:
        if len(candidate) >= _MIN_REDACTED_LENGTH:
            values.add(candidate)
            # as it would appear in a URL (SAS tokens, keys with + / =)
            values.add(urllib.parse.quote(candidate, safe=""))
            values.add(urllib.parse.quote_plus(candidate, safe=""))
    return sorted(values, key=len, reverse=True)


def _redact_with(values: list[str], text: str) -> str:
    if not text:
        return text
    for value in values:
        if value not in text:
            continue
        if len(value) >= _WHOLE_WORD_BELOW:
            text = text.replace(value, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", "***", text)
    return text


def redact(text: str) -> str:
    """`text` with every credential value of the current environment replaced by '***'."""
    return _redact_with(_secret_values(), text)


def redactor():
    """`redact` with the environment's credential values collected once: for many messages."""
    values = _secret_values()
    if not values:
        return lambda text: text
    return lambda text: _redact_with(values, text)


class RedactedError(RuntimeError):
    """An error whose original message held a credential; this one holds the redacted message."""


def redacted_error(exc: BaseException, redact_text=None) -> BaseException | None:
    """None when neither `exc` nor any exception chained to it mentions a credential value; else a
    new exception with the redacted message (of the same type when it can be built from one
    message, else RedactedError) and nothing chained, to raise in its place."""
    redact_text = redact_text or redactor()
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    if all(redact_text(str(e)) == str(e) and redact_text(repr(e)) == repr(e) for e in chain):
        return None
    message = redact_text(str(exc))
    for cause in chain[1:]:
        message += f" (caused by {type(cause).__name__}: {redact_text(str(cause))})"
    try:
        safe = type(exc)(message)
        if str(safe) != message:
            raise TypeError
    except Exception:  # noqa: BLE001 - a type that cannot be built from one message
        safe = RedactedError(f"{type(exc).__name__}: {message}")
    return safe


# --- pyarrow filesystems, from the same mapping ------------------------------------------------


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path in it) for a URI: object storage with the environment's credentials,
    or the local file system for a plain path or file:// URI."""
    from pyarrow import fs

    scheme = scheme_of(uri)
    if scheme in S3_SCHEMES:
        bucket, key = _split_bucket_uri(uri)
        return _s3_filesystem(bucket, _collect(_S3_OPTIONS)), f"{bucket}/{key}".rstrip("/")
    if scheme in GCS_SCHEMES:
        bucket, key = _split_bucket_uri(uri)
        # Credentials: GOOGLE_APPLICATION_CREDENTIALS or the workload's identity (GKE metadata server).
        return fs.GcsFileSystem(), f"{bucket}/{key}".rstrip("/")
    if scheme in AZURE_SCHEMES:
        return _azure_filesystem(uri, _collect(_AZURE_OPTIONS))
    if scheme in ("", "file"):
        return fs.LocalFileSystem(), local_path(uri)
    raise ValueError(f"not a local path or an object-storage URI (expected one of {sorted(OBJECT_STORE_SCHEMES)}): {scheme}")


def _split_bucket_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b')."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError("an object-storage URI needs a bucket or container after the scheme, e.g. s3://bucket/landing")
    return bucket, key.strip("/")


def _s3_filesystem(bucket: str, options: dict[str, str]):
    from pyarrow import fs

    kwargs: dict[str, Any] = {}
    key_id, secret = options.get("aws_access_key_id"), options.get("aws_secret_access_key")
    if key_id and secret:
        kwargs.update(access_key=key_id, secret_key=secret)
        token = options.get("aws_session_token")
        if token:
            kwargs["session_token"] = token
    elif key_id or secret:
        raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use the AWS default credential chain)")
    region = options.get("aws_region")
    endpoint = options.get("aws_endpoint_url")
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
    if options.get("aws_virtual_hosted_style_request", "").lower() == "true":
        kwargs["force_virtual_addressing"] = True
    return fs.S3FileSystem(**kwargs)


def _azure_filesystem(uri: str, options: dict[str, str]) -> tuple[Any, str]:
    from pyarrow import fs

    parsed = urllib.parse.urlparse(uri)
    account = options.get("azure_storage_account_name")
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
    key, sas = options.get("azure_storage_account_key"), options.get("azure_storage_sas_token")
    client_id = options.get("azure_storage_client_id")
    client_secret = options.get("azure_storage_client_secret")
    tenant_id = options.get("azure_storage_tenant_id")
    if key:
        kwargs["account_key"] = key
    elif sas:
        kwargs["sas_token"] = sas.lstrip("?")
    elif client_id and client_secret and tenant_id:
        kwargs.update(client_id=client_id, client_secret=client_secret, tenant_id=tenant_id)
    elif client_id:
        kwargs["client_id"] = client_id  # a user-assigned managed identity / workload identity
    endpoint = options.get("azure_storage_endpoint")
    if endpoint:
        ep = urllib.parse.urlparse(endpoint)
        kwargs.update(blob_storage_authority=ep.netloc, blob_storage_scheme=ep.scheme or "https",
                      dfs_storage_authority=ep.netloc, dfs_storage_scheme=ep.scheme or "https")
    return fs.AzureFileSystem(account, **kwargs), f"{container}/{parsed.path.strip('/')}".rstrip("/")
