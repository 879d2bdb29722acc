"""Bad inputs through the public entry points (the `askd` CLI): one clear `error:` line, or a counted skip.

Every case runs the real Typer app (``components.cli.app``) in a temporary working directory holding a copy of
``params.yaml`` (stages write metrics/ and reports/ relative to it), plus one real subprocess. The table of
cases, what the user sees and where each is tested: docs/bad-input.md.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
HUGE_CLIP_S = 300  # five minutes: decoded, then skipped as too_long (prepare.max_duration_s = 30)


@pytest.fixture
def askd(tmp_path, monkeypatch):
    """Invoke `askd <args>` in-process from a scratch project folder; returns the click Result."""
    from components.cli import app

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for name in [k for k in __import__("os").environ if k.startswith("ASKD_")]:
        monkeypatch.delenv(name)
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), env=env)

    return invoke


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_clear_error(result, *needles: str, lines: int = 1) -> str:
    """Exit code 2, no traceback / uncaught exception, exactly ``lines`` `error:` lines holding every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == lines, result.output
    text = "\n".join(errors)
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def _prepare_args(folder: Path, source: str = "folder") -> list[str]:
    return ["--set", f"prepare.source={source}", "--set", f"prepare.input={folder}", "stage", "prepare"]


def _skipped_csv(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return {row["source"]: row["reason"] for row in csv.DictReader(fh)}


# ---------------------------------------------------------------------------------------------------------------
# invalid parameters: fail before any work, one line naming the key


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "prepare.max_duration_s=abc", "stage", "prepare"],
         ["invalid setting 'prepare.max_duration_s' = 'abc'", "valid number"]),
        (["--set", "prepare.bogus=1", "stage", "prepare"], ["unknown setting 'prepare.bogus'", "allowed keys here"]),
        (["--set", "label.batch_size=0", "stage", "label"],
         ["invalid setting 'label.batch_size' = 0", "greater than or equal to 1"]),
        (["--set", "prepare.validation_fraction=1.5", "stage", "prepare"], ["'prepare.validation_fraction' = 1.5"]),
        (["--set", "profile=huge", "config", "show"], ["invalid setting 'profile' = 'huge'", "quick, full"]),
        (["--set", "train.preset=magic", "stage", "train"], ["'train.preset' = 'magic'", "unknown preset"]),
        (["--set", "oops", "config", "show"], ["invalid override 'oops'"]),
    ],
    ids=["wrong-type", "unknown-key", "out-of-range", "fraction-range", "unknown-profile", "unknown-preset",
         "bad-override-syntax"],
)
def test_invalid_setting_is_one_line_naming_the_key(askd, args, needles):
    assert_clear_error(askd(*args), *needles)
    assert not Path("data").exists() and not Path("metrics").exists()  # nothing ran


def test_invalid_environment_variable_names_the_key(askd):
    result = askd("config", "show", env={"ASKD_TRAIN__OPTIM__LR": "fast"})
    assert_clear_error(result, "'train.optim.lr'", "'fast'")


def test_bad_params_files(askd, tmp_path):
    Path("wrong.yaml").write_text("teacher:\n  model: large\n")
    assert_clear_error(askd("--params", "wrong.yaml", "config", "show"), "invalid setting 'teacher.model' = 'large'")
    assert_clear_error(askd("--params", "none.yaml", "config", "show"), "params file 'none.yaml' not found")
    Path("broken.yaml").write_text("teacher: [unclosed\n")
    assert_clear_error(askd("--params", "broken.yaml", "config", "show"), "is not valid YAML")


# ---------------------------------------------------------------------------------------------------------------
# missing inputs


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "prepare.source=folder", "--set", "prepare.input=no/such/folder", "stage", "prepare"],
         ["invalid setting 'prepare'", "'no/such/folder' does not exist"]),
        (["--set", "prepare.input=no/synth", "stage", "prepare"],
         ["prepare: no synthetic corpus at 'no/synth'", "askd data synth"]),
        (["--set", "prepare.source=manifest", "--set", "prepare.input=no.csv", "stage", "prepare"],
         ["'no.csv' does not exist"]),
        (["stage", "label"], ["label: no prepared dataset at 'data/prepared'", "run the prepare stage first"]),
        (["stage", "train"], ["train: no labelled dataset at 'data/labelled'", "run the label stage first"]),
        (["stage", "evaluate"], ["evaluate: no prepared dataset at 'data/prepared'"]),
        (["gate"], ["gate: no evaluation metrics at 'metrics/eval.json'", "askd stage evaluate"]),
        (["--set", "teacher.path=no/teacher", "stage", "teacher"],
         ["invalid setting 'teacher.path' = 'no/teacher'", "config.json missing"]),
        (["transcribe", "--model", "no/model", "a.wav"], ["transcribe: no/model is not a Whisper model folder"]),
        (["evaluate", "--manifest", "no.csv", "--model", "no/model", "--out", "o.json"],
         ["evaluate: manifest not found: no.csv"]),
    ],
    ids=["folder-input", "synth-corpus", "manifest-file", "label-no-prepared", "train-no-labels",
         "evaluate-no-prepared", "gate-no-eval", "teacher-path", "transcribe-model", "evaluate-manifest"],
)
def test_missing_input_is_one_line(askd, args, needles):
    assert_clear_error(askd(*args), *needles)


def test_transcribe_missing_audio_file(askd, tiny_whisper_dir):
    assert_clear_error(askd("transcribe", "--model", str(tiny_whisper_dir), "gone.wav"),
                       "audio file not found: gone.wav")


# ---------------------------------------------------------------------------------------------------------------
# prepare with prepare.source=folder: bad clips are counted skips; nothing usable is one error line


def test_prepare_folder_counts_and_lists_every_bad_clip(askd, bad_audio_dir):
    rng = np.random.default_rng(1)
    huge = (0.05 * rng.standard_normal(HUGE_CLIP_S * 16_000)).astype(np.float32)
    sf.write(bad_audio_dir.root / "huge.wav", huge, 16_000, subtype="PCM_16")
    expected = {**bad_audio_dir.expected_reasons, "huge.wav": "too_long"}

    result = askd(*_prepare_args(bad_audio_dir.root))
    assert result.exit_code == 0, result.output
    assert not error_lines(result)
    metrics = json.loads(Path("metrics/prepare.json").read_text())
    assert metrics["n_skipped"] == len(expected) and metrics["n_kept"] == len(bad_audio_dir.expected_kept)
    assert metrics["skipped_by_reason"]["too_long"] == 2 and metrics["skipped_by_reason"]["corrupt"] == 3
    assert metrics["resampled"] == 1 and metrics["downmixed"] == 1  # the 8 kHz stereo clip is kept
    assert _skipped_csv(Path("data/prepared/skipped.csv")) == expected
    assert _skipped_csv(Path("reports/prepare_skipped.csv")) == expected


def test_prepare_all_bad_is_one_error_after_the_report(askd, bad_audio_dir, tmp_path):
    root = tmp_path / "allbad"
    root.mkdir()
    for name in ("corrupt.wav", "empty.wav", "silence.wav", "too_long.wav"):
        shutil.copy(bad_audio_dir.root / name, root / name)
    assert_clear_error(askd(*_prepare_args(root)), "no usable clips in", "4 skipped",
                       "corrupt=1, empty=1, silent=1, too_long=1")
    assert len(_skipped_csv(Path("reports/prepare_skipped.csv"))) == 4  # the list is written before the error
    assert not Path("data/prepared").exists()


def test_prepare_empty_folder_is_one_error(askd, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clear_error(askd(*_prepare_args(tmp_path / "empty")), "no usable clips in", "no clips found")


# ---------------------------------------------------------------------------------------------------------------
# manifests (prepare.source=manifest): non-UTF-8 transcripts, missing files, missing columns, broken JSONL


def test_prepare_manifest_with_non_utf8_transcript_is_decoded_and_counted(askd, tmp_path, speech_clips):
    for i in range(3):
        shutil.copy(speech_clips[i].path, tmp_path / f"c{i}.wav")
    lines = ["audio,text", f"c0.wav,{speech_clips[0].text}", "c1.wav,Un caf\xe9 cr\xe8me s'il vous pla\xeet",
             f"c2.wav,{speech_clips[2].text}", "gone.wav,never recorded"]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(("\n".join(lines[:2]) + "\n").encode() + (lines[2] + "\n").encode("latin-1")
                         + ("\n".join(lines[3:]) + "\n").encode())
    result = askd(*_prepare_args(manifest, "manifest"))
    assert result.exit_code == 0, result.output
    metrics = json.loads(Path("metrics/prepare.json").read_text())
    assert metrics["text_encoding_fallback_lines"] == 1
    assert metrics["n_kept"] == 3 and metrics["skipped_by_reason"] == {"missing": 1}
    from datasets import load_from_disk

    texts = {t for split in load_from_disk("data/prepared").values() for t in split["text"]}
    assert "Un café crème s'il vous plaît" in texts


def test_prepare_manifest_without_audio_column(askd, tmp_path):
    (tmp_path / "m.csv").write_text("wav,sentence\na.wav,hello\n")
    assert_clear_error(askd(*_prepare_args(tmp_path / "m.csv", "manifest")), "no 'audio' column",
                       "set prepare.audio_column")


def test_prepare_broken_jsonl_names_the_line(askd, tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "hi"}\n{"audio": "b.wav", "text": \n')
    assert_clear_error(askd(*_prepare_args(tmp_path / "m.jsonl", "manifest")), "m.jsonl:2: invalid JSON line")


# ---------------------------------------------------------------------------------------------------------------
# a teacher folder that is not Whisper


def test_teacher_folder_that_is_not_whisper(askd, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    result = askd("--set", f"teacher.path={bert}", "--set", "teacher.out_dir=teacher_out", "stage", "teacher")
    assert_clear_error(result, "is not a Whisper model folder", "model_type='bert', expected 'whisper'")
    assert not Path("teacher_out").exists() and not Path("metrics/teacher.json").exists()


def test_whisper_config_without_weights(askd, tmp_path, tiny_whisper_dir):
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(tiny_whisper_dir / "config.json", folder / "config.json")
    result = askd("--set", f"teacher.path={folder}", "--set", "teacher.out_dir=teacher_out", "stage", "teacher")
    assert_clear_error(result, "is not a Whisper model folder", "no weights")


def test_teacher_not_whisper_in_a_real_process(tmp_path):
    """The same through `python -m components` (what `askd` runs): exit 2, one stderr line, no traceback."""
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    proc = subprocess.run(
        [sys.executable, "-m", "components", "--params", str(REPO / "params.yaml"), "--set", f"teacher.path={bert}",
         "--set", f"teacher.out_dir={tmp_path / 'out'}", "stage", "teacher"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: teacher: ") and "model_type='bert'" in lines[0]


# ---------------------------------------------------------------------------------------------------------------
# askd evaluate --manifest with missing / corrupt files


def test_evaluate_manifest_lists_every_missing_and_corrupt_file(askd, tmp_path, speech_clips, tiny_whisper_dir):
    shutil.copy(speech_clips[0].path, tmp_path / "good.wav")
    (tmp_path / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "m.csv").write_text("audio,text\ngood.wav,hello\nmissing.wav,x\ncorrupt.wav,y\nempty.wav,z\n")
    result = askd("evaluate", "--manifest", "m.csv", "--model", str(tiny_whisper_dir), "--out", "o.json")
    text = assert_clear_error(result, "3 of 4 audio files are missing or corrupt", lines=4)
    first, *listed = text.splitlines()
    assert first.startswith("error: evaluate: manifest m.csv:")
    assert [line.split(":")[2].strip() for line in listed] == ["missing.wav", "corrupt.wav", "empty.wav"]
    assert "good.wav" not in text and not Path("o.json").exists()


def test_evaluate_manifest_without_columns(askd, tmp_path, tiny_whisper_dir):
    (tmp_path / "m.csv").write_text("path,transcript\na.wav,hi\n")
    assert_clear_error(askd("evaluate", "--manifest", "m.csv", "--model", str(tiny_whisper_dir), "--out", "o.json"),
                       "needs 'audio' and 'text' columns")


def _latin1_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes("audio,text\na.wav,caf\xe9 au lait\n".encode("latin-1"))


def test_evaluate_manifest_not_utf8_names_the_file(askd, tmp_path, tiny_whisper_dir):
    _latin1_manifest(tmp_path)
    assert_clear_error(askd("evaluate", "--manifest", "m.csv", "--model", str(tiny_whisper_dir), "--out", "o.json"),
                       "m.csv", "not UTF-8", "line 2")


# ---------------------------------------------------------------------------------------------------------------
# `dvc exp run -S key=value` rewrites params.yaml with DVC's own writer (YAML 1.2, ruamel)


def test_params_written_by_dvc_exp_run_set_stay_valid(tmp_path):
    from dvc.utils.hydra import apply_overrides

    from components.settings import load_settings

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_overrides(str(params), ["prepare.seed=1"])  # what `dvc exp run -S prepare.seed=1` does to the file
    assert load_settings(params).prepare.seed == 1


# ---------------------------------------------------------------------------------------------------------------
# unwritable output: a clear one-line error, and nothing of an earlier good output is lost


@pytest.mark.parametrize("blocked", ["sysfs", "file"])
def test_unwritable_output_dir_is_one_line_and_keeps_the_previous_output(askd, bad_audio_dir, tmp_path, blocked):
    assert askd(*_prepare_args(bad_audio_dir.root)).exit_code == 0
    before = sorted(p.name for p in Path("data/prepared").iterdir())
    if blocked == "sysfs":  # not writable even for root (Operation not permitted)
        out = "/sys/askd-unwritable/prepared"
    else:  # a regular file where a folder must go
        (tmp_path / "a_file").write_text("x")
        out = str(tmp_path / "a_file" / "prepared")
    text = assert_clear_error(askd("--set", f"prepare.out_dir={out}", *_prepare_args(bad_audio_dir.root)),
                              "prepare:")
    assert "askd-unwritable" in text or "a_file" in text, text
    assert sorted(p.name for p in Path("data/prepared").iterdir()) == before  # the earlier output is untouched


def test_disk_full_is_one_line_keeps_the_previous_output_and_the_next_run_recovers(bad_audio_dir, tmp_path):
    """A real ENOSPC: a 32 MB tmpfs (private mount namespace, ``unshare -Urm``) filled up between two runs."""
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -Urm` (user + mount namespaces) to mount a small tmpfs")
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    askd = (f"{sys.executable} -m components --set prepare.source=folder --set prepare.input={bad_audio_dir.root} "
            f"--set prepare.out_dir={mnt}/prepared stage prepare")
    script = f"""
        mount -t tmpfs -o size=32m tmpfs {mnt} || exit 90
        {askd} > first.log 2>&1; echo "first=$?" >> rc.txt
        ls -lA {mnt}/prepared > before.txt
        dd if=/dev/zero of={mnt}/filler bs=64k 2>/dev/null  # the disk is full now
        {askd} > second.log 2>&1; echo "second=$?" >> rc.txt
        ls -lA {mnt}/prepared > after.txt; ls -A {mnt} > top.txt
        rm {mnt}/filler
        {askd} > third.log 2>&1; echo "third=$?" >> rc.txt
    """
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("ASKD_")}
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 90, proc.stderr
    rc = dict(line.split("=") for line in (tmp_path / "rc.txt").read_text().split())
    assert rc == {"first": "0", "second": "2", "third": "0"}, (rc, (tmp_path / "second.log").read_text())
    second = (tmp_path / "second.log").read_text()
    assert "Traceback" not in second
    errors = [line for line in second.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "free some space" in errors[0], second
    assert (tmp_path / "after.txt").read_text() == (tmp_path / "before.txt").read_text()  # nothing lost
    assert sorted((tmp_path / "top.txt").read_text().split()) == ["filler", "prepared"]  # no half-written folder
