"""distill_pipeline on a cheap DAG (real DVC, real Prefect server): order, gate, retries, failures, overrides."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import yaml

from tests.flows.conftest import artifacts_of, dvc, git_dvc_init, run, task_runs


def _lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def _dvc_params(root: Path) -> dict:
    """params.yaml as DVC parses it (YAML 1.2)."""
    from dvc.utils.serialize import load_yaml

    return load_yaml(str(root / "params.yaml"))


def test_stage_order_comes_from_dvc(toy_project):
    from flows.dvc_stages import downstream_of, stage_order

    # dvc.yaml lists b before a, but b depends on a's output
    assert list(yaml.safe_load((toy_project / "dvc.yaml").read_text())["stages"])[:2] == ["b", "a"]
    assert stage_order(toy_project) == ["a", "b", "gate", "register"]
    assert downstream_of(toy_project, "gate") == {"register"}


def test_blocked_gate_stops_before_register_then_register_is_retried(prefect_api, toy_project, tmp_path):
    from flows.pipeline import distill_pipeline

    # 1. impossible gate: the flow ends Completed with a "gate blocked" message; register never starts
    state = distill_pipeline(project_dir=str(toy_project), overrides=["gate.min_speedup=1000"], return_state=True)
    assert state.is_completed(), state
    assert state.message.startswith("gate blocked") and "register" in state.message
    summary = state.result()
    assert summary["gate"]["passed"] is False and summary["skipped"] == ["register"]
    names = {t.name for t in task_runs(state.state_details.flow_run_id)}
    assert {"a", "b", "gate"} <= names and "register" not in names
    assert not (toy_project / "register_attempts.txt").exists()
    gate_artifact = artifacts_of(state.state_details.flow_run_id)["askd-gate"]
    assert "BLOCKED" in gate_artifact.data and "FAIL speed" in gate_artifact.data

    # 2. passing gate + a changed upstream param: a, b, gate rerun; register fails once and is retried
    state = distill_pipeline(project_dir=str(toy_project), overrides=["gate.min_speedup=1", "prepare.seed=5"],
                             retry_delay_s=0.2, return_state=True)
    assert state.is_completed() and not state.message, state
    summary = state.result()
    assert all(summary["stages"][s]["ran"] for s in ("a", "b", "gate", "register")), summary
    runs = {t.name: t for t in task_runs(state.state_details.flow_run_id)}
    assert runs["register"].run_count == 2 and runs["register"].state.is_completed()
    assert runs["a"].run_count == 1  # local stages are not retried
    assert (toy_project / "register_attempts.txt").read_text() == "2"
    found = artifacts_of(state.state_details.flow_run_id)
    assert "registry/whisper-askd-student/versions/1" in found["askd-register"].data
    assert "askd-params" in found

    # 3. the flow left a consistent DVC workspace: `dvc repro` has nothing to do
    assert dvc("status", "--json", cwd=toy_project).stdout.strip() == "{}"
    again = dvc("repro", cwd=toy_project)
    assert "Running stage" not in again.stdout and (toy_project / "register_attempts.txt").read_text() == "2"

    # 4. the same overrides through `dvc exp run -S` in a fresh copy record the same dvc.lock entries
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("params.yaml", "a.py", "b.py", "gate.py", "register_stage.py", ".gitignore"):
        shutil.copy(toy_project / name, twin / name)
    shutil.copy(toy_project / "dvc.yaml", twin / "dvc.yaml")
    (twin / "params.yaml").write_text(run(["git", "show", "HEAD:params.yaml"], toy_project).stdout)
    git_dvc_init(twin)
    dvc("exp", "run", "-S", "gate.min_speedup=1", "-S", "prepare.seed=5", "gate", cwd=twin)
    flow_lock, exp_lock = _lock(toy_project), _lock(twin)
    for stage in ("a", "b", "gate"):
        assert flow_lock[stage] == exp_lock[stage], stage
    assert _dvc_params(toy_project) == _dvc_params(twin)
    assert (toy_project / "params.yaml").read_text() == (twin / "params.yaml").read_text()  # the same edit


def test_failing_stage_fails_the_flow_with_its_stderr(prefect_api, toy_project):
    from flows.dvc_stages import StageFailed
    from flows.pipeline import distill_pipeline

    (toy_project / "FAIL_B").write_text("")
    state = distill_pipeline(project_dir=str(toy_project), return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, StageFailed)
    assert "stage 'b' failed" in str(err) and "boom: stage b cannot read its input" in str(err)
    runs = {t.name: t for t in task_runs(state.state_details.flow_run_id)}
    assert runs["b"].state.is_failed() and runs["b"].run_count == 1
    assert "boom" in runs["b"].state.message
    assert "gate" not in runs and "register" not in runs


def test_invalid_override_fails_before_any_stage(prefect_api, toy_project):
    from components.settings import SettingsError
    from flows.pipeline import distill_pipeline

    before = (toy_project / "params.yaml").read_text()
    state = distill_pipeline(project_dir=str(toy_project), overrides=["train.optim.lr=-1"], return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, SettingsError) and "train.optim.lr" in str(err)
    assert (toy_project / "params.yaml").read_text() == before
    assert [t.name.rsplit("-", 1)[0] for t in task_runs(state.state_details.flow_run_id)] == ["apply-params"]


def test_askd_flow_run_command(prefect_server, toy_project):
    """The README command: `askd flow run --set k=v` runs every stage through the flow (exit 0, summary)."""
    env = {**prefect_server["env"]}
    askd = str(Path(sys.executable).parent / "askd")
    proc = run([askd, "flow", "run", "--set", "gate.min_speedup=1", "--project-dir", str(toy_project)],
               toy_project, env, timeout=300)
    assert "distill_pipeline: COMPLETED" in proc.stdout, proc.stdout
    for stage in ("a", "b", "gate", "register"):
        assert f"  {stage}" in proc.stdout
    assert "gate: passed" in proc.stdout
    assert yaml.safe_load((toy_project / "params.yaml").read_text())["gate"]["min_speedup"] == 1
    assert dvc("status", "--json", cwd=toy_project).stdout.strip() == "{}"


def test_cli_does_not_import_prefect():
    """`askd --help` and the stage commands stay fast: Prefect is imported only by `askd up` / `askd flow run`."""
    code = "import sys, components.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    proc = run([sys.executable, "-c", code], Path.cwd(), {k: v for k, v in os.environ.items()})
    assert proc.stdout.strip() == "[]"
