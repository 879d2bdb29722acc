"""`askd up`: its own server, the work pools, `prefect deploy --all`, a worker that runs a deployment; Ctrl-C."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import _free_port
from tests.flows.conftest import REPO, dvc

UP_READY_TIMEOUT_S = 240.0
UP_STOP_TIMEOUT_S = 120.0  # worst case of flows/up.py: 2 x 10 s per child, then SIGKILL; slack for a loaded CI box


def _client_call(api: str, fn):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.flows.conftest import drain_prefect

    with temporary_settings(updates={PREFECT_API_URL: api}):
        try:
            with get_client(sync_client=True) as client:
                return fn(client)
        finally:
            drain_prefect()


def test_askd_up_serves_ui_deploys_runs_and_stops(toy_project):
    import httpx

    root = toy_project
    for name in ("prefect.yaml",):
        shutil.copy(REPO / name, root / name)
    for folder in ("flows", "components", "infra"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    prefect_yaml = (root / "prefect.yaml").read_text()
    port = _free_port()
    ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_WORKER_QUERY_SECONDS": "2", "DVC_NO_ANALYTICS": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    log = (root.parent / "up.log").open("w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "askd"), "up", "--port", str(port)], cwd=root,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + UP_READY_TIMEOUT_S
        while f"Prefect UI: {ui}" not in (root.parent / "up.log").read_text():
            assert proc.poll() is None, (root.parent / "up.log").read_text()
            assert time.monotonic() < deadline, (root.parent / "up.log").read_text()
            time.sleep(0.5)
        assert (root / ".prefect" / "prefect.db").is_file()  # PREFECT_HOME in the project
        # the browser UI is served and calls this port's API (PREFECT_UI_API_URL)
        assert "<title>Prefect Server</title>" in httpx.get(ui, timeout=10).text
        assert httpx.get(f"{ui}/ui-settings", timeout=10).json()["api_url"] == api

        deployments = _client_call(api, lambda c: c.read_deployments())
        by_name = {d.name: d for d in deployments}
        assert set(by_name) == {"local", "retrain-on-new-data", "gpu-k8s", "docker"}
        local = by_name["local"]
        assert local.work_pool_name == "askd-local" and local.pull_steps[0][
            "prefect.deployments.steps.set_working_directory"]["directory"] == str(root)
        assert local.schedules and not any(s.active for s in local.schedules)  # cron present, off by default
        form = local.parameter_openapi_schema
        assert set(form["properties"]) >= {"profile", "preset", "overrides", "label_fan_out"}
        assert by_name["gpu-k8s"].job_variables["gpu_count"] == 1
        pool = _client_call(api, lambda c: c.read_work_pool("askd-gpu-k8s"))
        assert pool.type == "kubernetes" and "nvidia.com/gpu" in str(pool.base_job_template)
        assert (root / "prefect.yaml").read_text() == prefect_yaml  # deploy did not rewrite it

        # "click Run": a run of the local deployment with a parameter, executed by askd up's worker
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            run = run_deployment("distill_pipeline/local", parameters={"overrides": ["gate.min_speedup=1"]},
                                 timeout=180)
        assert run.state.is_completed(), (run.state, (root / ".prefect" / "logs" / "worker.log").read_text()[-3000:])
        assert yaml.safe_load((root / "params.yaml").read_text())["gate"]["min_speedup"] == 1
        assert (root / "metrics" / "register.json").is_file()
        assert dvc("status", "--json", cwd=root).stdout.strip() == "{}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(timeout=UP_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"askd up did not stop within {UP_STOP_TIMEOUT_S:.0f} s of Ctrl-C")
        log.close()
    output = (root.parent / "up.log").read_text()
    assert code == 0 and "stopped" in output, output
    # server and worker are gone: nothing listens on the port any more, no child process of ours survives
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api}/health", timeout=2)
    pids = [int(m) for m in re.findall(r"\(pid (\d+),", output)]
    assert len(pids) == 2, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
