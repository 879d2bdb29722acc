"""Two processes racing: alias promotions (exactly one wins) and version claims (distinct numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from components.registry import register
from components.registry_ops import promote, read_alias

from .conftest import REPO

BARRIER_TIMEOUT_S = 60

# Each worker reads the state it decides on, signals ready, waits for the shared "go" file, then writes.
WORKER = r"""
import json, sys, time
from pathlib import Path
from components.settings import RegistrySettings
from components.registry_ops import promote, read_alias
from components.registry_store import ConflictError, RegistryStore

mode, bucket, arg, ready, go = sys.argv[1:6]
cfg = RegistrySettings(bucket=bucket, max_attempts=3)
if mode == "promote":
    state = read_alias(cfg, "production")
else:
    store = RegistryStore(cfg)
    store.claimed_versions()  # warm the connection like a real writer
Path(ready).touch()
deadline = time.monotonic() + 60
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("barrier timeout")
    time.sleep(0.005)
try:
    if mode == "promote":
        out = promote(cfg, int(arg), "production", base=state)
    else:
        out = {"version": store.claim_version({"op_id": arg})}
    print(json.dumps({"ok": out}))
except ConflictError as err:
    print(json.dumps({"conflict": str(err)}))
"""


def _race(tmp_path: Path, mode: str, bucket: str, args: list[str]) -> list[dict]:
    go = tmp_path / f"go-{mode}"
    procs, readies = [], []
    for i, arg in enumerate(args):
        ready = tmp_path / f"ready-{mode}-{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, mode, bucket, arg, str(ready), str(go)],
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)}))
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()  # both start writing at the same moment
    results = []
    for p in procs:
        out, err = p.communicate(timeout=BARRIER_TIMEOUT_S)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_promoting_at_once_exactly_one_wins(project, tmp_path):
    cfg = project.settings()
    register(cfg, metrics_dir=project.metrics)
    project.change_model("v2")
    register(cfg, metrics_dir=project.metrics)
    reg = cfg.registry

    # creation race (alias absent: If-None-Match: *), then replacement race (If-Match: ETag)
    for round_, base_history in ((1, 0), (2, 1)):
        (tmp_path / f"r{round_}").mkdir()
        results = _race(tmp_path / f"r{round_}", "promote", project.bucket, ["1", "2"])
        wins = [r["ok"] for r in results if "ok" in r]
        losses = [r["conflict"] for r in results if "conflict" in r]
        assert len(wins) == 1 and len(losses) == 1, results
        assert "alias 'production' was changed by another writer" in losses[0] and "nothing was written" in losses[0]
        data = read_alias(reg, "production").data
        assert data["version"] == wins[0]["version"]
        assert len(data["history"]) == base_history + 1  # the loser left no trace, the winner is not lost


def test_two_processes_claiming_versions_get_distinct_numbers(project, tmp_path):
    results = _race(tmp_path, "claim", project.bucket, ["op-a", "op-b"])
    assert sorted(r["ok"]["version"] for r in results) == [1, 2]


def test_sequential_promotions_after_a_conflict_succeed(project):
    cfg = project.settings()
    register(cfg, metrics_dir=project.metrics)
    reg = cfg.registry
    stale = read_alias(reg, "staging")
    promote(reg, 1, "staging")
    from components.registry_store import ConflictError

    try:
        promote(reg, 1, "staging", base=stale)  # decided on a state that is gone
    except ConflictError as err:
        assert "now points to version 1" in str(err)
    else:
        raise AssertionError("a stale promotion must not succeed")
    assert promote(reg, 1, "staging", reason="re-read")["previous"] == 1
