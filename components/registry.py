"""Stage `register`: upload one immutable model version to the S3 registry (see docs/registry.md).

Order of writes (each a separate S3 object):

1. probe that the store honours ``If-None-Match: *`` (``registry.require_conditional_writes``);
2. ``versions/<N>/claim.json`` with ``If-None-Match: *``: allocates N; a concurrent writer gets N+1;
3. the payload under ``versions/<N>/files/`` (multipart above ``multipart_threshold_mb``, retried by botocore);
4. ``versions/<N>/manifest.json`` (sha256 + size of every file, gate, lineage) with ``If-None-Match: *``.

Readers treat a version as existing only once its manifest is there, so a run that dies anywhere before step 4
leaves an invisible, abandoned claim (its number is not reused) and never a half version.

A failed gate (``metrics/gate.json`` ``passed: false``, or no gate result) is refused unless ``force`` with a
non-empty ``reason``; both are recorded in the manifest and the model card.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components import lineage as lineage_mod
from components import model_card
from components.artifacts import write_metrics
from components.registry_store import (
    CLAIM_FILE,
    MANIFEST_FILE,
    ConflictError,
    RegistryError,
    RegistryStore,
    redact_url,
)

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1
HASH_CHUNK_BYTES = 1 << 20
CARD_NAME = "MODEL_CARD.md"
PARAMS_NAME = "params.json"
SKIP_METRICS = ("register.json",)  # our own output is not part of the version


class GateBlockedError(RegistryError):
    """The gate blocked this model (or there is no gate result) and --force was not given."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def actor() -> str:
    """Who did it, for the audit trail: local user @ host (never a credential)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise RegistryError(f"'{path}' is not valid JSON") from None
    return data if isinstance(data, dict) else None


def check_gate(gate: dict[str, Any] | None, force: bool, reason: str | None, gate_path: Path) -> None:
    """Raise unless the gate passed, or ``force`` comes with a reason."""
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason \"...\" (it is recorded in the manifest and the model card)")
    if force:
        return
    if gate is None:
        raise GateBlockedError(f"no gate result at '{gate_path}' (run `askd gate`), or pass --force --reason")
    if not gate.get("passed"):
        reasons = gate.get("reasons") or ["passed is false"]
        raise GateBlockedError(f"gate blocked {gate.get('candidate', 'the model')} ({len(reasons)} failed checks, "
                               f"first: {reasons[0]}); refusing to register without --force --reason")


def collect_files(settings, metrics_dir: Path) -> list[tuple[str, Path]]:
    """(relative key, local path) of the payload: model/, exports/ (if any), metrics/*.json."""
    model_dir = Path(settings.train.out_dir)
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise FileNotFoundError(f"no student model at '{model_dir}' (run `askd stage train` first)")
    files: list[tuple[str, Path]] = []

    def add_tree(root: Path, dest: str) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                files.append((f"{dest}/{path.relative_to(root).as_posix()}", path))

    add_tree(model_dir, "model")
    exports = Path(settings.evaluate.exports_dir)
    if settings.registry.include_exports and exports.is_dir():
        add_tree(exports, "exports")
    for path in sorted(metrics_dir.glob("*.json")):
        if path.name not in SKIP_METRICS:
            files.append((f"metrics/{path.name}", path))
    return files


def content_digest(entries: list[dict[str, Any]]) -> str:
    """One sha256 over the model and export files (path + hash): equal digests = the same model."""
    lines = sorted(f"{e['path']} {e['sha256']}" for e in entries if e["path"].startswith(("model/", "exports/")))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _settings_dict(settings) -> dict[str, Any]:
    from components.settings import settings_as_dict

    data = settings_as_dict(settings)
    reg = data.get("registry") or {}
    if reg.get("endpoint_url"):
        reg["endpoint_url"] = redact_url(reg["endpoint_url"])
    return data


def register(settings, *, force: bool = False, reason: str | None = None, version: int | None = None,
             metrics_dir: str | Path = "metrics", root: str | Path = ".", client=None,
             allow_duplicate: bool = False) -> dict[str, Any]:
    """Upload the current model as a new immutable version; write ``<metrics_dir>/register.json``.

    ``version`` claims exactly that number (refused if it exists). An upload identical (same model and export
    files) to the latest version is not repeated unless ``allow_duplicate``: the result then says
    ``registered: false`` and names the existing version.
    """
    t0 = time.perf_counter()
    cfg = settings.registry
    metrics_dir = Path(metrics_dir)
    gate_path = metrics_dir / "gate.json"
    gate = _read_json(gate_path)
    check_gate(gate, force, reason, gate_path)
    eval_metrics = _read_json(Path(settings.gate.eval_metrics))
    files = collect_files(settings, metrics_dir)
    entries = [{"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in files]
    digest = content_digest(entries)

    store = RegistryStore(cfg, client=client)
    latest = store.complete_versions()
    if latest and version is None and not allow_duplicate:
        previous = store.manifest(latest[-1]) or {}
        if previous.get("content_sha256") == digest:
            result = {"registered": False, "reason": f"identical to version {latest[-1]} (same model files)",
                      "version": latest[-1], "uri": store.uri(store.version_prefix(latest[-1]))}
            write_metrics("register", result, metrics_dir)
            return result
    if cfg.require_conditional_writes:
        store.check_conditional_writes()

    op_id = uuid.uuid4().hex
    created_at = now_utc()
    lin = lineage_mod.collect(root, metrics_dir, settings.gate.eval_metrics)
    claim = {"op_id": op_id, "created_at": created_at, "by": actor(), "git_commit": lin["git"].get("commit")}
    number = store.claim_version(claim, version)
    log.info("claimed %s version %d", cfg.model_name, number)

    settings_data = _settings_dict(settings)
    with tempfile.TemporaryDirectory(prefix="askd-register-") as tmp:
        params_path = Path(tmp) / PARAMS_NAME
        params_path.write_text(json.dumps(settings_data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        gate_block = {"passed": bool(gate and gate.get("passed")), "present": gate is not None,
                      "reasons": (gate or {}).get("reasons", []), "checks": (gate or {}).get("checks", []),
                      "candidate": (gate or {}).get("candidate"), "reference": (gate or {}).get("reference")}
        card_info = {"model_name": cfg.model_name, "version": number, "created_at": created_at,
                     "intended_use": cfg.intended_use, "settings": settings_data, "eval": eval_metrics,
                     "gate": gate, "forced": bool(force), "force_reason": reason if force else None,
                     "lineage": lin, "files": entries}
        card_path = Path(tmp) / CARD_NAME
        card_path.write_text(model_card.render(card_info), encoding="utf-8")
        for rel, path in ((PARAMS_NAME, params_path), (CARD_NAME, card_path)):
            files.append((rel, path))
            entries.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})

        def up(item: tuple[str, Path]) -> None:
            store.upload_file(str(item[1]), store.file_key(number, item[0]))

        try:
            with ThreadPoolExecutor(max_workers=cfg.transfer_workers) as pool:
                list(pool.map(up, files))
        except (OSError, ValueError) as err:
            raise type(err)(f"{err}; version {number} stays incomplete and is never listed") from None

    manifest = {
        "schema": MANIFEST_SCHEMA, "model_name": cfg.model_name, "version": number, "created_at": created_at,
        "created_by": actor(), "op_id": op_id, "content_sha256": digest,
        "files": sorted(entries, key=lambda e: e["path"]),
        "gate": gate_block, "forced": bool(force), "force_reason": reason if force else None,
        "lineage": lin, "train_preset": settings.train.preset, "profile": settings.profile,
        "store": {"bucket": cfg.bucket, "prefix": cfg.prefix, "endpoint": redact_url(store.endpoint)},
    }
    key = store.version_prefix(number) + MANIFEST_FILE
    try:
        store.put_json(key, manifest, if_none_match=True)
    except ConflictError:
        found = store.get_json(key)
        if not (found and found.data.get("op_id") == op_id):  # not our own retried write
            raise ConflictError(f"manifest of version {number} was written by someone else") from None
    n_bytes = sum(e["size"] for e in entries)
    result = {"registered": True, "version": number, "uri": store.uri(store.version_prefix(number)),
              "files": len(entries), "bytes": n_bytes, "forced": bool(force), "gate_passed": gate_block["passed"],
              "content_sha256": digest, "seconds": round(time.perf_counter() - t0, 2)}
    write_metrics("register", result, metrics_dir)
    log.info("registered %s version %d (%d files, %d bytes)", cfg.model_name, number, len(entries), n_bytes)
    return result


def register_stage(settings, metrics_dir: str | Path = "metrics", root: str | Path = ".",
                   client=None) -> dict[str, Any]:
    """The DVC stage: register only when ``registry.enabled`` and the gate passed; else record why not.

    Skipping is not an error (``dvc repro`` stays green with no S3 configured); a failure to reach a
    configured registry is.
    """
    metrics_dir = Path(metrics_dir)
    if not settings.registry.enabled:
        result = {"registered": False, "reason": "registry.enabled is false (set it, or run `askd register`)"}
    else:
        gate = _read_json(metrics_dir / "gate.json")
        try:
            check_gate(gate, False, None, metrics_dir / "gate.json")
        except GateBlockedError as err:
            result = {"registered": False, "reason": str(err)}
        else:
            return register(settings, metrics_dir=metrics_dir, root=root, client=client)
    write_metrics("register", result, metrics_dir)
    return result


__all__ = ["CLAIM_FILE", "GateBlockedError", "check_gate", "collect_files", "register", "register_stage",
           "sha256_file"]
