"""`dvc repro` in a real git + DVC repository: teacher -> synth -> prepare -> label, then a no-op repro."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_pipeline_project

TINY = {
    "synth": {"n_train": 4, "n_validation": 2, "n_test": 2, "n_test_ood": 2, "n_test_longform": 1,
              "longform_min_s": 6.0, "longform_max_s": 9.0, "workers": 1},
    "label": {"wer_threshold_percent": 100.0, "max_new_tokens": 64, "shard_size": 4},
    "train": {"optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 0.0003},
              "eval_every_steps": 2, "eval_max_clips": 2, "save_every_steps": 2, "early_stopping_patience": None},
    "evaluate": {"max_new_tokens": 48, "exports": ["torch_int8"], "speed_clips": 1, "speed_rounds": 1,
                 "speed_protocols": ["natural"], "speed_isolation": "runtime"},  # 2 timing workers, not 4
    # a 4-step student cannot pass the real gate: loosen it so `register` really uploads to the moto bucket
    "gate": {"max_wer_delta_points": {"test": 1000.0, "test_ood": 1000.0, "test_longform": 1000.0},
             "min_speedup": 0.001, "max_hallucination_rate": 100.0},
    "registry": {"enabled": True, "max_attempts": 3},
}
STAGES = ("teacher", "synth", "prepare", "label", "train", "evaluate", "gate", "register")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def project(tmp_path, s3_bucket) -> tuple[Path, dict[str, str]]:
    """A copy of the project's pipeline definition and stage code in a fresh git repo with `dvc init`;
    the registry points at a fresh bucket on the moto server (AWS_ENDPOINT_URL is in the environment)."""
    tiny = {**TINY, "registry": {**TINY["registry"], "bucket": s3_bucket}}
    root = copy_pipeline_project(tmp_path / "project", tiny)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "HF_HUB_OFFLINE": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], root, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "init"], root, env)
    return root, env


@pytest.mark.slow
def test_repro_runs_the_chain_then_is_a_noop(project):
    root, env = project
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], root, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    prepare = json.loads((root / "metrics" / "prepare.json").read_text())
    assert prepare["split_sizes"] == {"train": 4, "validation": 2, "test": 2, "test_ood": 2, "test_longform": 1}
    label = json.loads((root / "metrics" / "label.json").read_text())
    assert label["splits"]["train"]["labelled"] == 4 and label["splits"]["validation"]["labelled"] == 2
    assert (root / "models" / "teacher" / "config.json").is_file()
    assert json.loads((root / "metrics" / "train.json").read_text())["steps"] == 4
    evaluation = json.loads((root / "metrics" / "eval.json").read_text())
    assert evaluation and (root / "reports" / "evaluation.md").is_file()
    assert json.loads((root / "metrics" / "gate.json").read_text())["passed"] is True
    registered = json.loads((root / "metrics" / "register.json").read_text())
    assert registered["registered"] is True and registered["version"] == 1, registered
    from components.registry_ops import show, verify
    from components.settings import load_settings

    reg = load_settings(root / "params.yaml").registry
    manifest = show(reg, 1)
    assert manifest["lineage"]["git"]["commit"] and set(manifest["lineage"]["dvc"]["stages"]) >= {"train", "gate"}
    assert verify(reg, 1)["ok"]

    second = _run([*dvc, "repro"], root, env)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout
    status = _run([*dvc, "status", "--json"], root, env)
    assert json.loads(status.stdout) == {}

    # changing a label-only parameter reruns label and nothing upstream
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["label"]["wer_threshold_percent"] = 50.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*dvc, "repro"], root, env)
    assert "Running stage 'label'" in third.stdout
    assert not any(f"Running stage '{s}'" in third.stdout for s in ("teacher", "synth", "prepare"))
    if "Running stage 'train'" not in third.stdout:  # labels unchanged (threshold 100 -> 50 kept the same clips)
        assert "Running stage 'evaluate'" not in third.stdout
