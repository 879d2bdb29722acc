"""End-to-end synthesis of a tiny corpus (real Piper and espeak-ng): layout, metadata, audio format,
determinism across worker counts, and resuming an interrupted run. About 30 s on 2 cores."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import soundfile as sf

from components import synth as synth_mod
from components.settings import SynthSettings
from components.tts import espeak_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed"),
    pytest.mark.skipif(not Path("/usr/share/games/fortunes").is_dir(), reason="fortunes not installed"),
]

SIZES = {"train": 4, "validation": 2, "test": 2, "test_ood": 2, "test_longform": 1}
LONGFORM_S = (6.0, 9.0)


def _cfg(out_dir: Path, workers: int) -> SynthSettings:
    return SynthSettings(
        seed=99,
        out_dir=out_dir,
        n_train=SIZES["train"],
        n_validation=SIZES["validation"],
        n_test=SIZES["test"],
        n_test_ood=SIZES["test_ood"],
        n_test_longform=SIZES["test_longform"],
        longform_min_s=LONGFORM_S[0],
        longform_max_s=LONGFORM_S[1],
        workers=workers,
    )


def _read_metadata(out_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(out_dir / "metadata.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _audio_digests(out_dir: Path, rows: list[dict[str, str]]) -> dict[str, str]:
    return {r["file_name"]: hashlib.sha256((out_dir / r["file_name"]).read_bytes()).hexdigest() for r in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """One run with 2 worker processes."""
    root = tmp_path_factory.mktemp("synth")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        metrics = synth_mod.synthesize(_cfg(root / "data" / "synth", workers=2))
    return root, metrics


def test_layout_metadata_and_audio(corpus) -> None:
    root, metrics = corpus
    out = root / "data" / "synth"
    columns, rows = _read_metadata(out)
    assert columns == ["file_name", "text", "speaker", "split", "voice", "duration_s", "conditions"]
    assert {s: sum(r["split"] == s for r in rows) for s in SIZES} == SIZES
    assert sorted(p.name for p in out.iterdir()) == ["audio", "metadata.csv"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == sorted(r["file_name"] for r in rows)
    assert not list(root.joinpath("data").glob("synth.partial-*")), "work folder left behind"

    for r in rows:
        assert r["file_name"] == f"audio/{r['split']}/{Path(r['file_name']).name}"
        info = sf.info(out / r["file_name"])
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert abs(info.frames / 16_000 - float(r["duration_s"])) < 1e-3
        audio, _ = sf.read(out / r["file_name"], dtype="float32")
        assert 0.5 < abs(audio).max() <= 1.0
        if r["split"] == "test_ood":
            assert (r["voice"], r["speaker"][:7]) == ("espeak-ng", "espeak-")
        else:
            assert (r["voice"], r["speaker"]) == ("piper", "piper-joe")
        if r["split"] == "test_longform":
            assert LONGFORM_S[0] <= float(r["duration_s"]) <= LONGFORM_S[1]
            assert r["text"].count(" ") > 8
        else:
            assert 0.8 < float(r["duration_s"]) < 15.0
    assert [r["speaker"] for r in rows if r["split"] == "test_ood"] == ["espeak-en-us", "espeak-en-gb"]

    # text-disjoint splits (long-form text is several sentences joined with spaces)
    by_split = {s: [r["text"].lower() for r in rows if r["split"] == s] for s in SIZES}
    singles = [t for s in ("train", "validation", "test", "test_ood") for t in by_split[s]]
    assert len(singles) == len(set(singles))
    assert not any(t in lf for t in singles for lf in by_split["test_longform"])

    assert metrics["clips"] == SIZES and metrics["clips_total"] == sum(SIZES.values())
    assert metrics["sentences_usable"] > 8000
    assert metrics["voices"] == {"espeak-en-gb": 1, "espeak-en-us": 1, "piper-joe": 9}
    assert metrics["hours_total"] > 0 and metrics["seconds"] > 0
    assert json.loads((root / "metrics" / "synth.json").read_text()) == metrics


def test_resume_and_determinism_across_workers(corpus, tmp_path: Path, monkeypatch) -> None:
    """Interrupt a single-process run after two chunks, resume it: the finished chunks are reused and
    the corpus is bit-identical to the 2-worker run (same seed)."""
    root, metrics = corpus
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data" / "synth"
    real_run_chunk = synth_mod.run_chunk
    calls: list[str] = []

    def interrupted(job, work_dir):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(job.chunk_id)
        return real_run_chunk(job, work_dir)

    monkeypatch.setattr(synth_mod, "run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth_mod.synthesize(_cfg(out, workers=1))
    assert not out.exists(), "an interrupted run must not leave a (half) corpus"
    (work,) = out.parent.glob("synth.partial-*")
    kept = sorted(work.rglob("*.wav"))
    assert len(kept) == SIZES["train"] + SIZES["validation"]  # chunks: train, validation
    inodes = {str(p.relative_to(work)): p.stat().st_ino for p in kept}

    calls.clear()
    def counted(job, work_dir):
        calls.append(job.chunk_id)
        return real_run_chunk(job, work_dir)

    monkeypatch.setattr(synth_mod, "run_chunk", counted)
    resumed = synth_mod.synthesize(_cfg(out, workers=1))
    assert not any(c.startswith(("train", "validation")) for c in calls), calls
    assert resumed["clips_reused"] == len(kept)
    for rel, ino in inodes.items():  # the very same files, hard-linked into place
        assert (out / rel).stat().st_ino == ino

    _, rows_a = _read_metadata(root / "data" / "synth")
    _, rows_b = _read_metadata(out)
    assert rows_a == rows_b
    assert _audio_digests(root / "data" / "synth", rows_a) == _audio_digests(out, rows_b)
    assert resumed["settings_hash"] == metrics["settings_hash"]  # `workers` does not change the hash
