"""``askd flow run``: run ``distill_pipeline`` from the command line.

Against ``PREFECT_API_URL`` when it is set (e.g. the server of ``askd up``, so the run shows in its UI), else in
Prefect's ephemeral mode: a temporary local server (127.0.0.1, about 11 s to start) on the database in
``<project>/.prefect`` (the one ``askd up`` serves, so the run is visible there later). Analytics are off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def run_pipeline(project_dir: Path, overrides: list[str], profile: str | None = None, preset: str | None = None,
                 label_fan_out: int = 0, stop_after: str | None = None, log=print) -> int:
    """Run the flow once; returns 0 when it ends Completed (a blocked gate included), 1 otherwise."""
    project_dir = project_dir.resolve()
    os.environ.setdefault("PREFECT_HOME", str(project_dir / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not os.environ.get("PREFECT_API_URL"):
        log(f"no PREFECT_API_URL: Prefect runs an ephemeral local server (PREFECT_HOME={os.environ['PREFECT_HOME']})")
    from flows.pipeline import distill_pipeline  # imports Prefect (about 2 s)

    state = distill_pipeline(profile=profile, preset=preset, overrides=overrides, project_dir=str(project_dir),
                             label_fan_out=label_fan_out, stop_after=stop_after, return_state=True)
    result: Any = state.result(raise_on_failure=False)
    log(f"distill_pipeline: {state.type.value}{': ' + state.message if state.message else ''}")
    if isinstance(result, dict):
        for stage, info in (result.get("stages") or {}).items():
            log(f"  {stage:10s} {'ran' if info.get('ran') else 'up to date'} ({info.get('seconds')} s)")
        if result.get("gate") is not None:
            log(f"  gate: {'passed' if result['gate']['passed'] else 'blocked'}")
    elif isinstance(result, BaseException):
        log(f"  {type(result).__name__}: {result}")
    return 0 if state.is_completed() else 1
