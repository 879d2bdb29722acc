"""Registry reads and alias updates: list, show, verify, pull, promote, rollback.

Only versions with a ``manifest.json`` exist for these functions. Aliases are small JSON objects
(``aliases/<name>.json``) holding the current ``version``, a ``stack`` (promote pushes, rollback pops) and an
append-only ``history``; every update is a conditional PutObject (``If-None-Match: *`` to create,
``If-Match: <ETag read>`` to replace), so of two concurrent promotions exactly one lands and the other gets
:class:`ConflictError` instead of silently overwriting it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.registry import actor, now_utc, sha256_file
from components.registry_store import (
    MANIFEST_FILE,
    ConflictError,
    IntegrityError,
    RegistryError,
    RegistryStore,
)

PULL_MARKER = "manifest.json"  # a pulled folder holds the version's manifest: a later pull may replace it


@dataclass(frozen=True)
class AliasState:
    """An alias as read (``data`` None when it does not exist yet) and the ETag to replace it with."""

    name: str
    data: dict[str, Any] | None
    etag: str | None


def _store(cfg, client=None) -> RegistryStore:
    return RegistryStore(cfg, client=client)


def list_versions(cfg, client=None) -> list[dict[str, Any]]:
    """One summary per complete version (ascending), with the aliases pointing at it."""
    store = _store(cfg, client)
    aliases = list_aliases(cfg, client=store.client)
    out = []
    for number in store.complete_versions():
        m = store.manifest(number) or {}
        out.append({"version": number, "created_at": m.get("created_at"), "gate_passed": (m.get("gate") or {})
                    .get("passed"), "forced": m.get("forced"), "files": len(m.get("files") or []),
                    "bytes": sum(f.get("size", 0) for f in m.get("files") or []),
                    "git_commit": ((m.get("lineage") or {}).get("git") or {}).get("commit"),
                    "aliases": sorted(a for a, v in aliases.items() if v == number)})
    return out


def list_aliases(cfg, client=None) -> dict[str, int]:
    store = _store(cfg, client)
    prefix = f"{store.base}/aliases/"
    out = {}
    for key, _ in store.list_keys(prefix):
        name = key[len(prefix):].removesuffix(".json")
        found = store.get_json(key)
        if found and isinstance(found.data.get("version"), int):
            out[name] = found.data["version"]
    return dict(sorted(out.items()))


def read_alias(cfg, name: str, client=None) -> AliasState:
    store = _store(cfg, client)
    found = store.get_json(store.alias_key(name))
    return AliasState(name, found.data if found else None, found.etag if found else None)


def show(cfg, version: int, client=None) -> dict[str, Any]:
    """The manifest of a complete version (raises if it does not exist or is incomplete)."""
    store = _store(cfg, client)
    manifest = store.manifest(version)
    if manifest is None:
        raise FileNotFoundError(f"no version {version} of {cfg.model_name} at {store.uri()} "
                                "(never registered, or its upload did not finish)")
    return manifest


def resolve(cfg, ref: str, client=None) -> int:
    """``'3'`` or ``'v3'`` -> 3 (must exist); any other string is an alias name."""
    text = ref.strip()
    if text.lstrip("vV").isdigit():
        number = int(text.lstrip("vV"))
        show(cfg, number, client)
        return number
    state = read_alias(cfg, text, client)
    if state.data is None:
        raise FileNotFoundError(f"no alias {text!r} for {cfg.model_name} (and it is not a version number)")
    return int(state.data["version"])


def _fetch_verified(store: RegistryStore, version: int, manifest: dict[str, Any], dest: Path) -> list[str]:
    """Download every manifest file into ``dest`` and check size + sha256; return the problems found."""
    problems = []
    listed = {k: size for k, size in store.list_keys(store.version_prefix(version))}
    expected = set()
    for entry in manifest.get("files") or []:
        key = store.file_key(version, entry["path"])
        expected.add(key)
        if key not in listed:
            problems.append(f"{entry['path']}: missing from the store")
            continue
        local = dest / entry["path"]
        local.parent.mkdir(parents=True, exist_ok=True)
        store.download_file(key, str(local))
        size, digest = local.stat().st_size, sha256_file(local)
        if size != entry["size"] or digest != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 {digest[:12]}… size {size} != manifest "
                            f"{entry['sha256'][:12]}… size {entry['size']}")
    files_prefix = store.file_key(version, "")
    problems += [f"{k[len(files_prefix):]}: not in the manifest" for k in listed
                 if k.startswith(files_prefix) and k not in expected]
    return problems


def verify(cfg, version: int, client=None) -> dict[str, Any]:
    """Download and check every file of a version; raise :class:`IntegrityError` naming each bad file."""
    store = _store(cfg, client)
    manifest = show(cfg, version, store.client)
    with tempfile.TemporaryDirectory(prefix="askd-verify-") as tmp:
        problems = _fetch_verified(store, version, manifest, Path(tmp))
    if problems:
        raise IntegrityError(f"version {version} failed verification: " + "; ".join(problems))
    return {"version": version, "ok": True, "files": len(manifest["files"]),
            "bytes": sum(f["size"] for f in manifest["files"])}


def pull(cfg, ref: str, out: str | Path, client=None) -> dict[str, Any]:
    """Download a version (number or alias) into ``out``: temp folder, verify, then rename into place.

    ``out`` may be absent, empty, or an earlier pull (it holds ``manifest.json``); anything else is refused.
    """
    store = _store(cfg, client)
    version = resolve(cfg, ref, store.client)
    manifest = show(cfg, version, store.client)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PULL_MARKER).is_file())):
        raise FileExistsError(f"'{out}' exists and is not an earlier `askd registry pull` folder; choose another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.pull-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        problems = _fetch_verified(store, version, manifest, tmp)
        if problems:
            raise IntegrityError(f"pull of version {version} refused, checksum mismatch: " + "; ".join(problems))
        store.download_file(store.version_prefix(version) + MANIFEST_FILE, str(tmp / PULL_MARKER))
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"version": version, "ref": ref, "out": str(out), "files": len(manifest["files"]), "verified": True}


def _write_alias(store: RegistryStore, state: AliasState, data: dict[str, Any]) -> dict[str, Any]:
    key = store.alias_key(state.name)
    try:
        if state.etag is None:
            store.put_json(key, data, if_none_match=True)
        else:
            store.put_json(key, data, if_match=state.etag)
    except ConflictError:
        found = store.get_json(key)
        if found and (found.data.get("history") or [{}])[-1].get("op_id") == data["history"][-1]["op_id"]:
            return data  # our own write landed; a retried request saw it
        now = f"version {found.data.get('version')}" if found else "deleted"
        raise ConflictError(
            f"alias {state.name!r} was changed by another writer while this one was running (it now points to "
            f"{now}); nothing was written: re-run to act on the new state") from None
    return data


def promote(cfg, version: int, alias: str, *, reason: str | None = None, base: AliasState | None = None,
            client=None) -> dict[str, Any]:
    """Point ``alias`` at ``version`` (which must exist). ``base`` is the alias state the decision was made on
    (read now when omitted); if the alias changed since, :class:`ConflictError` is raised."""
    store = _store(cfg, client)
    manifest = show(cfg, version, store.client)
    state = base if base is not None else read_alias(cfg, alias, store.client)
    old = state.data or {"alias": alias, "model": cfg.model_name, "stack": [], "history": []}
    previous = old.get("version")
    entry = {"action": "promote", "version": version, "previous": previous, "at": now_utc(), "by": actor(),
             "reason": reason, "gate_passed": (manifest.get("gate") or {}).get("passed"),
             "op_id": uuid.uuid4().hex}
    data = {**old, "alias": alias, "model": cfg.model_name, "version": version, "updated_at": entry["at"],
            "stack": [*old.get("stack", []), version], "history": [*old.get("history", []), entry]}
    _write_alias(store, state, data)
    return {"alias": alias, "version": version, "previous": previous}


def rollback(cfg, alias: str, *, reason: str | None = None, base: AliasState | None = None,
             client=None) -> dict[str, Any]:
    """Point ``alias`` back at the version it pointed to before the last promotion (repeatable)."""
    store = _store(cfg, client)
    state = base if base is not None else read_alias(cfg, alias, store.client)
    if state.data is None:
        raise FileNotFoundError(f"no alias {alias!r} for {cfg.model_name}")
    stack = list(state.data.get("stack") or [])
    if len(stack) < 2:
        raise RegistryError(f"alias {alias!r} has no earlier version to roll back to (history: {stack})")
    current, target = stack[-1], stack[-2]
    show(cfg, target, store.client)
    entry = {"action": "rollback", "version": target, "previous": current, "at": now_utc(), "by": actor(),
             "reason": reason, "op_id": uuid.uuid4().hex}
    data = {**state.data, "version": target, "updated_at": entry["at"], "stack": stack[:-1],
            "history": [*state.data.get("history", []), entry]}
    _write_alias(store, state, data)
    return {"alias": alias, "version": target, "previous": current}
