"""``askd up``: a local Prefect server + a process worker + the deployments of prefect.yaml, until Ctrl-C.

* Server: ``prefect server start --host 127.0.0.1 --port <port>`` with ``PREFECT_HOME=<project>/.prefect``
  (its SQLite database lives there), analytics off, and ``PREFECT_UI_API_URL`` set to the same port (otherwise
  the browser UI calls port 4200 whatever the server's port is).
* Work pools: ``askd-local`` (process; its worker runs here), ``askd-gpu-k8s`` (kubernetes, base job template
  infra/k8s/gpu-job-template.json) and ``askd-docker`` (docker). The last two only hold runs until a worker with
  prefect-kubernetes / prefect-docker polls them from where a cluster / Docker engine exists.
* ``prefect --no-prompt deploy --all`` from the project folder (so the local deployments run in this checkout).
* ``prefect worker start --pool askd-local --limit 1`` (one pipeline at a time: DVC locks the workspace).

Ctrl-C (or SIGTERM) stops the worker (SIGINT, then a second signal: a single one does not stop a Prefect worker),
then the server. Children run in their own process groups, so the terminal's Ctrl-C reaches only this process.
No Prefect import here: everything goes through the ``prefect`` CLI of this environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

LOCAL_POOL = "askd-local"
GPU_K8S_POOL = "askd-gpu-k8s"
DOCKER_POOL = "askd-docker"
K8S_TEMPLATE = Path("infra/k8s/gpu-job-template.json")
SERVER_READY_TIMEOUT_S = 120.0
WORKER_STOP_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 10.0


def prefect_env(project_dir: Path, port: int, home: Path | None = None) -> dict[str, str]:
    """Environment for every Prefect process of ``askd up`` (server, CLI calls, worker, flow runs)."""
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env.update({
        "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(home or project_dir / ".prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "DVC_NO_ANALYTICS": "1",
    })
    return env


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def wait_healthy(api_url: str, proc: subprocess.Popen | None = None, timeout_s: float = SERVER_READY_TIMEOUT_S) -> float:
    """Poll ``<api>/health`` until it answers ``true``; returns the seconds waited."""
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if json.loads(resp.read() or b"false") is True:
                    return time.monotonic() - started
        except (OSError, ValueError):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before it was ready")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the Prefect server at {api_url} was not healthy after {timeout_s:.0f} s")
        time.sleep(0.5)


def _cli(args: list[str], env: dict[str, str], cwd: Path, ok_if: str | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and not (ok_if and ok_if in output):
        raise RuntimeError(f"`{' '.join(args[2:])}` failed ({proc.returncode}):\n{output[-3000:]}")
    return output


def ensure_work_pools(env: dict[str, str], project_dir: Path) -> None:
    """Create (or update) the three work pools prefect.yaml's deployments use."""
    _cli(_prefect("work-pool", "create", LOCAL_POOL, "--type", "process"), env, project_dir, ok_if="already exists")
    template = project_dir / K8S_TEMPLATE
    _cli(_prefect("work-pool", "create", GPU_K8S_POOL, "--type", "kubernetes", "--base-job-template",
                  str(template), "--overwrite"), env, project_dir)
    _cli(_prefect("work-pool", "create", DOCKER_POOL, "--type", "docker"), env, project_dir, ok_if="already exists")


def deploy_all(env: dict[str, str], project_dir: Path) -> str:
    """``prefect --no-prompt deploy --all`` in ``project_dir`` (applies every deployment of prefect.yaml)."""
    return _cli(_prefect("--no-prompt", "deploy", "--all"), env, project_dir)


def _stop(proc: subprocess.Popen, name: str, timeout_s: float, signals: tuple[int, ...], log: Callable[[str], None]) -> None:
    """Send ``signals`` one after the other (waiting ``timeout_s`` after each), then SIGKILL."""
    for sig in signals:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            log(f"{name} still running after {signal.Signals(sig).name}")
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def up(project_dir: Path = Path("."), port: int = 4200, worker: bool = True, deploy: bool = True,
       log: Callable[[str], None] = print) -> int:
    """Run server (+ pools, deployments, worker) until interrupted; returns the exit code."""
    project_dir = project_dir.resolve()
    if not (project_dir / "prefect.yaml").is_file():
        log(f"error: no prefect.yaml in {project_dir} (run `askd up` from the project root)")
        return 2
    env = prefect_env(project_dir, port)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    logs = Path(env["PREFECT_HOME"]) / "logs"
    logs.mkdir(exist_ok=True)
    api, ui = env["PREFECT_API_URL"], f"http://127.0.0.1:{port}"
    children: list[tuple[str, subprocess.Popen, float, tuple[int, ...]]] = []
    stopping = False

    def on_term(signum, frame):  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C explicitly: a process started in the background by a non-interactive shell (`cmd &`, CI runners)
    # inherits SIGINT as *ignored*, and Python then never raises KeyboardInterrupt
    previous_int = signal.signal(signal.SIGINT, on_term)
    try:
        log(f"starting the Prefect server on {ui} (PREFECT_HOME={env['PREFECT_HOME']}) ...")
        server = subprocess.Popen(_prefect("server", "start", "--host", "127.0.0.1", "--port", str(port)),
                                  cwd=project_dir, env=env, stdout=(logs / "server.log").open("ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        children.append(("server", server, SERVER_STOP_TIMEOUT_S, (signal.SIGINT, signal.SIGTERM)))
        waited = wait_healthy(api, server)
        log(f"server ready in {waited:.1f} s (pid {server.pid}, log: {logs / 'server.log'})")
        if deploy:
            ensure_work_pools(env, project_dir)
            deploy_all(env, project_dir)
            log(f"work pools {LOCAL_POOL}, {GPU_K8S_POOL}, {DOCKER_POOL} and the deployments of prefect.yaml applied")
        if worker:
            proc = subprocess.Popen(_prefect("worker", "start", "--pool", LOCAL_POOL, "--limit", "1"),
                                    cwd=project_dir, env=env, stdout=(logs / "worker.log").open("ab"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            children.append(("worker", proc, WORKER_STOP_TIMEOUT_S, (signal.SIGINT, signal.SIGTERM)))
            log(f"process worker started on pool {LOCAL_POOL} (pid {proc.pid}, log: {logs / 'worker.log'})")
        log(f"Prefect UI: {ui}")
        log("open it, go to Deployments -> distill_pipeline/local -> Run, fill the form. Ctrl-C stops everything.")
        while True:
            for name, proc, _, _ in children:
                if proc.poll() is not None:
                    log(f"error: the {name} exited with code {proc.returncode} (see {logs / (name + '.log')})")
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        stopping = True
        return 0
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as err:
        log(f"error: {err}")
        return 1
    finally:
        if children:
            log("stopping ..." if stopping else "cleaning up ...")
        for name, proc, timeout_s, sigs in reversed(children):  # worker first, then the server
            _stop(proc, name, timeout_s, sigs, log)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if children:
            log("stopped")
