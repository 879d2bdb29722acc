"""Prefect tasks over DVC: one task run per stage (``dvc repro -s <stage>``), params, artifacts, push.

Caching stays with DVC (content hashes, ``dvc.lock``, run cache): every task here uses ``NO_CACHE``.
Network-bound tasks (the ``register`` stage, ``prepare`` from S3, any stage with ``--pull``, ``dvc push``) get
retries with exponential backoff; see :func:`stage_task_options`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows import artifacts, dvc_stages

NETWORK_STAGES = frozenset({"register"})  # always talk to S3 / the registry


def is_network_bound(stage: str, resolved: dict[str, Any], pull: bool) -> bool:
    """True when a failure of ``stage`` is likely transient (S3, registry): such tasks are retried."""
    if pull or stage in NETWORK_STAGES:
        return True
    return stage == "prepare" and (resolved.get("prepare") or {}).get("source") == "s3"


def stage_task_options(stage: str, network: bool, retries: int, retry_delay_s: float) -> dict[str, Any]:
    """``run_stage.with_options(...)`` arguments: the task run is named after the stage; retries if networked."""
    options: dict[str, Any] = {"task_run_name": stage}
    if network and retries > 0:
        options["retries"] = retries
        options["retry_delay_seconds"] = exponential_backoff(backoff_factor=retry_delay_s)(retries)
        options["retry_jitter_factor"] = 0.2
    return options


def _logger_sink():
    logger = get_run_logger()
    return logger.info


@task(name="apply-params", cache_policy=NO_CACHE)
def apply_params(project_dir: str, overrides: list[str]) -> dict[str, Any]:
    """Validate ``overrides`` against the settings tree and write them into params.yaml (as ``dvc exp run -S``)."""
    logger = get_run_logger()
    resolved = dvc_stages.apply_overrides(project_dir, overrides)
    if overrides:
        logger.info("params.yaml updated with %s (the same edit `dvc exp run -S` makes)", ", ".join(overrides))
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact("# Parameter overrides\n\n" + "\n".join(f"- `{o}`" for o in overrides) + "\n",
                                 key="askd-params", description="overrides written into params.yaml for this run")
    return resolved


@task(name="plan-stages", cache_policy=NO_CACHE)
def plan_stages(project_dir: str) -> list[str]:
    """The DVC stages in dependency order, read from dvc.yaml through DVC."""
    order = dvc_stages.stage_order(project_dir)
    get_run_logger().info("DVC stage order: %s", " -> ".join(order))
    return order


@task(name="run-stage", cache_policy=NO_CACHE)
def run_stage(project_dir: str, stage: str, pull: bool = False) -> dict[str, Any]:
    """``dvc repro -s <stage>``: DVC skips it when nothing changed and records it in dvc.lock when it runs."""
    result = dvc_stages.repro_stage(project_dir, stage, pull=pull, log=_logger_sink())
    get_run_logger().info("stage %s %s in %.1f s", stage, "ran" if result.ran else "was up to date", result.seconds)
    return {"stage": stage, "ran": result.ran, "seconds": result.seconds}


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(project_dir: str, stage: str) -> list[str]:
    """UI artifacts from the stage's metrics (prepare/label counts, WER + speed, plots, gate, register)."""
    return artifacts.publish(stage, project_dir, log=get_run_logger().info)


@task(name="read-gate", cache_policy=NO_CACHE)
def read_gate(project_dir: str) -> dict[str, Any]:
    """The gate's decision from metrics/gate.json."""
    path = Path(project_dir) / "metrics" / "gate.json"
    if not path.is_file():
        raise FileNotFoundError(f"the gate stage ran but wrote no {path}")
    return json.loads(path.read_text(encoding="utf-8"))


@task(name="dvc-push", cache_policy=NO_CACHE, retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=10)(3), retry_jitter_factor=0.2)
def dvc_push(project_dir: str) -> str:
    """``dvc push``: the run's outputs (and run cache) to the DVC remote, e.g. from an ephemeral GPU pod."""
    return dvc_stages.dvc_command(project_dir, "push", "--run-cache", log=_logger_sink())
