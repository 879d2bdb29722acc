"""Label fan-out: the label stage's shards spread over parallel Prefect tasks, then DVC's stage merges them.

1. ``label-plan`` (one process): the shard plan of the current params + data, and the CTranslate2 conversion.
2. ``label-shards`` x N (task mapping on a ``ThreadPoolTaskRunner``; each task runs one worker *process*,
   ``python -m flows.label_worker run``): disjoint shard sets, round-robin over the length-sorted shards, each
   shard written atomically under ``label.work_dir/<key>/<split>/`` (the stage's own resume point).
3. The caller then runs ``dvc repro -s label`` as usual: ``pseudo_label`` finds every shard finished, labels
   nothing, merges and filters in its fixed order and DVC records the stage. The result equals a sequential run.

Multi-node: the workers only need the same project files and a shared ``label.work_dir`` (docs/orchestration.md).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.dvc_stages import StageFailed, run_streamed
from flows.label_worker import RESULT_PREFIX


def assign_shards(plan: dict[str, Any], workers: int) -> list[dict[str, list[int]]]:
    """Pending shards (not yet on disk) dealt round-robin to ``workers``; empty assignments dropped."""
    pending = [(split, i) for split, n in plan["shards"].items() for i in range(n)
               if i not in set(plan.get("done", {}).get(split, []))]
    jobs: list[dict[str, list[int]]] = [{} for _ in range(max(1, workers))]
    for k, (split, i) in enumerate(pending):
        jobs[k % len(jobs)].setdefault(split, []).append(i)
    return [j for j in jobs if j]


def _worker(project_dir: str, args: list[str]) -> dict[str, Any]:
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "flows.label_worker", *args]
    rc, out, tail = run_streamed(cmd, project_dir, logger.info)
    if rc != 0:
        raise StageFailed(f"label worker `{' '.join(args[:1])}` exited {rc}:\n" + "\n".join(tail))
    for line in reversed(out):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise StageFailed(f"label worker `{' '.join(args[:1])}` printed no result line")


@task(name="label-plan", cache_policy=NO_CACHE)
def label_plan(project_dir: str) -> dict[str, Any]:
    return _worker(project_dir, ["plan"])


@task(name="label-shards", cache_policy=NO_CACHE, task_run_name="label-shards-{worker}")
def label_shards_task(project_dir: str, worker: int, shards: dict[str, list[int]], threads: int) -> dict[str, Any]:
    """One worker process labels ``shards``; finished shards are skipped, so a retry only redoes the rest."""
    return _worker(project_dir, ["run", "--shards", json.dumps(shards), "--threads", str(threads)])


@flow(name="label_fan_out", log_prints=True)
def label_fan_out(project_dir: str = ".", workers: int = 2, threads_per_worker: int | None = None) -> dict[str, Any]:
    """Label the pending shards of the label stage in ``workers`` parallel processes (no merge: the stage does)."""
    logger = get_run_logger()
    plan = label_plan(project_dir)
    jobs = assign_shards(plan, workers)
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, len(jobs)))
    logger.info("label fan-out: %d pending shard(s) over %d worker process(es), %d thread(s) each",
                sum(len(v) for j in jobs for v in j.values()), len(jobs), threads)
    futures = [label_shards_task.submit(project_dir, w, job, threads) for w, job in enumerate(jobs)]
    results = [f.result() for f in futures]
    return {"key": plan["key"], "workers": len(jobs), "labelled_this_run": sum(r["labelled_this_run"] for r in results),
            "jobs": jobs}


def run_label_fan_out(project_dir: str, workers: int, threads_per_worker: int | None = None) -> dict[str, Any]:
    """Call :func:`label_fan_out` as a subflow whose thread pool has one slot per worker process."""
    runner = ThreadPoolTaskRunner(max_workers=max(1, workers))
    return label_fan_out.with_options(task_runner=runner)(project_dir, workers, threads_per_worker)
