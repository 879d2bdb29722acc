"""Writing stage outputs safely: metrics JSON and whole output folders appear atomically.

A stage killed half-way leaves either the previous complete output or nothing, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METRICS_DIR = Path("metrics")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces ``path`` in one ``os.replace``.

    If the write fails (e.g. the disk is full) the half-written temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as pretty JSON to ``path`` via a temporary file and ``os.replace``."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return Path(path)


def write_metrics(stage: str, data: dict[str, Any], metrics_dir: str | Path = METRICS_DIR) -> Path:
    """Every stage writes a small ``metrics/<stage>.json``."""
    return write_json_atomic(Path(metrics_dir) / f"{stage}.json", data)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder; on success it replaces ``final`` in one rename.

    On an exception (or a kill) ``final`` is untouched and the temporary folder is removed
    (or, after a kill, removed by the next run).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def sha256_files(paths: list[Path]) -> str:
    """One SHA-256 over the files' names and bytes, in name order (a folder's content identity)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_files_sha256(folder: str | Path) -> str:
    """:func:`sha256_files` of a model folder's weights and configs (``*.safetensors``, ``*.json``, ``*.bin``)."""
    return sha256_files([p for p in Path(folder).iterdir() if p.suffix in {".safetensors", ".json", ".bin"}])
