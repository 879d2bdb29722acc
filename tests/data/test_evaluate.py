"""The evaluate stage on tiny random Whisper models: int8 export round trip, manifests, CLI, end to end."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from components.evaluate import ManifestError, load_manifest, run_evaluate
from components.export import export_torch_int8, load_form, quantize_int8
from components.gate import decide
from components.settings import EvalSettings, GateSettings
from components.tts import SAMPLE_RATE_HZ
from tests.conftest import fault_seed, kill_after

REPO = Path(__file__).resolve().parents[2]
STUDENT_WINDOW_S = 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def eval_prepared_dir(tmp_path_factory, piper_clips) -> Path:
    """A prepared dataset with the three test sets: test (3 clips), test_ood (2), test_longform (1 clip ~20 s)."""
    from components.prepare import prepare
    from components.settings import PrepareSettings

    root = tmp_path_factory.mktemp("evalprep")
    src = root / "corpus"
    src.mkdir()
    rows = [["file_name", "text", "speaker", "split"]]
    for i, clip in enumerate(piper_clips):
        split = "test" if i < 3 else "test_ood" if i < 5 else "train"
        shutil.copyfile(clip.path, src / f"clip{i}.wav")
        rows.append([f"clip{i}.wav", clip.text, clip.speaker, split])
    gap = np.zeros(SAMPLE_RATE_HZ // 4, dtype=np.float32)
    longform = np.concatenate([part for clip in piper_clips for part in (clip.audio, gap)]).clip(-1, 1)
    sf.write(src / "long.wav", longform, SAMPLE_RATE_HZ, subtype="PCM_16")
    rows.append(["long.wav", " ".join(c.text for c in piper_clips), "piper-joe", "test_longform"])
    with (src / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = root / "prepared"
    cwd = os.getcwd()
    os.chdir(root)  # the stage writes metrics/ and reports/ relative to the working directory
    try:
        prepare(PrepareSettings(source="folder", input=str(src), out_dir=out))
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """test_real with 2 real prompts (the installed Asterisk packages), as the real_speech stage writes it."""
    import gzip

    from components.real_speech import build_real_speech
    from components.settings import RealSpeechSettings

    root = tmp_path_factory.mktemp("real")
    transcripts = root / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt") as fh:
        fh.write("activated: Activated.\nagent-pass: Please enter your password followed by the pound key.\n")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        build_real_speech(RealSpeechSettings(transcripts=transcripts, out_dir=root / "real", max_clips=None))
    finally:
        os.chdir(cwd)
    return root / "real"


@pytest.fixture(scope="module")
def tiny_student_dir(tmp_path_factory, tiny_whisper_dir) -> Path:
    """The tiny random Whisper with a 5 s encoder window (a shortened-window 'student')."""
    from components.train.student import shorten_window
    from components.whisper_io import load_whisper

    model, processor = load_whisper(tiny_whisper_dir)
    model, processor = shorten_window(model, processor, STUDENT_WINDOW_S)
    out = tmp_path_factory.mktemp("tiny_student") / "student"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _cli(tmp_path: Path, monkeypatch, *args: str):
    from components.cli import app

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(app, ["--set", "evaluate.max_new_tokens=8", *args])


def test_torch_int8_is_close_to_float_and_the_export_round_trips(tmp_path, tiny_whisper_dir, piper_clips):
    form = load_form(tiny_whisper_dir, "tiny")
    qmodel = quantize_int8(form.model)
    assert qmodel is not form.model
    assert isinstance(qmodel.proj_out, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(form.model.proj_out, torch.nn.Linear)  # the float model is untouched
    audios = [c.audio for c in piper_clips[:3]]
    feats = form.processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
    gen = form.model.generation_config
    prompt = torch.tensor([[gen.decoder_start_token_id, gen.no_timestamps_token_id]] * len(audios))
    with torch.inference_mode():
        ref = form.model(input_features=feats, decoder_input_ids=prompt).logits
        got = qmodel(input_features=feats, decoder_input_ids=prompt).logits
    rel = float((got - ref).norm() / ref.norm())
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1)).min().item()
    assert rel < 0.05 and cos > 0.995, (rel, cos)

    out = export_torch_int8(tiny_whisper_dir, tmp_path / "tiny-torch_int8")
    loaded = load_form(out)
    assert loaded.kind == "torch_int8" and loaded.params == form.params and loaded.bytes > 0
    in_memory = type(form)("q", "torch_int8", None, form.processor, model=qmodel)
    options = {"batch_size": 3, "max_new_tokens": 8}
    assert loaded.generate(audios, **options) == in_memory.generate(audios, **options)
    forced = loaded.generate(audios, min_new_tokens=5, **{**options, "max_new_tokens": 5})
    assert [len(ids) for ids, _ in forced] == [5, 5, 5]


def test_manifest_with_missing_and_corrupt_files_lists_them_all(tmp_path, monkeypatch, piper_clips, tiny_whisper_dir):
    (tmp_path / "sub").mkdir()
    shutil.copy(piper_clips[0].path, tmp_path / "good.wav")
    shutil.copy(piper_clips[1].path, tmp_path / "sub" / "good2.wav")
    (tmp_path / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = [["audio", "text"], ["good.wav", piper_clips[0].text], ["missing.wav", "x"], ["corrupt.wav", "y"],
            ["sub/good2.wav", piper_clips[1].text], ["empty.wav", "z"]]
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    message = str(info.value)
    assert "3 of 5 audio files are missing or corrupt" in message
    for line, name in ((3, "missing.wav"), (4, "corrupt.wav"), (6, "empty.wav")):
        assert f"line {line}: {name}" in message
    assert "good" not in message

    result = _cli(tmp_path, monkeypatch, "evaluate", "--manifest", str(manifest), "--model", str(tiny_whisper_dir),
                  "--out", str(tmp_path / "out.json"))
    assert result.exit_code == 2
    assert all(name in result.output for name in ("missing.wav", "corrupt.wav", "empty.wav"))
    assert "Traceback" not in result.output and not (tmp_path / "out.json").exists()

    (tmp_path / "nocols.csv").write_text("path,transcript\ngood.wav,hi\n")
    with pytest.raises(ManifestError, match="'audio' and 'text' columns"):
        load_manifest(tmp_path / "nocols.csv")


def test_cli_evaluate_manifest_and_transcribe(tmp_path, monkeypatch, piper_clips, tiny_whisper_dir):
    for i, clip in enumerate(piper_clips[:2]):
        shutil.copy(clip.path, tmp_path / f"a{i}.wav")
    (tmp_path / "m.csv").write_text("audio,text\n" + "".join(f"a{i}.wav,\"{c.text}\"\n"
                                                                for i, c in enumerate(piper_clips[:2])))
    int8 = export_torch_int8(tiny_whisper_dir, tmp_path / "tiny-int8")
    result = _cli(tmp_path, monkeypatch, "evaluate", "--manifest", "m.csv", "--model", str(tiny_whisper_dir),
                  "--model", str(int8), "--out", "res.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "res.json").read_text())
    assert set(saved["forms"]) == {tiny_whisper_dir.name, "tiny-int8"}
    assert saved["forms"]["tiny-int8"]["kind"] == "torch_int8"
    for form in saved["forms"].values():
        assert {"wer", "cer", "insertion_rate", "empty_rate", "repeated_ngram_rate"} <= set(form["metrics"])
        assert len(form["predictions"]) == 2
    assert saved["protocol"]["decode"]["max_new_tokens"] == 8 and "normaliser" in saved["protocol"]

    result = _cli(tmp_path, monkeypatch, "transcribe", "--model", str(tiny_whisper_dir), "a0.wav", "a1.wav")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert [line.split("\t")[0] for line in lines] == ["a0.wav", "a1.wav"]


def test_evaluate_stage_end_to_end(tmp_path, monkeypatch, eval_prepared_dir, real_dir, tiny_whisper_dir,
                                   tiny_student_dir):
    pytest.importorskip("ctranslate2")
    monkeypatch.chdir(tmp_path)
    cfg = EvalSettings(max_new_tokens=8, batch_size=4, speed_clips=2, speed_rounds=2, speed_batch_size=2,
                       exports=("torch_int8", "ct2_int8"), exports_dir=tmp_path / "exports",
                       reports_dir=tmp_path / "reports")
    summary = run_evaluate(cfg, tiny_whisper_dir, tiny_student_dir, eval_prepared_dir, real_dir=real_dir)
    assert summary["exports"] == {"student_torch_int8": "ok", "student_ct2_int8": "ok", "teacher_ct2_int8": "ok"}
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    forms = metrics["forms"]
    assert set(forms) == {"teacher", "student", "student_torch_int8", "student_ct2_int8", "teacher_ct2_int8"}
    assert metrics["missing_sets"] == []
    for form in forms.values():
        assert set(form["sets"]) == {"test", "test_ood", "test_longform", "test_real"}
        for m in form["sets"].values():
            assert {"wer", "cer", "insertion_rate", "empty_rate", "repeated_ngram_rate", "hallucination_rate"} <= set(m)
    assert forms["teacher"]["window_s"] == 30 and forms["student_ct2_int8"]["window_s"] == STUDENT_WINDOW_S
    assert [forms[f]["sets"]["test"]["clips"] for f in forms] == [3] * 5
    assert [forms[f]["sets"]["test_real"]["clips"] for f in forms] == [2] * 5
    assert metrics["training_overlap_dropped"] == {"test": 0, "test_ood": 0, "test_longform": 0, "test_real": 0}
    lengths = metrics["set_lengths"]
    assert lengths["test_longform"]["share_longer_than_window"] == {"5": 1.0, "30": 0.0}
    assert lengths["test_real"]["clips"] == 2 and 0 < lengths["test_real"]["p50_s"] <= lengths["test_real"]["max_s"]
    # the ~20 s clip fits the teacher's window but is chunked for every 5 s form
    assert forms["teacher"]["sets"]["test_longform"]["chunked_clips"] == 0
    assert forms["teacher_ct2_int8"]["sets"]["test_longform"]["chunked_clips"] == 0
    assert all(forms[f]["sets"]["test_longform"]["chunked_clips"] == 1 for f in forms if "teacher" not in f)
    assert set(metrics["wer_delta_points"]) == set(forms) - {"teacher"}

    speed = metrics["speed"]
    keys = {"natural_b1", "natural_b2", "fixed_b1", "fixed_b2"}
    assert set(speed["speedup"]) == set(forms) - {"teacher"}
    assert all(set(v) == keys for v in speed["speedup"].values())
    same = speed["speedup_same_runtime"]  # each student form vs the teacher in the same runtime and precision
    assert {k: v["versus"] for k, v in same.items()} == {"student": "teacher", "student_ct2_int8": "teacher_ct2_int8"}
    ratio = speed["forms"]["teacher_ct2_int8"]["natural_b1"]["seconds"] / speed["forms"]["student_ct2_int8"]["natural_b1"]["seconds"]
    assert same["student_ct2_int8"]["natural_b1"] == pytest.approx(ratio, rel=1e-2)
    for key in ("fixed_b1", "fixed_b2"):  # every form decodes exactly the teacher's token count
        assert len({speed["forms"][f][key]["tokens"] for f in forms}) == 1
    assert all(len(speed["forms"][f]["natural_b1"]["rounds_s"]) == 2 for f in forms)
    assert speed["size"]["student_torch_int8"]["params"] == speed["size"]["student"]["params"]
    proto = metrics["protocol"]
    assert {"normaliser", "decode", "longform", "hardware", "packages"} <= set(proto)
    assert proto["packages"]["torch"] and proto["hardware"]["torch_threads"] >= 1

    report = (tmp_path / "reports" / "evaluation.md").read_text()
    for needle in ("test_longform", "student_ct2_int8", "speed-up fixed_b1", "eval_wer.png", "Same runtime",
                   "Clip lengths per set", "> 5 s window"):
        assert needle in report
    for png in ("eval_wer.png", "eval_wer_vs_speed.png"):
        assert (tmp_path / "reports" / png).read_bytes()[:8] == PNG_MAGIC
    with (tmp_path / "reports" / "eval_predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 5 * 8
    import yaml

    card = (tmp_path / "exports" / "student-ct2_int8" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["pipeline_tag"] == "automatic-speech-recognition" and meta["library_name"] == "ctranslate2"
    results = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in meta["model-index"][0]["results"]}
    assert results == {s: forms["student_ct2_int8"]["sets"][s]["wer"] for s in forms["student_ct2_int8"]["sets"]}
    assert "load_model" in card and (tmp_path / "reports" / "model_card.md").read_text().startswith("---\n")
    assert load_form(tmp_path / "exports" / "student-torch_int8").kind == "torch_int8"
    assert load_form(tmp_path / "exports" / "student-ct2_int8").kind == "ct2_int8"

    decision = decide(metrics, GateSettings())
    assert len(decision["checks"]) == 9 and all(line.split()[0] in {"PASS", "FAIL"} for line in decision["checks"])


def test_prepared_dataset_without_test_sets_is_a_clear_error(tmp_path, prepared_speech_dir):
    with pytest.raises(ValueError, match="none of the evaluate.sets"):
        run_evaluate(EvalSettings(), tmp_path / "t", tmp_path / "s", prepared_speech_dir)


def _eval_cmd(root: Path, teacher: Path, student: Path, prepared: Path) -> list[str]:
    sets = {"teacher.out_dir": teacher, "train.out_dir": student, "prepare.out_dir": prepared,
            "evaluate.max_new_tokens": 8, "evaluate.batch_size": 4, "evaluate.speed_clips": 2,
            "evaluate.speed_rounds": 1, "evaluate.speed_batch_size": 2, "evaluate.exports_dir": root / "exports",
            "evaluate.reports_dir": root / "reports",
            "evaluate.speed_isolation": "runtime"}  # still spawned timing workers, 2 instead of 4
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return [sys.executable, "-m", "components", "--params", str(root / "params.yaml"),
            *[arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")], "stage", "evaluate"]


def _quality(root: Path) -> dict:
    """Everything of metrics/eval.json that does not depend on timing."""
    forms = json.loads((root / "metrics" / "eval.json").read_text())["forms"]
    return {name: {s: {k: v for k, v in m.items() if k != "decode_seconds"} for s, m in f["sets"].items()}
            for name, f in forms.items()}


def test_evaluate_killed_at_random_points_then_rerun_matches_an_uninterrupted_run(
        tmp_path, eval_prepared_dir, tiny_whisper_dir, tiny_student_dir):
    pytest.importorskip("ctranslate2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    started = time.monotonic()
    subprocess.run(_eval_cmd(ref, tiny_whisper_dir, tiny_student_dir, eval_prepared_dir), cwd=ref, env=env,
                   check=True, capture_output=True, timeout=600)
    duration = time.monotonic() - started
    seed = fault_seed()
    rng = random.Random(seed)
    points = sorted(rng.uniform(0.15, 0.95) * duration for _ in range(2))
    cmd = _eval_cmd(run, tiny_whisper_dir, tiny_student_dir, eval_prepared_dir)
    for point in points:  # SIGKILL at a random moment (imports, exports, decoding, speed or writing)
        kill_after(cmd, point, cwd=run, env=env)
    subprocess.run(cmd, cwd=run, env=env, check=True, capture_output=True, timeout=600)

    where = f"(ASKD_FAULT_SEED={seed}, kills at {[round(p, 1) for p in points]} s of {duration:.1f} s)"
    assert _quality(run) == _quality(ref), where
    for name in ("eval_predictions.csv",):
        assert (run / "reports" / name).read_text() == (ref / "reports" / name).read_text(), where
    assert {p.name for p in (run / "exports").iterdir()} == {p.name for p in (ref / "exports").iterdir()}, where
    for export in ("student-torch_int8", "student-ct2_int8", "teacher-ct2_int8"):
        assert load_form(run / "exports" / export).kind in {"torch_int8", "ct2_int8"}, where
    visible = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert visible(run / "reports") == visible(ref / "reports"), where
