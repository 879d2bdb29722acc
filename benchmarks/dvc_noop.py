"""Time of a no-op ``dvc repro`` (every stage up to date): the fixed cost of asking DVC "anything to do?".

Where (``--where``):

* ``repo``: in the real repository, only when ``dvc status --json`` there says ``{}`` (everything up to date,
  so ``dvc repro`` runs nothing). If the status is not clean the script refuses (it never starts real stages);
* ``tmp``: in a fresh git + DVC repository holding a trivial copy of the pipeline: the real ``dvc.yaml``'s
  stages, deps, outs, metrics, plots and params (``${...}`` resolved from ``params.yaml``), the real code files
  as deps, and each stage's command replaced by a script that writes small placeholder outputs. One real
  ``dvc repro`` runs the trivial stages, then the no-op runs are timed. This measures DVC's overhead on the
  same DAG shape, not the real outputs' sizes (DVC checks them by mtime/inode, cached in its state database);
* ``auto`` (default): ``repo`` when its status is clean, else ``tmp``.

Each timed run must print no "Running stage" (checked). ``--runs`` (3) runs; min and median are reported.

    python benchmarks/dvc_noop.py [--where auto|repo|tmp] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result_in  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
FILE_SUFFIXES = (".json", ".csv", ".md", ".png", ".txt", ".yaml")
WRITER = '''"""Trivial stand-in of a pipeline stage: write placeholder outputs (benchmarks/dvc_noop.py)."""
import json, sys
from pathlib import Path
for out in json.loads(Path("stage_outs.json").read_text())[sys.argv[1]]:
    p = Path(out)
    if p.suffix:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"stage": sys.argv[1], "out": out}) + "\\n")
    else:
        p.mkdir(parents=True, exist_ok=True)
        (p / "content.txt").write_text(f"{sys.argv[1]}:{out}\\n")
'''


def _env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def dvc_status_clean(repo: Path) -> tuple[bool, str]:
    """(clean, why): ``dvc status --json`` printed ``{}``."""
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, env=_env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, "dvc status timed out"
    if proc.returncode != 0:
        return False, f"dvc status failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        return False, f"dvc status printed no JSON: {proc.stdout[:200]!r}"
    if status:
        return False, f"{len(status)} stage(s) not up to date: {', '.join(sorted(status))[:300]}"
    return True, "dvc status: everything up to date"


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def _entries(items, resolve) -> list:
    """A dvc.yaml outs/metrics/plots/deps list with ``${...}`` resolved (dict options kept)."""
    out = []
    for item in items or []:
        if isinstance(item, dict):
            out += [{resolve(k): v} for k, v in item.items()]
        else:
            out.append(resolve(item))
    return out


def _path(entry) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else entry


def build_trivial_repo(root: Path, source: Path = REPO) -> Path:
    """A git + DVC repo at ``root`` with a trivial copy of ``source``'s pipeline; returns ``root``."""
    import yaml

    spec = yaml.safe_load((source / "dvc.yaml").read_text())
    params = yaml.safe_load((source / "params.yaml").read_text())

    def resolve(text: str) -> str:
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(params, m.group(1))), str(text))

    root.mkdir(parents=True)
    shutil.copy(source / "params.yaml", root / "params.yaml")
    stages, stage_outs, produced = {}, {}, set()
    for name, stage in spec["stages"].items():
        new = {"cmd": f"{Path(sys.executable)} stage_writer.py {name}"}
        for key in ("deps", "params", "outs", "metrics", "plots"):
            if stage.get(key):
                new[key] = _entries(stage[key], resolve) if key != "params" else stage[key]
        outs = [_path(e) for key in ("outs", "metrics", "plots") for e in new.get(key, [])]
        stage_outs[name] = outs
        for dep in new.get("deps", []):
            dep_path = _path(dep)
            if dep_path in produced or (root / dep_path).exists():
                continue
            src = source / dep_path
            if src.is_dir():
                shutil.copytree(src, root / dep_path, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.is_file() and src.suffix == ".py":
                (root / dep_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, root / dep_path)
            else:  # a data dep no earlier stage makes (e.g. user input): a placeholder
                (root / dep_path).parent.mkdir(parents=True, exist_ok=True)
                if Path(dep_path).suffix in FILE_SUFFIXES:
                    (root / dep_path).write_text("placeholder\n")
                else:
                    (root / dep_path).mkdir(exist_ok=True)
                    (root / dep_path / "placeholder.txt").write_text("placeholder\n")
        produced.update(outs)
        stages[name] = new
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "stage_outs.json").write_text(json.dumps(stage_outs, indent=1))
    (root / "stage_writer.py").write_text(WRITER)
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "repro", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "trivial pipeline"], root)
    return root


def time_noop(repo: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = _run([sys.executable, "-m", "dvc", "repro"], repo)
        times.append(time.perf_counter() - started)
        if "Running stage" in proc.stdout:
            raise RuntimeError(f"dvc repro in {repo} was not a no-op:\n{proc.stdout[-2000:]}")
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--where", choices=("auto", "repo", "tmp"), default="auto")
    parser.add_argument("--repo", default=str(REPO), help="the real repository (checked with dvc status)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    repo = Path(args.repo).resolve()
    clean, why = (False, "not checked (--where tmp)") if args.where == "tmp" else dvc_status_clean(repo)
    if args.where == "repo" and not clean:
        raise SystemExit(f"refusing to time dvc repro in {repo}: {why} (it would run real stages)")
    scratch = None
    try:
        if clean:
            mode, target = "repo", repo
        else:
            scratch = Path(tempfile.mkdtemp(prefix="bench-dvc-noop-"))
            started = time.perf_counter()
            target = build_trivial_repo(scratch / "project", repo)
            print(f"trivial copy of the pipeline built and run in {time.perf_counter() - started:.1f} s", flush=True)
            mode = "tmp_trivial_copy"
        stages = list(__import__("yaml").safe_load((target / "dvc.yaml").read_text())["stages"])
        times = time_noop(target, args.runs)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    dvc_version = _run([sys.executable, "-m", "dvc", "--version"], REPO).stdout.strip()
    result = {
        "mode": mode,
        "why": why,
        "stages": stages,
        "runs": args.runs,
        "seconds": [round(t, 3) for t in times],
        "min_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "dvc": dvc_version,
        "command": "python -m dvc repro (every stage up to date; checked: no 'Running stage')",
    }
    path = write_result_in("dvc_noop", result, args.results_dir)
    print(f"no-op dvc repro ({mode}): min {result['min_s']} s, median {result['median_s']} s -> {path}")
    return result


if __name__ == "__main__":
    main()
