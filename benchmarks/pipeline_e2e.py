"""End-to-end time and peak memory of the default pipeline.

Modes (the JSON's ``mode`` says which produced the numbers):

* ``from_metrics`` (default, instant): per-stage ``seconds`` from the last run's ``metrics/<stage>.json``, in
  ``dvc.yaml`` order, and their sum. Stages that reused earlier work (``resumed_clips``, ``clips_reused``) are
  flagged: their seconds are this run's only. No memory figure (nothing was run).
* ``run`` (``--run``, opt-in: about 30 min for the quick profile on 2 cores): ``dvc repro [--dvc-args]`` in
  ``--repo`` under a monitor of the whole process tree. Peak RSS = the largest sum of the tree's resident
  sets seen (sampled every ``--interval`` s; psutil when installed, else /proc), plus the largest single
  process (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, exact, covers every waited-for descendant).
  Wall time of the whole command, and the per-stage seconds the run wrote into ``metrics/``.
* ``run_trivial`` (``--trivial``): the same monitor on ``dvc repro`` of a trivial copy of the pipeline in a
  temporary repo (``benchmarks/dvc_noop.build_trivial_repo``): DVC's own cost, and a smoke test of the monitor.

    python benchmarks/pipeline_e2e.py                  # from metrics/*.json
    python benchmarks/pipeline_e2e.py --run            # really runs `dvc repro` (long)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result_in  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
REUSE_KEYS = ("resumed_clips", "clips_reused")


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _proc_tree_rss(root_pid: int) -> tuple[int, int]:
    """(sum of RSS bytes, process count) of ``root_pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, count, todo = 0, 0, [root_pid]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _page_size()
            count += 1
        except (OSError, ValueError, IndexError):
            pass
        todo += children.get(pid, [])
    return total, count


def _psutil_tree_rss(root_pid: int) -> tuple[int, int]:
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total, count = 0, 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            count += 1
        except psutil.Error:
            pass
    return total, count


class TreeMonitor(threading.Thread):
    """Samples the RSS of a process tree until stopped; keeps the peak sum and the most processes seen."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        try:
            import psutil  # noqa: F401

            self.backend, self._sample = "psutil", _psutil_tree_rss
        except ImportError:
            self.backend, self._sample = "/proc", _proc_tree_rss
        self.peak_bytes, self.max_processes, self.samples = 0, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, count = self._sample(self.pid)
            self.peak_bytes = max(self.peak_bytes, total)
            self.max_processes = max(self.max_processes, count)
            self.samples += 1
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_monitored(args: list[str], cwd: Path, interval_s: float, env: dict[str, str] | None = None) -> dict:
    """Run ``args`` in ``cwd`` under a :class:`TreeMonitor`; wall time, peak tree RSS, max single RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monitor = TreeMonitor(proc.pid, interval_s)
    monitor.start()
    output, _ = proc.communicate()
    monitor.stop()
    wall = time.perf_counter() - started
    # ru_maxrss: KiB on Linux; the largest of this process's waited-for descendants (since it started)
    children_max_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "command": " ".join(args), "returncode": proc.returncode, "wall_s": round(wall, 2),
        "peak_tree_rss_mib": round(monitor.peak_bytes / MIB, 1),
        "max_single_process_rss_mib": round(children_max_kib / 1024, 1),
        "max_processes_seen": monitor.max_processes, "samples": monitor.samples,
        "sample_interval_s": interval_s, "monitor_backend": monitor.backend,
        "output_tail": output[-1500:],
    }


def stage_seconds(metrics_dir: Path, dvc_yaml: Path) -> dict:
    """Per-stage ``seconds`` of ``metrics_dir/<stage>.json`` in dvc.yaml order (absent stages listed)."""
    import yaml

    spec = yaml.safe_load(dvc_yaml.read_text())["stages"]
    stages = list(spec)
    per, missing, notes, written = {}, [], {}, {}
    for stage in stages:
        declared = [next(iter(m)) if isinstance(m, dict) else m for m in spec[stage].get("metrics") or []]
        names = [Path(m).name for m in declared if str(m).endswith(".json")] or [f"{stage}.json"]
        path = metrics_dir / names[0]  # the stage's metrics file as dvc.yaml declares it (evaluate: eval.json)
        if not path.is_file():
            missing.append(stage)
            continue
        data = json.loads(path.read_text())
        written[stage] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(path.stat().st_mtime))
        if isinstance(data.get("seconds"), (int, float)):
            per[stage] = float(data["seconds"])
        else:
            notes[stage] = "no 'seconds' field"
        reused = {k: data[k] for k in REUSE_KEYS if isinstance(data.get(k), int) and data[k] > 0}
        if reused:
            notes[stage] = f"reused earlier work {reused}: its seconds cover this run's part only"
    return {"stages": stages, "seconds": per, "total_s": round(sum(per.values()), 2), "missing": missing,
            "notes": notes, "metrics_written": written}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--from-metrics", action="store_true", help="read metrics/*.json of the last run (default)")
    mode.add_argument("--run", action="store_true", help="run `dvc repro` under the memory monitor (long)")
    mode.add_argument("--trivial", action="store_true", help="monitor `dvc repro` of a trivial pipeline copy")
    parser.add_argument("--repo", default=str(REPO))
    parser.add_argument("--metrics-dir", default=None, help="default: <repo>/metrics")
    parser.add_argument("--dvc-args", default="", help="extra `dvc repro` arguments for --run, e.g. '--force'")
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval (s)")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    repo = Path(args.repo).resolve()
    result: dict = {}
    if args.run or args.trivial:
        scratch = None
        try:
            target = repo
            if args.trivial:
                from benchmarks.dvc_noop import build_trivial_repo

                scratch = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
                target = build_trivial_repo(scratch / "project", repo)
                subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "-q"], cwd=target, check=False,
                               capture_output=True, timeout=600)  # warm: the timed run below forces every stage
            bindir = str(Path(sys.executable).parent)
            env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
            extra = args.dvc_args.split() + (["--force"] if args.trivial else [])
            run = run_monitored([sys.executable, "-m", "dvc", "repro", *extra], target, args.interval, env)
            if run["returncode"] != 0:
                raise SystemExit(f"dvc repro failed (exit {run['returncode']}):\n{run['output_tail']}")
            result = {"mode": "run_trivial" if args.trivial else "run", **run,
                      "per_stage": stage_seconds(target / "metrics", target / "dvc.yaml")}
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    else:
        metrics_dir = Path(args.metrics_dir) if args.metrics_dir else repo / "metrics"
        per = stage_seconds(metrics_dir, repo / "dvc.yaml")
        if not per["seconds"]:
            raise SystemExit(f"no stage metrics with 'seconds' in {metrics_dir}: run the pipeline or use --run")
        result = {"mode": "from_metrics", "metrics_dir": str(metrics_dir), "per_stage": per,
                  "wall_s": per["total_s"], "peak_tree_rss_mib": None,
                  "memory_note": "not measured in from_metrics mode (use --run)"}
    path = write_result_in("pipeline_e2e", result, args.results_dir)
    peak = result.get("peak_tree_rss_mib")
    print(f"pipeline ({result['mode']}): {result['wall_s']} s, peak tree RSS "
          f"{'n/a' if peak is None else f'{peak} MiB'} -> {path}")
    return result


if __name__ == "__main__":
    main()
