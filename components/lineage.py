"""Lineage of a model version: code (git), pipeline (dvc.lock), data, packages, teacher, eval protocol.

Every part degrades to ``None`` plus a ``*_note`` when its source is missing (no git repository, no git
binary, no dvc.lock, no metrics), so registering from a plain folder still works and says what is unknown.
Nothing here reads the environment beyond the package metadata, so no secret can end up in a manifest.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

GIT_TIMEOUT_S = 10
PACKAGES = ("whisper-askd", "torch", "transformers", "tokenizers", "ctranslate2", "datasets", "numpy",
            "accelerate", "jiwer", "dvc", "boto3", "botocore", "pydantic")
DATA_PREFIXES = ("data/", "models/teacher")  # dvc.lock paths treated as data (inputs of the student)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(root: str | Path = ".") -> dict[str, Any]:
    """``{commit, dirty, branch}``; ``commit`` None with a note outside a git repository."""
    root = Path(root)
    commit = _git(["rev-parse", "HEAD"], root)
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None, "note": "not a git repository (or git missing)"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], root)
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], root)
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "branch": branch}


def _entries(items: list[dict[str, Any]] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        digest = item.get("md5") or item.get("etag") or item.get("checksum")
        if item.get("path") and digest:
            out[str(item["path"])] = str(digest)
    return out


def dvc_lock_info(root: str | Path = ".") -> dict[str, Any]:
    """Per stage, the md5 of every dep and out recorded in ``dvc.lock``; plus the data hashes among them."""
    path = Path(root) / "dvc.lock"
    if not path.is_file():
        return {"stages": None, "data": None, "note": "no dvc.lock (pipeline not run through DVC)"}
    try:
        lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        return {"stages": None, "data": None, "note": f"dvc.lock unreadable: {type(err).__name__}"}
    stages: dict[str, Any] = {}
    data: dict[str, str] = {}
    for name, stage in sorted((lock.get("stages") or {}).items()):
        deps, outs = _entries(stage.get("deps")), _entries(stage.get("outs"))
        stages[name] = {"cmd": stage.get("cmd"), "deps": deps, "outs": outs}
        for p, digest in {**deps, **outs}.items():
            if p.startswith(DATA_PREFIXES):
                data[p] = digest
    return {"stages": stages, "data": dict(sorted(data.items()))}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def teacher_info(metrics_dir: str | Path = "metrics") -> dict[str, Any] | None:
    """The teacher's identity as the `teacher` stage recorded it (model, size, vocabulary)."""
    data = _read_json(Path(metrics_dir) / "teacher.json")
    if data is None:
        return None
    keep = ("model", "params", "d_model", "layers", "vocab", "multilingual", "out_dir")
    return {k: data[k] for k in keep if k in data}


def eval_protocol(eval_metrics: str | Path = "metrics/eval.json") -> dict[str, Any] | None:
    data = _read_json(Path(eval_metrics))
    return (data or {}).get("protocol")


def collect(root: str | Path = ".", metrics_dir: str | Path = "metrics",
            eval_metrics: str | Path = "metrics/eval.json") -> dict[str, Any]:
    """The whole lineage block of a manifest."""
    return {
        "git": git_info(root),
        "dvc": dvc_lock_info(root),
        "packages": package_versions(),
        "teacher": teacher_info(metrics_dir),
        "eval_protocol": eval_protocol(eval_metrics),
    }
