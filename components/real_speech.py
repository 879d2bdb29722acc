"""Stage `real_speech`: the `test_real` set, real human English speech that installs offline.

Source: the Asterisk PBX's English prompts as Debian packages them, one professional female voice (Allison
Smith) reading 568 telephone prompts, licensed CC-BY-SA 3.0 (Digium). The audio comes from
``asterisk-core-sounds-en-g722`` (G.722 wideband, 16 kHz, raw ``.g722`` files); the transcripts from
``asterisk-core-sounds-en`` (``core-sounds-en.txt.gz``: one ``name: text`` line per prompt; a name such as
``digits/7`` or ``letters/at`` is a file in a subfolder). G.722 is used, not the 8 kHz ``-wav`` package, because
FFmpeg (the project's decoder, through torchcodec) reads the raw ``.g722`` files by their extension and gives
16 kHz directly: the recordings keep their full 7 kHz band instead of a telephone band.

What is kept, and why (counted in ``metrics/real_speech.json``, listed in ``<out_dir>/skipped.csv``):

* ``non_speech``: a transcript that only describes a sound in brackets (``[this is a simple beep tone]``,
  ``<beep ascending>``, ``(1 second of silence)``) or is empty; annotations beside spoken words (``at [@]``,
  ``IAX (note: does not say "2")``, ``... (simple tone sound plays)``) are dropped from the text;
* ``no_audio``: a transcript line whose file is not in the audio package;
* ``too_short`` / ``silent`` / ``corrupt``: the audio check of :func:`components.audio.check_clip`.

The spoken keypad symbols are written as the voice says them (``*`` star, ``#`` pound), so the reference is
what was spoken; nothing else in the text is changed (Whisper's normaliser handles digits and punctuation at
scoring time). ``max_clips`` takes a seeded subset (the `quick` profile), otherwise every prompt is kept. Clips
longer than a model's window go through the product's own long-form path in `evaluate`; the duration summary
here says how many that is. The set never enters training: `evaluate` drops any clip whose text is also a
training transcript and reports how many (:func:`components.evaluate.drop_training_overlap`).
"""

from __future__ import annotations

import csv
import gzip
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.audio import AudioDecodeError, check_clip, clip_detail, decode_audio, encode_wav
from components.tts import SAMPLE_RATE_HZ

SPLIT = "test_real"
SPEAKER = "asterisk-allison"
REASON_NON_SPEECH = "non_speech"
REASON_NO_AUDIO = "no_audio"
LENGTH_MARKS_S = (6.0, 10.0, 30.0)  # duration summary: share of clips longer than each (the windows in use)

_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*):\s?(?P<text>.*)$")
_DESCRIPTION_ONLY = re.compile(r"^\s*(\[[^\]]*\]|<[^>]*>|\([^)]*\))\s*$")
_ANNOTATION = re.compile(r"\s*(\[[^\]]*\]|\([^)]*\))")
_SPOKEN_SYMBOLS = {"*": "star", "#": "pound"}


@dataclass(frozen=True)
class Prompt:
    """One transcript line: the prompt's file name (without extension, maybe in a subfolder) and its text.

    ``text`` is what the voice says; empty for an entry that is not speech."""

    name: str
    text: str


def spoken_text(raw: str) -> str:
    """The words of a transcript: bracketed annotations dropped, keypad symbols as spoken, spaces collapsed."""
    if _DESCRIPTION_ONLY.match(raw):
        return ""
    text = _ANNOTATION.sub("", raw)
    for symbol, word in _SPOKEN_SYMBOLS.items():
        text = text.replace(symbol, f" {word} ")
    return " ".join(text.split())


def parse_transcripts(lines) -> list[Prompt]:
    """Every prompt of a ``core-sounds-<lang>.txt`` file, in file order (comments and blank lines skipped)."""
    prompts = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        match = _LINE.match(line)
        if match:
            prompts.append(Prompt(match["name"], spoken_text(match["text"])))
    return prompts


def read_transcripts(path: Path) -> list[Prompt]:
    """:func:`parse_transcripts` of a plain or gzipped transcript file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        return parse_transcripts(fh)


def find_audio(audio_dir: Path, name: str, extensions: tuple[str, ...]) -> Path | None:
    """The prompt's file under ``audio_dir``, trying the extensions in order."""
    for ext in extensions:
        path = audio_dir / f"{name}.{ext}"
        if path.is_file():
            return path
    return None


def duration_summary(durations_s: list[float]) -> dict[str, Any]:
    """Clip-length distribution (:func:`components.report.clip_lengths` at the windows in :data:`LENGTH_MARKS_S`)
    plus the total hours and the 10th percentile."""
    from components.report import clip_lengths

    summary = clip_lengths(durations_s, list(LENGTH_MARKS_S))
    if durations_s:
        summary.update(hours=round(float(np.sum(durations_s)) / 3600, 4),
                       p10_s=round(float(np.percentile(durations_s, 10)), 2))
    return summary


def _check_sources(cfg) -> None:
    if not Path(cfg.transcripts).is_file():
        raise FileNotFoundError(f"real_speech.transcripts: no transcript file at '{cfg.transcripts}' (Debian package "
                                "asterisk-core-sounds-en; scripts/setup.sh installs it)")
    if not Path(cfg.audio_dir).is_dir():
        raise FileNotFoundError(f"real_speech.audio_dir: no folder at '{cfg.audio_dir}' (Debian package "
                                "asterisk-core-sounds-en-g722; scripts/setup.sh installs it)")


def _select(prompts: list[Prompt], max_clips: int | None, seed: int) -> list[Prompt]:
    if max_clips is None or max_clips >= len(prompts):
        return prompts
    keep = set(random.Random(seed).sample(range(len(prompts)), max_clips))
    return [p for i, p in enumerate(prompts) if i in keep]


def _load_clip(prompt: Prompt, cfg) -> tuple[np.ndarray | None, str, str]:
    """(audio, skip reason, detail); audio is None when the prompt is skipped."""
    if not prompt.text:
        return None, REASON_NON_SPEECH, "no spoken words in the transcript"
    path = find_audio(Path(cfg.audio_dir), prompt.name, tuple(cfg.audio_extensions))
    if path is None:
        return None, REASON_NO_AUDIO, f"no {'/'.join(cfg.audio_extensions)} file for it in {cfg.audio_dir}"
    try:
        audio, _ = decode_audio(path)
    except AudioDecodeError as err:
        return None, err.reason, err.detail
    reason = check_clip(audio, cfg)
    if reason is not None:
        return None, reason, clip_detail(audio, reason)
    return audio, "", ""


def build_real_speech(cfg) -> dict[str, Any]:
    """Decode, check and save the prompts as a DatasetDict with one split, ``test_real``; returns the metrics."""
    from datasets import Dataset, DatasetDict

    from components.artifacts import atomic_dir, write_metrics
    from components.prepare import dataset_features

    started = time.perf_counter()
    _check_sources(cfg)
    prompts = read_transcripts(Path(cfg.transcripts))
    chosen = _select(prompts, cfg.max_clips, cfg.seed)
    rows: dict[str, list] = {k: [] for k in dataset_features()}
    skipped: list[tuple[str, str, str]] = []
    for prompt in chosen:
        audio, reason, detail = _load_clip(prompt, cfg)
        if audio is None:
            skipped.append((prompt.name, reason, detail))
            continue
        row = {"id": f"real/{prompt.name}", "text": prompt.text, "has_text": True, "speaker": SPEAKER,
               "audio": {"bytes": encode_wav(audio), "path": f"{prompt.name.replace('/', '__')}.wav"},
               "duration_s": round(audio.size / SAMPLE_RATE_HZ, 4), "source": "asterisk-core-sounds-en-g722"}
        for key, value in row.items():
            rows[key].append(value)
    if not rows["id"]:
        raise ValueError(f"real_speech: none of the {len(chosen)} prompts is usable (see the skip reasons)")
    with atomic_dir(Path(cfg.out_dir)) as tmp:
        DatasetDict({SPLIT: Dataset.from_dict(rows, features=dataset_features())}).save_to_disk(str(tmp))
        with (tmp / "skipped.csv").open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([("name", "reason", "detail"), *skipped])
    metrics = {
        "split": SPLIT, "transcript_entries": len(prompts), "selected": len(chosen), "kept": len(rows["id"]),
        "skipped": len(skipped), "skipped_by_reason": dict(Counter(r for _, r, _ in skipped)),
        "durations": duration_summary(rows["duration_s"]), "seconds": round(time.perf_counter() - started, 1),
    }
    write_metrics("real_speech", metrics)
    return metrics
