"""``distill_pipeline``: the DVC pipeline as a Prefect flow (UI, parameters form, retries, artifacts, pools).

``dvc.yaml`` stays the single DAG: the flow reads the stage order from DVC and runs one task per stage,
``dvc repro -s <stage>`` in the project folder, so unchanged stages are skipped and ``dvc.lock`` records what ran.

Parameters (the UI form): ``profile``, ``preset`` and ``overrides`` (``key=value``, e.g. ``train.optim.lr=1e-4``).
They are validated against the settings tree, then written into ``params.yaml`` with the same code as
``dvc exp run -S`` (so DVC sees them and ``dvc.lock`` records them); the file stays edited after the run, like after
``dvc exp run``. Environment variables (``ASKD_*``) are not used for tracked parameters.

Gate: after the ``gate`` stage the flow reads ``metrics/gate.json``. If ``passed`` is false, no later stage runs
(``register`` never starts) and the flow ends **Completed** with the message ``gate blocked: ...``. A blocked gate
is a normal outcome (the model is simply not promoted), as with ``dvc repro`` where ``gate.fail_on_block: false``.
With ``gate.fail_on_block: true`` the gate stage itself exits 1, so the gate task and the flow end **Failed**.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.states import Completed
from pydantic import Field

from flows import tasks
from flows.dvc_stages import stage_is_stale

Profile = Literal["quick", "full"]
Preset = Literal["askd", "distil_whisper", "kdq", "ce_only"]


def build_overrides(profile: str | None, preset: str | None, overrides: list[str] | None) -> list[str]:
    """The form's fields as ``key=value`` overrides (profile and preset first, explicit overrides win)."""
    out = [f"profile={profile}"] if profile else []
    out += [f"train.preset={preset}"] if preset else []
    return out + [o.strip() for o in overrides or [] if o.strip()]


@flow(name="distill_pipeline", log_prints=True)
def distill_pipeline(
    profile: Profile | None = None,
    preset: Preset | None = None,
    overrides: list[str] | None = None,
    project_dir: str = ".",
    label_fan_out: Annotated[int, Field(ge=0, le=64)] = 0,
    pull: bool = False,
    push: bool = False,
    stop_after: str | None = None,
    network_retries: Annotated[int, Field(ge=0, le=10)] = 3,
    retry_delay_s: Annotated[float, Field(ge=0)] = 10.0,
) -> dict[str, Any]:
    """Run the DVC stages in order (teacher → ... → gate → register), publish artifacts, stop on a blocked gate.

    Args:
        profile: `quick` or `full` (params.yaml `profiles:`); empty keeps params.yaml's.
        preset: training recipe (`train.preset`); empty keeps params.yaml's.
        overrides: more settings as `key=value` (e.g. `train.optim.max_steps=600`), written into params.yaml.
        project_dir: the DVC project (a git + DVC working copy) the stages run in.
        label_fan_out: 0/1 = the label stage labels sequentially; N > 1 = its shards run in N parallel processes.
        pull: `dvc repro --pull` (fetch cached outputs from the DVC remote; for fresh workers/pods).
        push: `dvc push --run-cache` after the stages (outputs to the DVC remote).
        stop_after: run the stages up to and including this one.
        network_retries: retries (exponential backoff) for network-bound stages: register, prepare from S3, --pull.
        retry_delay_s: first retry delay; doubles on each further retry.
    """
    logger = get_run_logger()
    root = str(Path(project_dir).resolve())
    if not (Path(root) / "dvc.yaml").is_file():
        raise FileNotFoundError(f"no dvc.yaml in {root}: project_dir must be the DVC project")
    all_overrides = build_overrides(profile, preset, overrides)
    resolved = tasks.apply_params(root, all_overrides)
    order = tasks.plan_stages(root)
    if stop_after is not None and stop_after not in order:
        raise ValueError(f"stop_after={stop_after!r} is not a stage (stages: {', '.join(order)})")

    summary: dict[str, Any] = {"project_dir": root, "overrides": all_overrides, "stages": {}, "gate": None}
    for stage in order:
        if stage == "label" and label_fan_out > 1 and stage_is_stale(root, "label"):
            from flows.label_fanout import run_label_fan_out

            summary["label_fan_out"] = run_label_fan_out(root, label_fan_out)
        network = tasks.is_network_bound(stage, resolved, pull)
        options = tasks.stage_task_options(stage, network, network_retries, retry_delay_s)
        summary["stages"][stage] = tasks.run_stage.with_options(**options)(root, stage, pull)
        tasks.publish_artifacts(root, stage)
        if stage == "gate":
            decision = tasks.read_gate(root)
            summary["gate"] = {"passed": bool(decision.get("passed")), "reasons": decision.get("reasons", [])}
            if not decision.get("passed"):
                skipped = order[order.index(stage) + 1:]
                summary["skipped"] = skipped
                message = (f"gate blocked: {len(decision.get('reasons', []))} check(s) failed; "
                           f"not run: {', '.join(skipped) or 'nothing'}")
                logger.warning(message)
                for reason in decision.get("reasons", []):
                    logger.warning("gate: %s", reason)
                return Completed(message=message, data=summary)
        if stage == stop_after:
            break
    if push:
        tasks.dvc_push(root)
    ran = [s for s, r in summary["stages"].items() if r["ran"]]
    logger.info("pipeline done: ran %s; up to date: %s", ", ".join(ran) or "nothing",
                ", ".join(s for s in summary["stages"] if s not in ran) or "nothing")
    return summary
