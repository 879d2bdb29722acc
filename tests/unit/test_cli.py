"""The `askd` CLI: --help everywhere, clean one-line errors, config show."""

from __future__ import annotations

import json
import subprocess
import sys

import typer
from typer.main import get_command
from typer.testing import CliRunner

from components.cli import app

runner = CliRunner()


def _all_command_paths(group, prefix=()):
    yield prefix
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _all_command_paths(cmd, (*prefix, name))


def test_every_command_has_help():
    paths = list(_all_command_paths(get_command(app)))
    assert len(paths) > 5
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_config_show_json_reflects_overrides():
    result = runner.invoke(app, ["--set", "synth.n_train=5", "config", "show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["synth"]["n_train"] == 5
    assert data["teacher"]["model"] == "tiny.en"


def test_invalid_setting_fails_before_work_with_one_line():
    # a real process: exit code 2, one line on stderr naming the key, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "components", "--set", "prepare.max_duration_s=-3", "stage", "prepare"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: invalid setting 'prepare.max_duration_s' = -3: Input should be greater than 0"]


def test_bad_override_syntax():
    result = runner.invoke(app, ["--set", "oops", "config", "show"])
    assert result.exit_code == 2
    assert isinstance(result.exception, (SystemExit, typer.Exit)) or result.exception is None


def test_summary_shows_every_stage_including_evaluate_gate_and_register(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"best_val_wer_percent": 8.1, "best_step": 250,
                                                     "averaged_steps": [200, 250], "final_val_wer_percent": 7.65}))
    (tmp_path / "eval.json").write_text(json.dumps({
        "forms": {"teacher": {"sets": {"test": {"wer": 8.16}}}, "student": {"sets": {"test": {"wer": 12.5}}}},
        "speed": {"speedup": {"student": {"natural_b1": 1.9}},
                  "speedup_same_runtime": {"student_ct2_int8": {"versus": "teacher_ct2_int8", "natural_b1": 2.2}}}}))
    (tmp_path / "gate.json").write_text(json.dumps({"passed": False, "reasons": ["FAIL test wer_delta_points = 4.3 "
                                                                                "(threshold <= 2.0): details"]}))
    (tmp_path / "register.json").write_text(json.dumps({"registered": False, "reason": "gate blocked"}))
    result = runner.invoke(app, ["summary", "--metrics-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for needle in ("8.1", "[200, 250]", "7.65", "student WER %", "test 12.50", "natural_b1 1.90x", "vs teacher_ct2_int8", "2.20x",
                   "BLOCKED", "FAIL test wer_delta_points = 4.3", "gate blocked"):
        assert needle in result.output, needle
