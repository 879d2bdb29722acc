"""DVC as the pipeline's single DAG, seen from the flows (no Prefect here, so it is cheap to import and test).

* :func:`stage_order` reads the stages and their dependencies from ``dvc.yaml`` through DVC's own index
  (``dvc.repo.Repo``), and orders them topologically (ties keep the ``dvc.yaml`` order).
* :func:`apply_overrides` writes ``key=value`` overrides into ``params.yaml`` with the code ``dvc exp run -S``
  uses (``dvc.utils.hydra.apply_overrides``), after validating them against the settings tree.
* :func:`repro_stage` runs ``dvc repro -s <stage>`` in the project, streams its output line by line, and raises
  :class:`StageFailed` with the last lines of stderr when it fails.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STDERR_TAIL_LINES = 30
PROGRESS_LOG_EVERY_S = 15.0  # carriage-return progress lines (tqdm) are logged at most this often
PARAMS_FILE = "params.yaml"


class StageFailed(RuntimeError):
    """``dvc repro -s <stage>`` exited non-zero; the message ends with the last lines of its stderr."""


@dataclass(frozen=True)
class StageRun:
    stage: str
    ran: bool  # False: DVC found it up to date (or restored it from the run cache) and skipped the command
    seconds: float
    returncode: int


def _dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for DVC and the stage commands: the venv's bin first (``askd`` on PATH), no analytics."""
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, **(extra or {})}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TQDM_MININTERVAL", "5")
    return env


def stage_order(project_dir: str | Path) -> list[str]:
    """Names of the pipeline stages (those with a ``cmd``) in an order that respects DVC's dependency graph."""
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        stages = [s for s in repo.index.stages if getattr(s, "cmd", None)]
        graph = repo.index.graph  # edges: stage -> a stage it depends on
        name = {s: _address(s, repo.root_dir) for s in stages}
        position = {name[s]: i for i, s in enumerate(stages)}
        deps = {name[s]: {name[d] for d in graph.successors(s) if d in name} for s in stages}
    order: list[str] = []
    remaining = dict(deps)
    while remaining:
        ready = sorted((name for name, d in remaining.items() if not d - set(order)), key=position.__getitem__)
        if not ready:  # DVC refuses cyclic pipelines, so this means an index we do not understand
            raise ValueError(f"cannot order stages {sorted(remaining)}: cyclic dependencies")
        order.append(ready[0])
        del remaining[ready[0]]
    return order


def _address(stage, root: str) -> str:
    """The stage's name as ``dvc repro -s`` takes it from the project root (``dir/dvc.yaml:name`` if nested)."""
    dvcfile = os.path.relpath(stage.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def downstream_of(project_dir: str | Path, stage: str) -> set[str]:
    """Every stage that depends, directly or not, on ``stage``."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        by_name = {_address(s, repo.root_dir): s for s in repo.index.stages if getattr(s, "cmd", None)}
        if stage not in by_name:
            return set()
        return {_address(s, repo.root_dir) for s in nx.ancestors(repo.index.graph, by_name[stage])}


def stage_is_stale(project_dir: str | Path, stage: str) -> bool:
    """True if ``dvc status <stage>`` reports a change (the stage would run)."""
    import json

    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", stage], cwd=project_dir,
                          env=_dvc_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageFailed(f"`dvc status {stage}` failed:\n{proc.stderr[-2000:]}")
    return bool(json.loads(proc.stdout or "{}"))


def validate_overrides(project_dir: str | Path, overrides: list[str]) -> None:
    """Check ``overrides`` against the settings tree (types, ranges, unknown keys) before anything runs."""
    from components.settings import load_settings

    load_settings(Path(project_dir) / PARAMS_FILE, list(overrides))


def apply_overrides(project_dir: str | Path, overrides: list[str]) -> dict[str, Any]:
    """Write ``overrides`` into the project's ``params.yaml`` exactly as ``dvc exp run -S`` does.

    ``dvc exp run -S k=v`` edits ``params.yaml`` in the workspace with ``dvc.utils.hydra.apply_overrides`` (Hydra
    override grammar, comments kept); this calls the same function, so the following ``dvc repro`` records the
    same parameters in ``dvc.lock``. The file stays edited afterwards (as after ``dvc exp run``). Returns the
    resolved settings as a dict. Raises ``components.settings.SettingsError`` on an invalid override.
    """
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    from components.settings import load_settings, settings_as_dict

    params = Path(project_dir) / PARAMS_FILE
    validate_overrides(project_dir, overrides)
    if overrides:
        dvc_apply_overrides(str(params), list(overrides))
    return settings_as_dict(load_settings(params))  # the file as written must still be valid


def _pump(stream, name: str, lines: queue.Queue) -> None:
    """Split a byte stream into lines (``\n`` or ``\r``) and queue ``(name, line, is_progress)``; ``None`` at EOF."""
    buf = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            line, sep, buf = buf[:cut].decode(errors="replace"), buf[cut:cut + 1], buf[cut + 1:]
            if line.strip():
                lines.put((name, line, sep == b"\r"))
    if buf.strip():
        lines.put((name, buf.decode(errors="replace"), False))
    lines.put(None)


def run_streamed(
    args: list[str], cwd: str | Path, log: Callable[[str], None] = print, env: dict[str, str] | None = None
) -> tuple[int, list[str], list[str]]:
    """Run ``args`` in ``cwd``, forwarding each output line to ``log``; returns (rc, stdout lines, stderr tail).

    ``log`` is called from the calling thread only (a Prefect run logger needs the run's context), and
    ``\r``-terminated progress lines (tqdm) at most every ``PROGRESS_LOG_EVERY_S``. If the caller is interrupted
    (Ctrl-C, a cancelled flow run) the child is terminated, not left running.
    """
    out_lines: list[str] = []
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    lines: queue.Queue = queue.Queue()
    proc = subprocess.Popen(args, cwd=cwd, env=_dvc_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    readers = [threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True)]
    for t in readers:
        t.start()
    last_progress, pending = 0.0, ""
    try:
        open_streams = len(readers)
        while open_streams:
            item = lines.get()
            if item is None:
                open_streams -= 1
                continue
            name, line, progress = item
            if progress:
                pending = line
                if time.monotonic() - last_progress < PROGRESS_LOG_EVERY_S:
                    continue
                last_progress, pending = time.monotonic(), ""
            elif name == "out":
                out_lines.append(line)
            else:
                tail.append(line)
            log(line)
        if pending:
            log(pending)
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return rc, out_lines, list(tail)


def repro_stage(
    project_dir: str | Path,
    stage: str,
    *,
    pull: bool = False,
    log: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> StageRun:
    """Run ``dvc repro -s <stage>`` (``--pull`` to fetch cached outputs from the remote) in ``project_dir``."""
    args = [sys.executable, "-m", "dvc", "repro", "-s", stage, *(["--pull"] if pull else [])]
    started = time.perf_counter()
    rc, out_lines, tail = run_streamed(args, project_dir, log, env)
    seconds = round(time.perf_counter() - started, 2)
    if rc != 0:
        shown = "\n".join(tail) or "(no stderr)"
        raise StageFailed(
            f"stage '{stage}' failed: `dvc repro -s {stage}` exited {rc} after {seconds} s in {project_dir}.\n"
            f"Last {len(tail)} lines of stderr:\n{shown}"
        )
    ran = any(f"Running stage '{stage}'" in line for line in out_lines)
    return StageRun(stage=stage, ran=ran, seconds=seconds, returncode=rc)


def dvc_command(project_dir: str | Path, *args: str, log: Callable[[str], None] = print) -> str:
    """Run ``dvc <args>`` (e.g. ``push``); raise :class:`StageFailed` with the stderr tail on failure."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, env=_dvc_env(),
                          capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        log(line)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-STDERR_TAIL_LINES:])
        raise StageFailed(f"`dvc {' '.join(args)}` exited {proc.returncode}:\n{tail}")
    return proc.stdout
