"""Fixtures for the Prefect flow tests: a real local Prefect server and small git + DVC projects.

The server (``prefect server start`` on 127.0.0.1:<free port>, PREFECT_HOME in a temporary folder, analytics
off) is started once per session and stopped with SIGINT, then killed. Flows run in the test process against it
through ``temporary_settings`` (setting the environment variable after ``import prefect`` would be ignored).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import _free_port

# Never fall back silently to an ephemeral server: every client call must reach the fixture's server.
os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[2]
SERVER_READY_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 20.0
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server; yields ``{"api": url, "home": PREFECT_HOME, "env": env for CLI subprocesses}``."""
    from flows.up import wait_healthy

    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(api, proc, SERVER_READY_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as err:
        proc.kill()
        proc.wait()
        log.close()
        pytest.fail(f"Prefect server did not start: {err}\n{(home / 'server.log').read_text(errors='replace')[-3000:]}")
    try:
        yield {"api": api, "home": home, "env": env}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def prefect_api(prefect_server):
    """Point this process's Prefect client at the session server for the test."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["api"], PREFECT_HOME: prefect_server["home"]}):
        yield prefect_server
        drain_prefect()


def drain_prefect() -> None:
    """Send buffered events and logs now, while the test server is configured (otherwise Prefect's exit hooks
    would start an ephemeral server to deliver them)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=15)
    APILogWorker.drain_all(timeout=15)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", **GIT_ENV, **(env or {}),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, env, check)


def git_dvc_init(root: Path) -> None:
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)


# A register stage for the flow tests: fails on its first attempt (as a flaky S3 upload would), then records a
# version. The flow must retry the `register` task (dvc repro -s register) and succeed on the second attempt.
FLAKY_REGISTER = '''\
import json, pathlib, sys
attempts = pathlib.Path("register_attempts.txt")
n = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(n))
if n == 1:
    sys.exit("simulated S3 outage: could not upload the model (attempt 1)")
gate = json.loads(pathlib.Path("metrics/gate.json").read_text())
assert gate["passed"], "register must never run on a blocked gate"
pathlib.Path("metrics/register.json").write_text(json.dumps(
    {"registered": True, "version": 1, "version_key": "registry/whisper-askd-student/versions/1"}))
'''
REGISTER_STAGE = {"cmd": "python register_stage.py", "deps": ["metrics/gate.json", "register_stage.py"],
                  "metrics": [{"metrics/register.json": {"cache": False}}]}


def write_flaky_register(root: Path) -> None:
    """Replace (or add) the `register` stage of ``root/dvc.yaml`` by the flaky one above."""
    (root / "register_stage.py").write_text(FLAKY_REGISTER)
    (root / ".gitignore").open("a").write("register_attempts.txt\n")
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    pipeline["stages"]["register"] = REGISTER_STAGE
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


# The real `register` stage made flaky: its command first runs this, which fails on the first attempt (as an S3
# outage would) and refuses to let register run on a blocked gate; the second attempt goes on to `askd stage register`.
FAIL_ONCE = '''\
import json, pathlib, sys
attempts = pathlib.Path("register_attempts.txt")
n = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(n))
assert json.loads(pathlib.Path("metrics/gate.json").read_text())["passed"], "register ran on a blocked gate"
if n == 1:
    sys.exit("simulated S3 outage: could not upload the model (attempt 1)")
'''


def make_register_fail_once(root: Path) -> None:
    """Prefix the real `register` stage's command in ``root/dvc.yaml`` with a first-attempt failure."""
    (root / "fail_once.py").write_text(FAIL_ONCE)
    (root / ".gitignore").open("a").write("register_attempts.txt\n")
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    stage = pipeline["stages"]["register"]
    stage["cmd"] = f"python fail_once.py && {stage['cmd']}"
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


@pytest.fixture
def toy_project(tmp_path) -> Path:
    """A git + DVC project with the real params.yaml and a cheap DAG: ``b`` (listed first) depends on ``a``,
    then ``gate`` (passes unless gate.min_speedup >= 10) and a flaky ``register``."""
    root = tmp_path / "toy"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "a.py").write_text(
        "import pathlib, yaml\np = yaml.safe_load(open('params.yaml'))\npathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path('out/a.txt').write_text(str(p['prepare']['seed']))\n")
    (root / "b.py").write_text(
        "import pathlib, sys\nif pathlib.Path('FAIL_B').exists():\n"
        "    print('b: starting', flush=True)\n    sys.exit('boom: stage b cannot read its input')\n"
        "pathlib.Path('out/b.txt').write_text(pathlib.Path('out/a.txt').read_text() + 'b')\n")
    (root / "gate.py").write_text(
        "import json, pathlib, yaml\ng = yaml.safe_load(open('params.yaml'))['gate']\nok = g['min_speedup'] < 10\n"
        "pathlib.Path('metrics').mkdir(exist_ok=True)\nline = ('PASS' if ok else 'FAIL') + ' speed speedup'\n"
        "pathlib.Path('metrics/gate.json').write_text(json.dumps({'passed': ok, 'candidate': 'student', "
        "'reference': 'teacher', 'checks': [line], 'reasons': [] if ok else [line]}))\n")
    pipeline = {"stages": {
        "b": {"cmd": "python b.py", "deps": ["b.py", "out/a.txt"], "outs": ["out/b.txt"]},
        "a": {"cmd": "python a.py", "deps": ["a.py"], "params": ["prepare.seed"], "outs": ["out/a.txt"]},
        "gate": {"cmd": "python gate.py", "deps": ["gate.py", "out/b.txt"], "params": ["gate.min_speedup"],
                 "metrics": [{"metrics/gate.json": {"cache": False}}]},
    }}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    write_flaky_register(root)
    git_dvc_init(root)
    return root


def task_runs(flow_run_id, settle_s: float = 1.0, timeout_s: float = 60.0) -> list:
    """Every task run of a flow run as the server recorded it, with final states.

    Prefect 3 reports task runs through events that the server records asynchronously: drain the client's
    events, then read until the set is unchanged for ``settle_s`` and every run is in a final state.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    drain_prefect()
    deadline = time.monotonic() + timeout_s
    previous = None
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            snapshot = sorted((str(t.id), t.state_type.value if t.state_type else "") for t in found)
            settled = all(t.state is not None and t.state.is_final() for t in found)
            if snapshot == previous and settled or time.monotonic() > deadline:
                return found
            previous = snapshot
            time.sleep(settle_s)


def artifacts_of(flow_run_id) -> dict[str, object]:
    """Artifacts created by a flow run, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    drain_prefect()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}
