"""The whole chain through distill_pipeline (real tiny.en teacher, tiny synthetic corpus, real Prefect server,
real git + DVC repository, real moto S3 registry).

One run covers: DVC stage order, label fan-out over 2 processes merged by the stage, artifacts in the UI, a blocked
gate stopping the flow before register, then a passing gate with a flaky register that the flow retries until the
version is in the bucket (lineage, checksums), a workspace that `dvc repro` finds up to date afterwards, and a
label-only parameter change that plain `dvc repro` reruns from label on, nothing upstream.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_pipeline_project
from tests.flows.conftest import artifacts_of, dvc, git_dvc_init, make_register_fail_once, task_runs

TINY = {
    "synth": {"n_train": 4, "n_validation": 2, "n_test": 2, "n_test_ood": 2, "n_test_longform": 1,
              "longform_min_s": 6.0, "longform_max_s": 9.0, "workers": 1},
    "real_speech": {"max_clips": 3},
    "label": {"wer_threshold_percent": 100.0, "max_new_tokens": 64, "shard_size": 2},
    "train": {"optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 0.0003},
              "eval_every_steps": 2, "eval_max_clips": 2, "save_every_steps": 2, "early_stopping_patience": None},
    "evaluate": {"max_new_tokens": 48, "exports": ["torch_int8"], "speed_clips": 1, "speed_rounds": 1,
                 "speed_protocols": ["natural"], "speed_isolation": "runtime"},  # 2 timing workers, not 4
    "registry": {"enabled": True, "max_attempts": 3},
}
STAGES = ["teacher", "synth", "real_speech", "prepare", "label", "train", "evaluate", "gate", "register"]
PASSING_GATE = ["gate.min_speedup=0.001", "gate.max_hallucination_rate=100", "gate.max_wer_delta_points.test=1000",
                "gate.max_wer_delta_points.test_ood=1000", "gate.max_wer_delta_points.test_longform=1000",
                "gate.max_wer_delta_points.test_real=1000"]


@pytest.fixture
def pipeline_project(tmp_path, s3_bucket) -> Path:
    """The project's pipeline in a fresh git + DVC repo; the registry is a fresh bucket on the moto server
    (AWS_ENDPOINT_URL is in the environment) and `register` fails on its first attempt."""
    tiny = {**TINY, "registry": {**TINY["registry"], "bucket": s3_bucket}}
    root = copy_pipeline_project(tmp_path / "project", tiny)
    make_register_fail_once(root)
    git_dvc_init(root)
    return root


def _table(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


@pytest.mark.slow
def test_distill_pipeline_end_to_end(prefect_api, pipeline_project):
    from flows.dvc_stages import stage_order
    from flows.pipeline import distill_pipeline

    root = pipeline_project
    assert stage_order(root) == STAGES

    # run 1: the real gate thresholds cannot be met by a 4-step student; impossible speed-up on top
    state = distill_pipeline(project_dir=str(root), overrides=["gate.min_speedup=1000"], label_fan_out=2,
                             return_state=True)
    assert state.is_completed(), state
    assert state.message.startswith("gate blocked") and "register" in state.message
    summary = state.result()
    assert list(summary["stages"]) == STAGES[:-1] and all(r["ran"] for r in summary["stages"].values())
    runs = task_runs(state.state_details.flow_run_id)
    names = [t.name for t in sorted(runs, key=lambda t: t.expected_start_time)]
    assert [n for n in names if n in STAGES] == STAGES[:-1] and "register" not in names
    assert not (root / "register_attempts.txt").exists()

    # the label shards came from 2 worker processes; the DVC stage only merged them
    assert summary["label_fan_out"]["workers"] == 2 and summary["label_fan_out"]["labelled_this_run"] == 6
    label = json.loads((root / "metrics" / "label.json").read_text())
    assert label["labelled_this_run"] == 0 and label["resumed_clips"] == 6
    assert label["splits"]["train"]["labelled"] == 4 and label["splits"]["validation"]["labelled"] == 2

    found = artifacts_of(state.state_details.flow_run_id)
    assert {"askd-params", "askd-real-speech", "askd-prepare-counts", "askd-label-counts", "askd-eval-wer", "askd-eval-speed",
            "askd-eval-plots", "askd-gate"} <= set(found), sorted(found)
    prepare_rows = {r["split"]: r for r in _table(found["askd-prepare-counts"])}
    assert prepare_rows["train"]["clips"] == 4 and prepare_rows["test_longform"]["clips"] == 1
    prepare = json.loads((root / "metrics" / "prepare.json").read_text())
    assert prepare["split_sizes"] == {"train": 4, "validation": 2, "test": 2, "test_ood": 2, "test_longform": 1}
    assert (root / "models" / "teacher" / "config.json").is_file()
    assert json.loads((root / "metrics" / "train.json").read_text())["steps"] == 4
    assert (root / "reports" / "evaluation.md").is_file()
    label_rows = {r["split"]: r for r in _table(found["askd-label-counts"])}
    assert label_rows["train"]["labelled"] == 4 and "dropped_wer" in label_rows["train"]
    real_rows = {r["figure"]: r["value"] for r in _table(found["askd-real-speech"])}
    assert real_rows["kept"] == 3 and real_rows["skipped"] == 0 and real_rows["max_s"] > 0
    wer_rows = _table(found["askd-eval-wer"])
    assert {(r["form"], r["set"]) for r in wer_rows} >= {("student", "test"), ("teacher", "test_ood"),
                                                         ("student", "test_real"), ("teacher", "test_real")}
    assert all(isinstance(r["wer"], (int, float)) for r in wer_rows)
    assert any(r["form"] == "student" and r["speedup"] for r in _table(found["askd-eval-speed"]))
    assert "data:image/png;base64," in found["askd-eval-plots"].data
    assert "BLOCKED" in found["askd-gate"].data and "FAIL speed" in found["askd-gate"].data

    # run 2: a passing gate; only gate and register run, register fails once and is retried
    state = distill_pipeline(project_dir=str(root), overrides=PASSING_GATE, retry_delay_s=0.2, return_state=True)
    assert state.is_completed() and not state.message, state
    summary = state.result()
    assert summary["gate"]["passed"] is True
    assert [s for s, r in summary["stages"].items() if r["ran"]] == ["gate", "register"]
    runs = {t.name: t for t in task_runs(state.state_details.flow_run_id)}
    assert runs["register"].run_count == 2 and runs["register"].state.is_completed()
    assert "registry/whisper-askd-student/versions/1" in artifacts_of(state.state_details.flow_run_id)["askd-register"].data
    registered = json.loads((root / "metrics" / "register.json").read_text())
    assert registered["registered"] is True and registered["version"] == 1, registered
    from components.registry_ops import show, verify
    from components.settings import load_settings

    reg = load_settings(root / "params.yaml").registry
    manifest = show(reg, 1)
    assert manifest["lineage"]["git"]["commit"] and set(manifest["lineage"]["dvc"]["stages"]) >= {"train", "gate"}
    assert verify(reg, 1)["ok"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["gate"]["params"]["params.yaml"]["gate"]["min_speedup"] == 0.001
    assert set(lock) == set(STAGES)

    # the flow leaves nothing for DVC to do
    assert dvc("status", "--json", cwd=root).stdout.strip() == "{}"
    again = dvc("repro", cwd=root)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout

    # a label-only parameter change: plain `dvc repro` reruns label and nothing upstream
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["label"]["wer_threshold_percent"] = 50.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = dvc("repro", cwd=root)
    assert "Running stage 'label'" in third.stdout
    assert not any(f"Running stage '{s}'" in third.stdout for s in ("teacher", "synth", "real_speech", "prepare"))
    if "Running stage 'train'" not in third.stdout:  # labels unchanged (threshold 100 -> 50 kept the same clips)
        assert "Running stage 'evaluate'" not in third.stdout
