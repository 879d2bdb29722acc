"""The S3 side of the model registry: client, key layout, conditional JSON writes, listing, transfers.

Layout under ``s3://<bucket>/<prefix>/<model_name>/``::

    versions/<N>/claim.json       created first with If-None-Match: * (allocates N atomically)
    versions/<N>/files/...        the payload (model/, exports/, metrics/, params.json, MODEL_CARD.md)
    versions/<N>/manifest.json    written LAST with If-None-Match: *; a version exists only once it is there
    aliases/<name>.json           {version, stack, history}; replaced only with If-Match: <ETag>

Credentials come only from boto3's default chain; nothing here reads, stores or logs them. boto3 is imported
lazily so importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from components.s3 import resolve_endpoint

log = logging.getLogger(__name__)

MB = 1 << 20
CLAIM_FILE = "claim.json"
MANIFEST_FILE = "manifest.json"
FILES_DIR = "files"
ALIAS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_CLAIM_TRIES = 20  # versions claimed by racing writers before we give up


class RegistryError(ValueError):
    """A registry operation was refused or failed; ``str(err)`` is one line for the CLI."""


class ConflictError(RegistryError):
    """A conditional write lost: someone else created or changed the object first."""


class IntegrityError(RegistryError):
    """Stored files do not match the manifest (tampered, truncated or missing)."""


def redact_url(url: str | None) -> str | None:
    """An endpoint URL without any ``user:password@`` part (safe to record or print)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


_LOADER: list[Any] = []  # one botocore data loader per process: its cache of parsed service models is shared


def _session():
    """A fresh boto3 session (fresh credential resolution) that reuses the parsed S3 service model."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    if _LOADER:
        core.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(core.get_component("data_loader"))
    return boto3.session.Session(botocore_session=core)


def make_registry_client(cfg):
    """A boto3 S3 client like :func:`components.s3.make_client`, with the registry's retry settings."""
    from botocore.config import Config

    endpoint = resolve_endpoint(cfg.endpoint_url)
    options: dict[str, Any] = {
        "retries": {"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
        "connect_timeout": cfg.connect_timeout_s,
        "read_timeout": cfg.read_timeout_s,
        "max_pool_connections": max(10, cfg.transfer_workers * 2),
    }
    if endpoint:  # S3-compatible servers (moto, MinIO, ...) are addressed path-style
        options["s3"] = {"addressing_style": "path"}
    return _session().client("s3", endpoint_url=endpoint, config=Config(**options))


def translate_error(err: Exception, what: str, endpoint: str | None, attempts: int) -> Exception:
    """Botocore/boto3 errors -> builtin errors with one line naming what failed (never credentials)."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = f"{what} (endpoint {redact_url(endpoint) or 'AWS default'})"
    if isinstance(err, NoCredentialsError):
        return PermissionError(f"no S3 credentials found for {where}: configure boto3's default chain "
                               "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or an instance/pod role)")
    if isinstance(err, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return ConnectionError(f"S3 unreachable for {where} after {attempts} attempts: {type(err).__name__}")
    if isinstance(err, (S3UploadFailedError, S3TransferFailedError)):
        inner = str(err).splitlines()[0].split(": ", 1)[-1]  # drop boto3's "Failed to upload <path> to <key>"
        return ConnectionError(f"transfer failed for {where}: {inner[:240]}")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",):
            return FileNotFoundError(f"S3 bucket not found: {where} (create it first; the registry never does)")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return PermissionError(f"access denied to {where} ({code})")
        if status and int(status) >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException"):
            return ConnectionError(f"S3 error {code or status} for {where}, still failing after {attempts} attempts")
        return OSError(f"S3 error {code or status} for {where}")
    return err


@dataclass(frozen=True)
class StoredJSON:
    data: dict[str, Any]
    etag: str


class RegistryStore:
    """Key layout and primitive operations for one model in one bucket."""

    def __init__(self, cfg, client=None):
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.endpoint = resolve_endpoint(cfg.endpoint_url)
        self.client = client if client is not None else make_registry_client(cfg)
        base = f"{cfg.prefix}/{cfg.model_name}" if cfg.prefix else cfg.model_name
        self.base = base.strip("/")

    # ---- keys
    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.base}"

    def version_prefix(self, version: int) -> str:
        return f"{self.base}/versions/{int(version)}/"

    def file_key(self, version: int, rel: str) -> str:
        return f"{self.version_prefix(version)}{FILES_DIR}/{rel}"

    def alias_key(self, name: str) -> str:
        if not ALIAS_NAME_RE.match(name):
            raise RegistryError(f"invalid alias name {name!r} (letters, digits, '.', '_', '-'; max 63)")
        return f"{self.base}/aliases/{name}.json"

    # ---- error mapping
    def _wrap(self, err: Exception, what: str) -> Exception:
        return translate_error(err, what, self.endpoint, self.cfg.max_attempts)

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError, S3UploadFailedError) as err:
            raise self._wrap(err, what) from None

    @staticmethod
    def _code(err) -> str:
        return str(err.response.get("Error", {}).get("Code", ""))

    # ---- JSON objects
    def get_json(self, key: str) -> StoredJSON | None:
        """The JSON object at ``key`` and its ETag, or ``None`` when absent."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            body = resp["Body"].read()
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                return None
            raise self._wrap(err, self.uri(key)) from None
        except BotoCoreError as err:
            raise self._wrap(err, self.uri(key)) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise IntegrityError(f"{self.uri(key)} is not valid JSON") from None
        return StoredJSON(data=data, etag=str(resp.get("ETag", "")))

    def put_json(self, key: str, data: dict[str, Any], *, if_none_match: bool = False,
                 if_match: str | None = None) -> str:
        """Write ``data`` at ``key``; conditional on absence or on the ETag. Returns the new ETag.

        Raises :class:`ConflictError` when the condition does not hold (HTTP 412, or 404 for If-Match on a
        deleted object). A 412 after a *retried* request is ambiguous; callers re-read to resolve it.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        body = (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()
        extra: dict[str, Any] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                          ContentType="application/json", **extra)
        except ClientError as err:
            code = self._code(err)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409") or (
                if_match is not None and code in ("NoSuchKey", "404")
            ):
                raise ConflictError(f"conditional write refused for {self.uri(key)} ({code})") from None
            raise self._wrap(err, self.uri(key)) from None
        except BotoCoreError as err:
            raise self._wrap(err, self.uri(key)) from None
        return str(resp.get("ETag", ""))

    def delete(self, key: str) -> None:
        self._call(self.uri(key), self.client.delete_object, Bucket=self.bucket, Key=key)

    def _is_own(self, key: str, info: dict[str, Any]) -> bool:
        found = self.get_json(key)
        return bool(found and info.get("op_id") and found.data.get("op_id") == info.get("op_id"))

    # ---- conditional-write probe
    def check_conditional_writes(self) -> None:
        """Refuse to write to a store that silently ignores If-None-Match / If-Match (immutability would be a lie).

        Four requests on a scratch key: create (If-None-Match: *), create again (must be refused), replace with a
        wrong ETag (must be refused), delete.
        """
        key = f"{self.base}/.probe/{uuid.uuid4().hex}"
        self.put_json(key, {"probe": 1}, if_none_match=True)
        ignored = []
        try:
            for header, kwargs in (("If-None-Match", {"if_none_match": True}),
                                   ("If-Match", {"if_match": '"00000000000000000000000000000000"'})):
                try:
                    self.put_json(key, {"probe": header}, **kwargs)
                    ignored.append(header)
                except ConflictError:
                    pass
        finally:
            try:
                self.delete(key)
            except OSError:  # best effort: a stray probe object is harmless
                log.warning("could not delete probe object %s", key)
        if ignored:
            raise RegistryError(
                f"the store at {redact_url(self.endpoint) or 'AWS'} ignores {' and '.join(ignored)} on PutObject, so "
                "versions and aliases cannot be protected; use a store with conditional writes or set "
                "registry.require_conditional_writes=false (unsafe with concurrent writers)"
            )

    # ---- listing
    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix``."""
        out: list[tuple[str, int]] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in self._call(self.uri(prefix), list, pages):
            out.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return sorted(out)

    def claimed_versions(self) -> list[int]:
        """Every version number that has a folder (claimed, complete or abandoned), ascending."""
        prefix = f"{self.base}/versions/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        numbers = []
        for page in self._call(self.uri(prefix), list, pages):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(prefix):].strip("/")
                if name.isdigit():
                    numbers.append(int(name))
        return sorted(numbers)

    def manifest(self, version: int) -> dict[str, Any] | None:
        found = self.get_json(self.version_prefix(version) + MANIFEST_FILE)
        return found.data if found else None

    def complete_versions(self) -> list[int]:
        """Versions whose manifest exists (the only ones readers treat as existing)."""
        keys = {k for k, _ in self.list_keys(f"{self.base}/versions/")}
        return [v for v in self.claimed_versions() if self.version_prefix(v) + MANIFEST_FILE in keys]

    def claim_version(self, info: dict[str, Any], version: int | None = None) -> int:
        """Atomically allocate a version number by creating ``versions/<N>/claim.json`` with If-None-Match.

        With ``version`` given, claim exactly that number or fail (a version is immutable).
        """
        if version is not None:
            try:
                self.put_json(self.version_prefix(version) + CLAIM_FILE, info, if_none_match=True)
            except ConflictError:
                if self._is_own(self.version_prefix(version) + CLAIM_FILE, info):
                    return version
                raise ConflictError(
                    f"version {version} of {self.cfg.model_name} already exists at {self.uri(self.version_prefix(version))}"
                    " (versions are immutable; register a new one)") from None
            return version
        candidate = (max(self.claimed_versions(), default=0)) + 1
        for _ in range(MAX_CLAIM_TRIES):
            try:
                self.put_json(self.version_prefix(candidate) + CLAIM_FILE, info, if_none_match=True)
                return candidate
            except ConflictError:
                if self._is_own(self.version_prefix(candidate) + CLAIM_FILE, info):
                    return candidate  # our first try landed, its answer was lost and the retry saw our object
                log.info("version %d was claimed concurrently; trying %d", candidate, candidate + 1)
                candidate += 1
        raise ConflictError(f"could not claim a version after {MAX_CLAIM_TRIES} tries (too many concurrent writers)")

    # ---- transfers
    def transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.cfg.multipart_threshold_mb * MB,
                              multipart_chunksize=self.cfg.multipart_chunk_mb * MB,
                              max_concurrency=self.cfg.transfer_workers, use_threads=self.cfg.transfer_workers > 1)

    def upload_file(self, local: str, key: str) -> None:
        self._call(self.uri(key), self.client.upload_file, local, self.bucket, key, Config=self.transfer_config())

    def download_file(self, key: str, local: str) -> None:
        from boto3.exceptions import S3TransferFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_file(self.bucket, key, local, Config=self.transfer_config())
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                raise IntegrityError(f"missing object {self.uri(key)}") from None
            raise self._wrap(err, self.uri(key)) from None
        except (BotoCoreError, S3TransferFailedError) as err:
            raise self._wrap(err, self.uri(key)) from None
