"""The test_real set: transcript parsing on real lines, the G.722 decode path, the stage on the installed packages,
and evaluate's guard that keeps it text-disjoint from training."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from components.audio import decode_audio
from components.evaluate import EvalSet, drop_training_overlap, load_test_sets
from components.real_speech import build_real_speech, parse_transcripts, read_transcripts, spoken_text
from components.settings import RealSpeechSettings
from components.text import normalize
from components.tts import SAMPLE_RATE_HZ

DEFAULTS = RealSpeechSettings()
G722_BYTES_PER_S = 8000  # G.722 at 64 kbit/s: 16,000 samples a second in 8,000 bytes

# verbatim lines of core-sounds-en.txt (asterisk-core-sounds-en 1.6.1)
REAL_LINES = """; Core Asterisk Sounds in English

activated: Activated.
agent-newlocation: Please enter a new extension, followed by pound.
beep: [this is a simple beep tone]
confbridge-join: <beep ascending>
digits/7: seven
digits/h-1: first
letters/at: at [@]
dictate/both_help: press * to toggle pause, press # to enter a new dictation filename
vm-Cust1: folder 5
silence/1: (1 second of silence)
spy-iax2: IAX (note: does not say "2")
""".splitlines()


def test_parser_reads_names_subfolders_and_non_speech_entries():
    prompts = {p.name: p.text for p in parse_transcripts(REAL_LINES)}
    assert list(prompts) == ["activated", "agent-newlocation", "beep", "confbridge-join", "digits/7", "digits/h-1",
                             "letters/at", "dictate/both_help", "vm-Cust1", "silence/1", "spy-iax2"]
    assert prompts["activated"] == "Activated."
    assert prompts["digits/7"] == "seven" and prompts["vm-Cust1"] == "folder 5"
    assert prompts["beep"] == "" and prompts["confbridge-join"] == ""  # descriptions of sounds, not speech
    assert prompts["letters/at"] == "at"  # the bracketed symbol is an annotation, not a spoken word
    assert prompts["silence/1"] == "" and prompts["spy-iax2"] == "IAX"
    assert prompts["dictate/both_help"] == "press star to toggle pause, press pound to enter a new dictation filename"
    assert spoken_text("  [monkeys screaming] ") == ""


def test_packaged_transcripts_parse_every_entry():
    prompts = read_transcripts(DEFAULTS.transcripts)
    raw = [ln for ln in gzip.open(DEFAULTS.transcripts, "rt").read().splitlines() if ln.strip() and ln[0] != ";"]
    assert len(prompts) == len(raw) > 500
    assert sum(not p.text for p in prompts) >= 5 and {"digits/7", "letters/z", "phonetic/z_p"} <= {p.name for p in prompts}


def test_g722_decodes_to_16khz_mono_of_the_file_length():
    path = DEFAULTS.audio_dir / "agent-pass.g722"
    audio, info = decode_audio(path)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert info.orig_sample_rate_hz == SAMPLE_RATE_HZ and info.orig_channels == 1
    assert len(audio) == path.stat().st_size * SAMPLE_RATE_HZ // G722_BYTES_PER_S
    assert 0.01 < float(np.sqrt(np.mean(audio ** 2))) < 0.5  # speech, not silence or noise at full scale


def _transcripts(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_stage_keeps_speech_and_counts_every_skip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = ["; header", "activated: Activated.", "digits/7: seven", "agent-pass: Please enter your password "
             "followed by the pound key.", "beep: [this is a simple beep tone]", "silence/1: 1 second of silence",
             "no-such-prompt: This file is not in the package."]
    cfg = RealSpeechSettings(transcripts=_transcripts(tmp_path, lines), out_dir=tmp_path / "real", max_clips=None)
    metrics = build_real_speech(cfg)
    assert metrics["kept"] == 3 and metrics["skipped"] == 3
    assert metrics["skipped_by_reason"] == {"non_speech": 1, "silent": 1, "no_audio": 1}
    assert json.loads((tmp_path / "metrics" / "real_speech.json").read_text())["kept"] == 3
    with (tmp_path / "real" / "skipped.csv").open() as fh:
        assert {r["name"]: r["reason"] for r in csv.DictReader(fh)} == {
            "beep": "non_speech", "silence/1": "silent", "no-such-prompt": "no_audio"}
    durations = metrics["durations"]
    assert durations["clips"] == 3 and 0 < durations["p50_s"] <= durations["max_s"] < 6
    assert set(durations["share_longer_than_window"]) == {"6", "10", "30"}

    (real,), missing = load_test_sets([tmp_path / "real"], ["test_real", "test"])
    assert missing == ["test"] and real.name == "test_real"
    assert real.references == ["Activated.", "seven", "Please enter your password followed by the pound key."]
    assert real.ids == ["real/activated", "real/digits/7", "real/agent-pass"]
    assert all(a.dtype == np.float32 and a.size > SAMPLE_RATE_HZ // 4 for a in real.audios)


def test_subset_is_seeded_and_missing_packages_name_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picks = []
    for run in range(2):
        cfg = RealSpeechSettings(out_dir=tmp_path / f"real{run}", max_clips=12, seed=3)
        build_real_speech(cfg)
        picks.append(load_test_sets([cfg.out_dir], ["test_real"])[0][0].ids)
    assert picks[0] == picks[1] and len(picks[0]) <= 12
    with pytest.raises(FileNotFoundError, match="real_speech.transcripts"):
        build_real_speech(RealSpeechSettings(transcripts=tmp_path / "none.txt.gz", out_dir=tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="real_speech.audio_dir"):
        build_real_speech(RealSpeechSettings(audio_dir=tmp_path / "none", out_dir=tmp_path / "x"))


def test_clips_whose_text_was_trained_on_are_dropped_and_counted():
    audio = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)
    s = EvalSet("test_real", ["a", "b", "c"], [audio] * 3, ["Thank you.", "Goodbye!", "Please hold."])
    kept, dropped = drop_training_overlap(s, {normalize("thank you"), normalize("please HOLD")})
    assert dropped == 2 and kept.ids == ["b"] and kept.references == ["Goodbye!"] and len(kept.audios) == 1
    assert drop_training_overlap(s, set())[1] == 0
