"""The inference API (components/inference.py), its output formats and `askd transcribe --format`, on the real
tiny.en teacher cut to a 10 s window (a student's shape) and its CTranslate2 int8 export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from components.inference import Model, Segment, Transcript, load_model, parse_reference
from components.text import wer
from components.transcript_formats import render
from components.tts import SAMPLE_RATE_HZ

REPO = Path(__file__).resolve().parents[2]
WINDOW_S = 10  # tests/conftest.py windowed_dir


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory, piper_clips) -> tuple[Path, str]:
    """All six Piper clips, 0.5 s apart: about 20 s, two to three windows of 10 s."""
    gap = np.zeros(SAMPLE_RATE_HZ // 2, dtype=np.float32)
    audio = np.concatenate([part for clip in piper_clips for part in (clip.audio, gap)]).clip(-1, 1)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, audio, SAMPLE_RATE_HZ, subtype="PCM_16")
    return path, " ".join(c.text for c in piper_clips)


def _check_segments(result: Transcript, reference: str) -> None:
    segs = result.segments
    assert len(segs) >= 2 and result.duration_s > WINDOW_S
    assert segs[0].start_s == 0 and segs[-1].end_s == pytest.approx(result.duration_s, abs=1e-3)
    assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:]))  # the cut points, no gap, no overlap
    assert all(s.end_s - s.start_s <= WINDOW_S + 1e-3 for s in segs)
    assert result.text == " ".join(s.text for s in segs)
    assert wer([reference], [result.text]) < 25.0


def test_long_audio_becomes_timed_segments_in_every_runtime(tmp_path, windowed_dir, long_clip):
    from components.ct2_export import export_ct2

    path, reference = long_clip
    fp32 = load_model(windowed_dir)
    assert fp32.window_s == WINDOW_S and fp32.form.kind == "transformers"
    _check_segments(fp32.transcribe(path), reference)
    export_ct2(windowed_dir, tmp_path / "ct2", quantization="int8")
    int8 = load_model(tmp_path / "ct2")
    assert int8.form.kind == "ct2_int8"
    _check_segments(int8.transcribe(path), reference)


def test_path_bytes_and_array_inputs_agree_in_one_batch(windowed_dir, piper_clips):
    model = load_model(windowed_dir)
    clip = piper_clips[0]
    results = model.transcribe_batch([clip.path, clip.path.read_bytes(), clip.audio.astype(np.float32)])
    assert len({r.text for r in results}) == 1 and wer([clip.text], [results[0].text]) < 20
    assert len(results[0].segments) == 1 and results[0].segments[0].start_s == 0


def test_formats_render_segments():
    t = Transcript("Hello there. Bye.", [Segment(0.0, 1.5, "Hello there."), Segment(1.5, 3723.25, "Bye.")], 3724.0)
    assert render(t, "text") == "Hello there. Bye.\n"
    assert json.loads(render(t, "json")) == {"text": "Hello there. Bye."}
    verbose = json.loads(render(t, "verbose_json"))
    assert verbose["duration"] == 3724.0 and verbose["segments"][1] == {"id": 1, "start": 1.5, "end": 3723.25,
                                                                       "text": "Bye."}
    assert render(t, "srt") == "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:00:01,500 --> 01:02:03,250\nBye.\n"
    assert render(t, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n")
    with pytest.raises(ValueError, match="unknown format"):
        render(t, "docx")


def test_registry_references_are_recognised():
    assert parse_reference("whisper-askd-student@production") == ("whisper-askd-student", "production")
    assert parse_reference("whisper-askd-student:3") == ("whisper-askd-student", "3")
    assert parse_reference("whisper-askd-student:v12") == ("whisper-askd-student", "v12")
    assert parse_reference("models/student") is None and parse_reference("a@b@c") is None


def test_cli_transcribe_formats(tmp_path, monkeypatch, windowed_dir, long_clip, piper_clips):
    from components.cli import app

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    path, _ = long_clip
    srt = runner.invoke(app, ["transcribe", "--model", str(windowed_dir), "--format", "srt", str(path)])
    assert srt.exit_code == 0, srt.output
    assert srt.stdout.startswith("1\n00:00:00,000 --> ") and "\n2\n" in srt.stdout
    js = runner.invoke(app, ["transcribe", "--model", str(windowed_dir), "--format", "json", str(path),
                             str(piper_clips[0].path)])
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(path), str(piper_clips[0].path)] and len(rows[0]["segments"]) >= 2
    many = runner.invoke(app, ["transcribe", "--model", str(windowed_dir), "--format", "vtt", str(path),
                               str(piper_clips[0].path)])
    assert many.exit_code == 2 and "needs --output-dir" in many.output
    out = runner.invoke(app, ["transcribe", "--model", str(windowed_dir), "--format", "vtt", "--output-dir", "subs",
                              str(path), str(piper_clips[0].path)])
    assert out.exit_code == 0 and (tmp_path / "subs" / "long.vtt").read_text().startswith("WEBVTT")
    bad = runner.invoke(app, ["transcribe", "--model", str(windowed_dir), "--format", "docx", str(path)])
    assert bad.exit_code == 2 and "is not one of text, json, srt, vtt" in bad.output


def test_model_wraps_any_loaded_form(windowed_dir):
    from components.export import load_form

    model = Model(load_form(windowed_dir))
    assert model.options.num_beams == 1 and model.source == str(windowed_dir)
