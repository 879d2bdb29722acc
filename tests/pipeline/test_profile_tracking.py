"""DVC tracks, per stage, only that stage's section of the selected profile (``profiles.${profile}.<section>``).

Real `dvc repro` / `dvc status` in a git + DVC repo holding a trivial copy of the real dvc.yaml and params.yaml
(``benchmarks.dvc_noop.build_trivial_repo``: same stages, deps and params; each command only writes its outs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.dvc_noop import build_trivial_repo


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _stale(cwd: Path) -> set[str]:
    return set(json.loads(_dvc(["status", "--json"], cwd).stdout or "{}"))


def _edit_params(root: Path, edit) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def repo(tmp_path) -> Path:
    root = build_trivial_repo(tmp_path / "project")
    _dvc(["repro", "-q"], root)
    assert _stale(root) == set()
    return root


def test_a_profile_change_to_train_reruns_train_not_the_data_stages(repo):
    def edit(params):
        params["profiles"][params["profile"]]["train"] = {"optim": {"max_steps": 7}}

    _edit_params(repo, edit)
    assert _stale(repo) == {"train"}  # before: every stage that listed `profiles` (synth, prepare, train)
    _dvc(["repro", "-q"], repo)
    assert _stale(repo) == set()


def test_a_profile_change_to_label_reruns_label(repo):
    def edit(params):
        params["profiles"][params["profile"]]["label"] = {"batch_size": 3}

    _edit_params(repo, edit)
    assert _stale(repo) == {"label"}  # before: label did not track profiles at all (a silent stale output)


def test_switching_profile_reruns_every_stage(repo):
    def edit(params):
        params["profile"] = next(name for name in params["profiles"] if name != params["profile"])

    _edit_params(repo, edit)
    assert _stale(repo) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
