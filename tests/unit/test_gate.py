"""Gate decisions on crafted eval metrics: pass, each failing reason, missing sets/forms/speed, CLI exit codes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.gate import decide, run_gate
from components.settings import GateSettings

REPO = Path(__file__).resolve().parents[2]
SETS = ("test", "test_ood", "test_longform", "test_real")


def _set(wer: float, halluc: float = 0.0) -> dict:
    return {"wer": wer, "cer": wer / 2, "insertion_rate": 1.0, "empty_rate": 0.0, "repeated_ngram_rate": halluc,
            "hallucination_rate": halluc, "clips": 10}


GOOD = {
    "forms": {
        "teacher": {"kind": "transformers", "sets": {"test": _set(8.0), "test_ood": _set(30.0),
                                                     "test_longform": _set(6.0), "test_real": _set(12.0)}},
        "student": {"kind": "transformers", "sets": {"test": _set(9.5), "test_ood": _set(32.5),
                                                     "test_longform": _set(10.0, halluc=2.0),
                                                     "test_real": _set(14.5)}},
    },
    "speed": {"speedup": {"student": {"natural_b1": 2.0, "fixed_b1": 1.8, "natural_b8": 2.1}}},
}


def _cfg(**over) -> GateSettings:
    return GateSettings(**over)


def _fails(decision) -> list[str]:
    return decision["reasons"]


def test_good_metrics_pass_with_a_line_per_check():
    d = decide(GOOD, _cfg())
    assert d["passed"] is True and d["reasons"] == []
    # 4 WER deltas + 1 speed-up + 4 hallucination checks, each one PASS line
    assert len(d["checks"]) == 9 and all(line.startswith("PASS ") for line in d["checks"])
    assert any("test_ood wer_delta_points = 2.500 (threshold <= 3.0)" in line for line in d["checks"])


@pytest.mark.parametrize(("set_name", "student_wer", "limit"), [("test", 10.5, 2.0), ("test_ood", 33.5, 3.0),
                                                                 ("test_longform", 11.5, 5.0),
                                                                 ("test_real", 15.5, 3.0)])
def test_wer_delta_over_threshold_fails_naming_set_value_threshold(set_name, student_wer, limit):
    m = copy.deepcopy(GOOD)
    m["forms"]["student"]["sets"][set_name]["wer"] = student_wer
    d = decide(m, _cfg())
    assert d["passed"] is False
    (reason,) = _fails(d)
    delta = student_wer - m["forms"]["teacher"]["sets"][set_name]["wer"]
    assert reason.startswith(f"FAIL {set_name} wer_delta_points = {delta:.3f} (threshold <= {limit})")


def test_slow_candidate_fails_the_speedup_check():
    m = copy.deepcopy(GOOD)
    m["speed"]["speedup"]["student"]["natural_b1"] = 1.2
    (reason,) = _fails(decide(m, _cfg()))
    assert reason.startswith("FAIL speed speedup_natural_b1 = 1.200 (threshold >= 1.5)")


def test_speedup_measure_is_configurable():
    assert decide(GOOD, _cfg(speedup_measure="fixed_b1", min_speedup=1.9))["reasons"] == [
        "FAIL speed speedup_fixed_b1 = 1.800 (threshold >= 1.9): student vs teacher"
    ]


def test_hallucinating_candidate_fails_per_set():
    m = copy.deepcopy(GOOD)
    m["forms"]["student"]["sets"]["test_longform"]["hallucination_rate"] = 50.0
    (reason,) = _fails(decide(m, _cfg()))
    assert reason.startswith("FAIL test_longform hallucination_rate = 50.000 (threshold <= 5.0)")


def test_missing_set_fails():
    m = copy.deepcopy(GOOD)
    del m["forms"]["student"]["sets"]["test_longform"]
    (reason,) = _fails(decide(m, _cfg()))
    assert reason.startswith("FAIL test_longform wer_delta_points = missing (threshold <= 5.0)")
    assert "student" in reason
    m = copy.deepcopy(GOOD)
    del m["forms"]["teacher"]["sets"]["test_ood"]
    assert _fails(decide(m, _cfg()))[0].startswith("FAIL test_ood wer_delta_points = missing")


def test_missing_speed_and_missing_forms_fail():
    m = copy.deepcopy(GOOD)
    del m["speed"]
    (reason,) = _fails(decide(m, _cfg()))
    assert reason.startswith("FAIL speed speedup_natural_b1 = missing")
    d = decide(GOOD, _cfg(candidate="student_ct2_int8"))
    assert d["passed"] is False and "candidate 'student_ct2_int8' not in eval metrics" in d["reasons"][0]


def test_every_failure_is_listed_at_once():
    m = copy.deepcopy(GOOD)
    for s in SETS:
        m["forms"]["student"]["sets"][s]["wer"] += 50
        m["forms"]["student"]["sets"][s]["hallucination_rate"] = 40.0
    m["speed"]["speedup"]["student"]["natural_b1"] = 0.9
    d = decide(m, _cfg())
    assert len(d["reasons"]) == 9 and len(d["details"]) == 9
    assert all(not c["ok"] and c["set"] and c["metric"] and c["threshold"] is not None for c in d["details"])


def test_run_gate_writes_gate_json_and_reports_missing_input(tmp_path):
    eval_file = tmp_path / "eval.json"
    eval_file.write_text(json.dumps(GOOD))
    d = run_gate(_cfg(eval_metrics=eval_file), metrics_dir=tmp_path / "metrics")
    saved = json.loads((tmp_path / "metrics" / "gate.json").read_text())
    assert saved["passed"] is True and saved["checks"] == d["checks"]
    with pytest.raises(FileNotFoundError, match="askd stage evaluate"):
        run_gate(_cfg(eval_metrics=tmp_path / "nope.json"), metrics_dir=tmp_path)


@pytest.mark.parametrize(("fail_on_block", "code"), [("false", 0), ("true", 1)])
def test_cli_gate_exit_code_follows_fail_on_block(tmp_path, monkeypatch, fail_on_block, code):
    from components.cli import app

    bad = copy.deepcopy(GOOD)
    bad["forms"]["student"]["sets"]["test"]["wer"] = 30.0
    (tmp_path / "eval.json").write_text(json.dumps(bad))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--set", f"gate.fail_on_block={fail_on_block}", "--set",
                                      "gate.eval_metrics=eval.json", "gate"])
    assert result.exit_code == code, result.output
    saved = json.loads((tmp_path / "metrics" / "gate.json").read_text())
    assert saved["passed"] is False and saved["reasons"][0].startswith("FAIL test wer_delta_points")


def test_speedup_against_another_reference_form_uses_the_timed_seconds():
    metrics = copy.deepcopy(GOOD)
    metrics["forms"]["teacher_ct2_int8"] = copy.deepcopy(metrics["forms"]["teacher"])
    metrics["forms"]["student_ct2_int8"] = copy.deepcopy(metrics["forms"]["student"])
    metrics["speed"]["forms"] = {"teacher_ct2_int8": {"natural_b1": {"seconds": 3.0}},
                                 "student_ct2_int8": {"natural_b1": {"seconds": 2.0}}}
    cfg = dict(candidate="student_ct2_int8", reference="teacher_ct2_int8")
    assert decide(metrics, _cfg(**cfg, min_speedup=1.4))["passed"]
    blocked = decide(metrics, _cfg(**cfg, min_speedup=2.0))
    assert not blocked["passed"]
    assert any("speedup_natural_b1 = 1.500" in r for r in blocked["reasons"])
    metrics["speed"]["forms"].pop("teacher_ct2_int8")  # reference not timed -> a clear failure, not a silent pass
    assert any("speedup" in r and "missing" in r for r in decide(metrics, _cfg(**cfg))["reasons"])
