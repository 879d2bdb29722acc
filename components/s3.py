"""Read-only access to an S3 (or S3-compatible) prefix: list it and mirror it into a local folder.

The endpoint is ``PrepareSettings.s3_endpoint_url``, else ``AWS_ENDPOINT_URL``, else AWS itself.
Credentials come ONLY from boto3's default chain (environment, ``~/.aws``, instance/pod role) and are
never read, stored or logged here. Retries use botocore's ``standard`` mode.

A mirror is resumable: every finished file is recorded (size + ETag) in a hidden state file in the
download folder, files are written via a temporary ``.part`` name and renamed, and a rerun downloads
only what is missing or changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
S3_MAX_ATTEMPTS = 5  # total tries per request (first try + 4 retries)
S3_RETRY_MODE = "standard"
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60
S3_DOWNLOAD_WORKERS = 4  # I/O bound: a few threads, independent of CPU cores
SYNC_STATE_FILE = ".s3-sync.json"  # hidden: never ingested as data
MD5_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class S3Object:
    """One listed object: its key, its path relative to the prefix, size and ETag (quotes removed)."""

    key: str
    rel: str
    size: int
    etag: str


@dataclass
class SyncResult:
    """What :func:`sync_prefix` did; ``files`` are the mirrored relative paths (POSIX)."""

    local_root: Path
    files: list[str] = field(default_factory=list)
    downloaded: int = 0
    reused: int = 0
    bytes_downloaded: int = 0

    def as_metrics(self) -> dict[str, Any]:
        return {
            "listed": len(self.files),
            "downloaded": self.downloaded,
            "reused": self.reused,
            "bytes_downloaded": self.bytes_downloaded,
        }


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (a prefix is treated as a folder)."""
    if not uri.startswith(S3_SCHEME):
        raise ValueError(f"not an S3 URI (expected s3://bucket/prefix): '{uri}'")
    bucket, _, prefix = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: '{uri}'")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def resolve_endpoint(endpoint_url: str | None = None) -> str | None:
    """The endpoint to use: explicit setting, else ``AWS_ENDPOINT_URL``, else ``None`` (AWS)."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(endpoint_url: str | None = None):
    """A boto3 S3 client with bounded retries and timeouts; credentials from the default chain."""
    import boto3
    from botocore.config import Config

    endpoint = resolve_endpoint(endpoint_url)
    options: dict[str, Any] = {
        "retries": {"total_max_attempts": S3_MAX_ATTEMPTS, "mode": S3_RETRY_MODE},
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "read_timeout": S3_READ_TIMEOUT_S,
    }
    if endpoint:  # S3-compatible servers (moto, MinIO, ...) are addressed path-style
        options["s3"] = {"addressing_style": "path"}
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=Config(**options))


def _safe_rel(key: str, prefix: str) -> str | None:
    """The key relative to ``prefix``; ``None`` for folder markers and keys escaping the folder."""
    rel = key[len(prefix) :].lstrip("/")
    if not rel or rel.endswith("/"):
        return None
    parts = PurePosixPath(rel).parts
    if any(part in ("..", ".") for part in parts):
        log.warning("skipping S3 key with an unsafe path: %s", key)
        return None
    return rel


def _translate_error(err: Exception, uri: str, endpoint: str | None) -> Exception:
    """Map botocore errors to the builtin errors the CLI reports in one line (no credentials shown)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = f"{uri} (endpoint {endpoint or 'AWS default'})"
    if isinstance(err, NoCredentialsError):
        return PermissionError(f"no S3 credentials found for {where}: configure the boto3 default chain")
    if isinstance(err, EndpointConnectionError):
        return ConnectionError(f"cannot reach S3 for {where}: {err}")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404", "NoSuchKey"):
            return FileNotFoundError(f"S3 bucket or key not found: {where}")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return PermissionError(f"access denied to {where} ({code})")
        return OSError(f"S3 error {code} for {where}")
    return err


def list_objects(client, bucket: str, prefix: str) -> list[S3Object]:
    """All objects under ``prefix`` (paginated), sorted by key; folder markers are left out."""
    out: list[S3Object] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = _safe_rel(obj["Key"], prefix)
            if rel is not None:
                out.append(S3Object(obj["Key"], rel, int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
    return sorted(out, key=lambda o: o.key)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(MD5_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_current(local: Path, obj: S3Object, state: dict[str, dict[str, Any]]) -> bool:
    """True if ``local`` already holds ``obj`` (same size, and same recorded or computed ETag)."""
    if not local.is_file() or local.stat().st_size != obj.size:
        return False
    recorded = state.get(obj.rel, {})
    if recorded.get("etag") == obj.etag and recorded.get("size") == obj.size:
        return True
    # single-part uploads have ETag = MD5 of the content: verify without the state file
    return "-" not in obj.etag and len(obj.etag) == 32 and _md5(local) == obj.etag


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(path: Path, state: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def sync_prefix(uri: str, download_dir: str | Path, endpoint_url: str | None = None, client=None) -> SyncResult:
    """Mirror ``uri`` (s3://bucket/prefix) into ``download_dir``, keeping keys relative to the prefix.

    Files already present with the same size and ETag are reused, so an interrupted or repeated
    run only fetches what is missing. Raises FileNotFoundError / PermissionError / ConnectionError
    with a one-line message for the usual failures.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    endpoint = resolve_endpoint(endpoint_url)
    root = Path(download_dir)
    root.mkdir(parents=True, exist_ok=True)
    state_path = root / SYNC_STATE_FILE
    state = _read_state(state_path)
    result = SyncResult(local_root=root)
    try:
        client = client or make_client(endpoint_url)
        objects = list_objects(client, bucket, prefix)
    except (BotoCoreError, ClientError) as err:
        raise _translate_error(err, uri, endpoint) from None
    if not objects:
        raise FileNotFoundError(f"no objects under {uri} (endpoint {endpoint or 'AWS default'})")

    todo: list[S3Object] = []
    for obj in objects:
        result.files.append(obj.rel)
        if _is_current(root / obj.rel, obj, state):
            result.reused += 1
            state[obj.rel] = {"etag": obj.etag, "size": obj.size}
        else:
            todo.append(obj)

    def fetch(obj: S3Object) -> S3Object:
        local = root / obj.rel
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.part")
        client.download_file(bucket, obj.key, str(part))
        os.replace(part, local)
        return obj

    try:
        with ThreadPoolExecutor(max_workers=S3_DOWNLOAD_WORKERS) as pool:
            for obj in pool.map(fetch, todo):
                state[obj.rel] = {"etag": obj.etag, "size": obj.size}
                result.downloaded += 1
                result.bytes_downloaded += obj.size
    except (BotoCoreError, ClientError) as err:
        raise _translate_error(err, uri, endpoint) from None
    finally:
        _write_state(state_path, state)
    log.info("s3 sync %s: %d listed, %d downloaded, %d reused", uri, len(objects), result.downloaded, result.reused)
    return result
