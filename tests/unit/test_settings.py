"""Settings: precedence (params < profile < env < --set), immutability, one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.settings import PROFILE_SECTIONS, Settings, SettingsError, load_settings, parse_overrides

NO_CHANGE = {section: {} for section in PROFILE_SECTIONS}
PARAMS = {
    "profile": "quick",
    "teacher": {"model": "tiny.en"},
    "synth": {"n_train": 10, "seed": 1},
    "prepare": {"max_duration_s": 30.0},
    "profiles": {"quick": NO_CHANGE, "full": {**NO_CHANGE, "synth": {"n_train": 99}}},
}


@pytest.fixture
def params_file(tmp_path, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("ASKD_"):
            monkeypatch.delenv(key)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    return path


def test_reads_params_file(params_file):
    s = load_settings(params_file)
    assert isinstance(s, Settings)
    assert s.synth.n_train == 10 and s.synth.seed == 1
    assert s.prepare.max_duration_s == 30.0


def test_repo_params_file_is_valid():
    s = load_settings("params.yaml")
    assert s.profile in s.profiles


def test_a_profile_missing_a_section_is_one_clear_error(tmp_path):
    """dvc.yaml tracks profiles.<profile>.<section>: a missing key would fail `dvc repro` cryptically."""
    path = tmp_path / "params.yaml"
    partial = {k: v for k, v in PARAMS["profiles"]["full"].items() if k not in ("label", "gate")}
    path.write_text(yaml.safe_dump({**PARAMS, "profiles": {"quick": NO_CHANGE, "full": {**partial, "trian": {}}}}))
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("invalid setting 'profiles.full': missing section(s) label, gate")
    assert "`label: {}`" in lines[0]
    assert lines[1].startswith("unknown setting 'profiles.full.trian'")


def test_repo_profiles_name_every_section():
    profiles = yaml.safe_load(Path("params.yaml").read_text())["profiles"]
    assert {"quick", "full"} <= set(profiles)
    assert all(set(body) == set(PROFILE_SECTIONS) for body in profiles.values())


def test_profile_overrides_sections(params_file):
    assert load_settings(params_file, ["profile=full"]).synth.n_train == 99


def test_set_edits_a_profile_before_it_is_applied(params_file):
    """`--set profiles.full.synth.seed=5` reaches the settings when `full` is selected (it was ignored once)."""
    s = load_settings(params_file, ["profile=full", "profiles.full.synth.seed=5", "profiles.quick.synth.seed=6"])
    assert (s.synth.n_train, s.synth.seed) == (99, 5)  # the profile's own values stay
    assert s.profiles["full"]["synth"] == {"n_train": 99, "seed": 5}
    assert load_settings(params_file, ["profiles.full.synth.seed=5"]).synth.seed == 1  # quick is selected
    with pytest.raises(SettingsError, match="unknown setting 'profiles.full.synht'"):
        load_settings(params_file, ["profiles.full.synht.seed=5"])


def test_precedence_env_over_file_and_cli_over_env(params_file, monkeypatch):
    monkeypatch.setenv("ASKD_SYNTH__N_TRAIN", "42")
    assert load_settings(params_file).synth.n_train == 42
    assert load_settings(params_file, ["synth.n_train=7"]).synth.n_train == 7


def test_profile_from_env(params_file, monkeypatch):
    monkeypatch.setenv("ASKD_PROFILE", "full")
    assert load_settings(params_file).synth.n_train == 99


def test_settings_are_frozen(params_file):
    s = load_settings(params_file)
    with pytest.raises(Exception):
        s.synth.n_train = 3
    with pytest.raises(Exception):
        s.profile = "full"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prepare.max_duration_s=-1", "invalid setting 'prepare.max_duration_s' = -1: Input should be greater than 0"),
        ("synth.n_train=abc", "invalid setting 'synth.n_train' = 'abc'"),
        ("synth.bogus=1", "unknown setting 'synth.bogus' (allowed keys here: seed,"),
        ("nosuchsection.x=1", "unknown setting 'nosuchsection'"),
        ("teacher.model=large", "invalid setting 'teacher.model' = 'large': Input should be 'tiny.en' or 'base'"),
        ("teacher.path=/does/not/exist", "invalid setting 'teacher.path'"),
        ("prepare.source=folder", "input 'data/raw/synth' does not exist (source=folder)"),
        ("prepare.validation_fraction=0.95", "validation_fraction + test_fraction must be < 1"),
        ("profile=huge", "invalid setting 'profile' = 'huge': unknown profile (allowed: quick, full)"),
        ("synth.min_words=20", "min_words=20 must be <= max_words=18"),
        ("train.teacher_window=6", "teacher_window=6 s must lie between the student's window (train.student.window_s=10)"),
        ("train.teacher_window=half", "invalid setting 'train.teacher_window' = 'half': should be 'student', 'full' or a whole"),
    ],
)
def test_invalid_values_name_the_key(params_file, override, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as err:
        load_settings(params_file, [override])
    message = str(err.value)
    assert expected in message, message
    assert all(line.strip() for line in message.splitlines())


def test_s3_source_needs_s3_url(params_file):
    with pytest.raises(SettingsError, match="source=s3 needs input='s3://bucket/prefix'"):
        load_settings(params_file, ["prepare.source=s3", "prepare.input=somewhere"])


def test_missing_and_broken_params_file(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)


def test_parse_overrides_types_and_errors():
    assert parse_overrides(["a.b=1", "a.c=true", "d=x y", "e=[1, 2]"]) == {
        "a": {"b": 1, "c": True},
        "d": "x y",
        "e": [1, 2],
    }
    with pytest.raises(SettingsError, match="expected key=value"):
        parse_overrides(["novalue"])
