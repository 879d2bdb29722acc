"""The prepare stage end to end: every local source, the bad-audio matrix, splits, atomic output."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import soundfile as sf

from components.prepare import SplitItem, assign_splits, normalize_text, prepare
from components.settings import PrepareSettings
from components.tts import SAMPLE_RATE_HZ
from tests.conftest import fault_seed, kill_after

REPO_ROOT = Path(__file__).resolve().parents[2]
KILL_WAIT_S = 120.0


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """The stage writes metrics/ and reports/ relative to the working directory."""
    monkeypatch.chdir(tmp_path)


def _load(out: Path):
    from datasets import load_from_disk

    return load_from_disk(str(out))


def _rows(ds) -> list[dict]:
    """All rows without decoding audio."""
    names = [c for c in ds.column_names if c != "audio"]
    return [dict(zip(names, vals)) for vals in zip(*(list(ds[c]) for c in names))]


def _skipped(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_metadata(path: Path, columns: list[str], rows: list[list], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)


def _corpus(root: Path, speech_clips, entries: list[tuple[str, str, str]]) -> list[list]:
    """Copy a speech clip to each file name; entries are (file_name, text, speaker)."""
    rows = []
    for i, (name, text, speaker) in enumerate(entries):
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(speech_clips[i % len(speech_clips)].path, dest)
        rows.append([name, text, speaker])
    return rows


# ---------------------------------------------------------------------------------------------
# sources


def test_synth_folder_split_column_honoured(tmp_path, speech_clips):
    root = tmp_path / "synth"
    splits = ["train"] * 4 + ["validation", "test", "test_ood", "test_longform"]
    rows = []
    for i, split in enumerate(splits):
        clip = speech_clips[i % len(speech_clips)]
        name = f"{split}/{i:06d}.wav"
        (root / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip.path, root / name)
        rows.append([name, clip.text, clip.speaker, split, "piper" if i % 2 else "espeak", "2.5"])
    _write_metadata(root / "metadata.csv", ["file_name", "text", "speaker", "split", "voice", "duration_s"], rows)

    metrics = prepare(PrepareSettings(source="synth", input=str(root), out_dir=tmp_path / "out"))
    dd = _load(tmp_path / "out")
    assert list(dd) == ["train", "validation", "test", "test_longform", "test_ood"]
    assert metrics["split_sizes"] == {"train": 4, "validation": 1, "test": 1, "test_longform": 1, "test_ood": 1}
    assert metrics["split_grouping"] == "given" and metrics["n_kept"] == 8 and metrics["audio_only"] == 0
    assert set(dd["train"].features) == {"id", "audio", "text", "has_text", "speaker", "duration_s", "source"}
    train = _rows(dd["train"])
    assert [r["id"] for r in train] == sorted(r["id"] for r in train)
    assert train[0]["id"] == "train/000000" and train[0]["text"] == speech_clips[0].text and train[0]["has_text"]
    assert train[0]["source"] == "train/000000.wav"
    # audio: 16-bit 16 kHz WAV bytes, decodable by datasets (torchcodec) too
    from datasets import Audio

    raw = dd["test_ood"].cast_column("audio", Audio(decode=False))[0]["audio"]
    import io

    info = sf.info(io.BytesIO(raw["bytes"]))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE_HZ, 1, "PCM_16")
    decoded = dd["test"][0]["audio"].get_all_samples()
    assert decoded.sample_rate == SAMPLE_RATE_HZ
    assert json.loads(Path("metrics/prepare.json").read_text())["n_kept"] == 8
    assert metrics["hours_by_split"]["train"] > 0


def test_missing_synth_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="askd data synth"):
        prepare(PrepareSettings(source="synth", input=str(tmp_path / "none"), out_dir=tmp_path / "out"))


def test_folder_with_metadata_custom_columns_latin1_nested_and_missing(tmp_path, speech_clips):
    root = tmp_path / "folder"
    rows = _corpus(root, speech_clips, [("a.wav", "first text", "s1"), ("b.flac", "second", "s2")])
    rows.append(["gone.wav", "never recorded", "s3"])
    _write_metadata(root / "metadata.csv", ["file_name", "sentence_text", "who"], rows)
    with (root / "metadata.csv").open("ab") as fh:  # one latin-1 (not UTF-8) line
        fh.write("c.wav,caf\u00e9 au lait,s1\n".encode("latin-1"))
    shutil.copyfile(speech_clips[2].path, root / "c.wav")
    nested = _corpus(root / "deep" / "er", speech_clips, [("d.wav", "nested text", "s4")])
    _write_metadata(root / "deep" / "er" / "metadata.csv", ["file_name", "sentence_text", "who"], nested)
    shutil.copyfile(speech_clips[3].path, root / "deep" / "unlisted.wav")
    (root / "notes.txt").write_text("ignored: not audio, not in metadata")

    cfg = PrepareSettings(
        source="folder", input=str(root), out_dir=tmp_path / "out", text_column="sentence_text", speaker_column="who"
    )
    metrics = prepare(cfg)
    assert metrics["n_in"] == 6 and metrics["n_kept"] == 5
    assert metrics["skipped_by_reason"] == {"missing": 1}
    assert metrics["text_encoding_fallback_lines"] == 1
    assert metrics["audio_only"] == 1
    dd = _load(tmp_path / "out")
    rows_by_id = {r["id"]: r for split in dd.values() for r in _rows(split)}
    assert set(rows_by_id) == {"a", "b", "c", "deep/er/d", "deep/unlisted"}
    assert rows_by_id["c"]["text"] == "caf\u00e9 au lait"
    assert rows_by_id["deep/er/d"]["speaker"] == "s4" and rows_by_id["deep/er/d"]["text"] == "nested text"
    assert rows_by_id["deep/unlisted"]["has_text"] is False and rows_by_id["deep/unlisted"]["text"] == ""
    assert [r["id"] for r in _skipped(tmp_path / "out" / "skipped.csv")] == ["gone"]


def test_audio_only_folder_is_flagged(tmp_path, speech_clips):
    root = tmp_path / "raw"
    root.mkdir()
    for i, clip in enumerate(speech_clips):
        shutil.copyfile(clip.path, root / f"clip{i}.wav")
    metrics = prepare(PrepareSettings(source="folder", input=str(root), out_dir=tmp_path / "out"))
    assert metrics["audio_only"] == metrics["n_kept"] == len(speech_clips)
    dd = _load(tmp_path / "out")
    rows = [r for split in dd.values() for r in _rows(split)]
    assert len(rows) == len(speech_clips) and not any(r["has_text"] for r in rows)
    assert all(r["text"] == "" and r["speaker"] == "" for r in rows)
    assert sum(1 for split in dd.values() if len(split)) == 3  # small inputs still fill every split


def test_csv_manifest(tmp_path, speech_clips):
    base = tmp_path / "m"
    _corpus(base / "audio", speech_clips, [(f"u{i}.wav", c.text, c.speaker) for i, c in enumerate(speech_clips)])
    _write_metadata(
        base / "manifest.csv",
        ["audio", "text", "speaker"],
        [[f"audio/u{i}.wav", c.text, c.speaker] for i, c in enumerate(speech_clips)],
    )
    metrics = prepare(PrepareSettings(source="manifest", input=str(base / "manifest.csv"), out_dir=tmp_path / "out"))
    assert metrics["n_kept"] == len(speech_clips) and metrics["n_skipped"] == 0 and metrics["audio_only"] == 0
    rows = {r["id"]: r for split in _load(tmp_path / "out").values() for r in _rows(split)}
    assert rows["audio/u1"]["text"] == speech_clips[1].text and rows["audio/u1"]["speaker"] == speech_clips[1].speaker


def test_jsonl_manifest_with_missing_file_and_custom_audio_column(tmp_path, speech_clips):
    base = tmp_path / "j"
    _corpus(base, speech_clips[:3], [(f"x{i}.wav", "", "") for i in range(3)])
    lines = [{"path": f"x{i}.wav", "text": speech_clips[i].text} for i in range(3)]
    lines.append({"path": "absent.wav", "text": "lost"})
    lines.append({"path": str(base / "x0.wav"), "text": "absolute path, own id", "id": "abs"})
    (base / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    cfg = PrepareSettings(source="manifest", input=str(base / "m.jsonl"), out_dir=tmp_path / "out", audio_column="path")
    metrics = prepare(cfg)
    assert metrics["n_in"] == 5 and metrics["n_kept"] == 4
    assert metrics["skipped_by_reason"] == {"missing": 1}
    skipped = _skipped(Path("reports/prepare_skipped.csv"))
    assert [(s["id"], s["reason"]) for s in skipped] == [("absent", "missing")]
    assert "absent.wav" in skipped[0]["detail"]


def test_hf_disk_dataset_with_paths(tmp_path, speech_clips):
    from datasets import Audio, Dataset

    ds = Dataset.from_dict(
        {
            "audio": [str(c.path) for c in speech_clips],
            "sentence": [c.text for c in speech_clips],
            "speaker_id": [i % 3 for i in range(len(speech_clips))],
        }
    ).cast_column("audio", Audio())
    ds.save_to_disk(str(tmp_path / "hf"))
    metrics = prepare(PrepareSettings(source="hf_disk", input=str(tmp_path / "hf"), out_dir=tmp_path / "out"))
    assert metrics["n_kept"] == len(speech_clips) and metrics["split_grouping"] == "text+speaker"
    rows = {r["id"]: r for split in _load(tmp_path / "out").values() for r in _rows(split)}
    assert rows["000002"]["text"] == speech_clips[2].text and rows["000002"]["speaker"] == "2"


def test_hf_disk_datasetdict_with_bytes_and_split_names(tmp_path, speech_clips):
    from datasets import Audio, Dataset, DatasetDict

    def part(clips, ids):
        return Dataset.from_dict(
            {"id": ids, "audio": [{"bytes": c.path.read_bytes(), "path": None} for c in clips], "text": [c.text for c in clips]}
        ).cast_column("audio", Audio())

    dd_in = DatasetDict({"train": part(speech_clips[:4], ["t0", "t1", "t2", "t3"]), "dev": part(speech_clips[4:], ["d0", "d1"])})
    dd_in.save_to_disk(str(tmp_path / "hfdd"))
    metrics = prepare(PrepareSettings(source="hf_disk", input=str(tmp_path / "hfdd"), out_dir=tmp_path / "out"))
    assert metrics["split_sizes"] == {"train": 4, "validation": 2, "test": 0}
    dd = _load(tmp_path / "out")
    assert dd["validation"]["id"] == ["d0", "d1"] and len(dd["test"]) == 0
    assert dd["validation"]["text"][1] == speech_clips[5].text


# ---------------------------------------------------------------------------------------------
# validation


def test_bad_audio_matrix(tmp_path, bad_audio_dir):
    metrics = prepare(PrepareSettings(source="folder", input=str(bad_audio_dir.root), out_dir=tmp_path / "out"))
    n_files = len(bad_audio_dir.expected_reasons) + len(bad_audio_dir.expected_kept)
    assert metrics["n_in"] == n_files
    assert metrics["n_kept"] == len(bad_audio_dir.expected_kept)
    assert metrics["n_skipped"] == len(bad_audio_dir.expected_reasons)
    assert metrics["skipped_by_reason"] == bad_audio_dir.reason_counts()
    assert metrics["skipped_by_reason"] == {
        "corrupt": 3, "empty": 1, "silent": 1, "too_long": 1, "too_short": 1, "zero_length": 1,
    }  # fmt: skip
    assert metrics["resampled"] == 1 and metrics["downmixed"] == 1
    skipped = _skipped(tmp_path / "out" / "skipped.csv")
    assert list(skipped[0]) == ["id", "source", "reason", "detail"]
    assert {s["source"]: s["reason"] for s in skipped} == bad_audio_dir.expected_reasons
    assert all(s["detail"] for s in skipped)
    assert Path("reports/prepare_skipped.csv").read_text() == (tmp_path / "out" / "skipped.csv").read_text()
    kept = {r["source"] for split in _load(tmp_path / "out").values() for r in _rows(split)}
    assert kept == set(bad_audio_dir.expected_kept)


def test_all_bad_input_raises_clear_error_after_report(tmp_path, bad_audio_dir):
    root = tmp_path / "allbad"
    root.mkdir()
    for name in ("corrupt.wav", "empty.wav", "silence.wav"):
        shutil.copyfile(bad_audio_dir.root / name, root / name)
    with pytest.raises(ValueError, match=r"no usable clips in .*allbad: 3 skipped \(corrupt=1, empty=1, silent=1\)"):
        prepare(PrepareSettings(source="folder", input=str(root), out_dir=tmp_path / "out"))
    assert len(_skipped(Path("reports/prepare_skipped.csv"))) == 3
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="0 skipped"):
        prepare(PrepareSettings(source="folder", input=str(tmp_path / "empty_dir"), out_dir=tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# splitting


def _paired_speaker_corpus(root: Path, speech_clips, n_pairs: int = 6, texts_per_pair: int = 3) -> None:
    """Speakers in pairs; each pair reads its own texts (both speakers read each text)."""
    entries = []
    for p in range(n_pairs):
        for t in range(texts_per_pair):
            text = f"Pair {p} sentence number {t}." if t else f"pair {p}  SENTENCE number {t}"
            for s in (2 * p, 2 * p + 1):
                entries.append((f"p{p}_t{t}_s{s}.wav", text if s % 2 else text.upper(), f"spk{s}"))
    _write_metadata(root / "metadata.csv", ["file_name", "text", "speaker"], _corpus(root, speech_clips, entries))


def test_splits_are_text_and_speaker_disjoint_and_deterministic(tmp_path, speech_clips):
    root = tmp_path / "corpus"
    _paired_speaker_corpus(root, speech_clips)
    cfg = PrepareSettings(source="folder", input=str(root), out_dir=tmp_path / "out1", validation_fraction=0.2, test_fraction=0.2)
    m1 = prepare(cfg)
    m2 = prepare(cfg.model_copy(update={"out_dir": tmp_path / "out2"}))
    assert m1["split_grouping"] == "text+speaker"
    assert m1["split_sizes"] == m2["split_sizes"] and all(m1["split_sizes"][s] > 0 for s in ("train", "validation", "test"))
    d1, d2 = _load(tmp_path / "out1"), _load(tmp_path / "out2")
    for split in d1:
        assert d1[split]["id"] == d2[split]["id"]
        assert d1[split]["text"] == d2[split]["text"]
    texts = {s: {normalize_text(t) for t in d1[s]["text"]} for s in d1}
    speakers = {s: set(d1[s]["speaker"]) for s in d1}
    for a in d1:
        for b in d1:
            if a < b:
                assert not texts[a] & texts[b], (a, b)
                assert not speakers[a] & speakers[b], (a, b)


def test_assign_splits_text_only_with_few_speakers_and_stable_when_adding():
    items = [SplitItem(f"r{i:03d}", f"Sentence {i // 2}!", "only-speaker", None) for i in range(200)]
    a1, grouping = assign_splits(items, 0.1, 0.1, seed=7)
    assert grouping == "text"
    for i in range(0, 200, 2):
        assert a1[f"r{i:03d}"] == a1[f"r{i + 1:03d}"]  # same normalised text -> same split
    assert {"train", "validation", "test"} == set(a1.values())
    more = items + [SplitItem(f"n{i:03d}", f"new sentence {i}", "only-speaker", None) for i in range(50)]
    a2, _ = assign_splits(more, 0.1, 0.1, seed=7)
    assert {k: a2[k] for k in a1} == a1
    a3, _ = assign_splits(items, 0.1, 0.1, seed=8)
    assert a3 != a1
    given = [SplitItem("x", "t", None, "test_ood"), *items[:4]]
    assert assign_splits(given, 0.1, 0.1, seed=7)[0]["x"] == "test_ood"


def test_normalize_text():
    assert normalize_text("  Hello, WORLD!  It's\tme. ") == "hello world its me"
    assert normalize_text("Caf\u00e9") == normalize_text("CAF\u00c9")


# ---------------------------------------------------------------------------------------------
# atomic output


def test_failure_inside_output_block_keeps_previous_dataset(tmp_path, speech_clips, monkeypatch):
    import components.prepare as prep

    root = tmp_path / "in"
    _corpus(root, speech_clips, [(f"c{i}.wav", "", "") for i in range(6)])
    out = tmp_path / "out"
    prepare(PrepareSettings(source="folder", input=str(root), out_dir=out))
    before = {s: _load(out)[s]["id"] for s in _load(out)}
    shutil.copyfile(speech_clips[0].path, root / "c9.wav")

    def broken(dest, *args):
        (Path(dest) / "train").mkdir()
        (Path(dest) / "train" / "half.arrow").write_bytes(b"partial")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(prep, "_save_dataset", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare(PrepareSettings(source="folder", input=str(root), out_dir=out))
    assert {s: _load(out)[s]["id"] for s in _load(out)} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert prepare(PrepareSettings(source="folder", input=str(root), out_dir=out))["n_kept"] == 7


def test_killed_cli_run_leaves_no_dataset_and_rerun_completes(tmp_path, speech_clips):
    root = tmp_path / "in"
    _corpus(root, speech_clips, [(f"c{i:02d}.wav", f"text {i}", f"s{i % 4}") for i in range(24)])
    _write_metadata(root / "metadata.csv", ["file_name", "text", "speaker"], [[f"c{i:02d}.wav", f"text {i}", f"s{i % 4}"] for i in range(24)])
    (tmp_path / "params.yaml").write_text(f"prepare:\n  source: folder\n  input: {root}\n  out_dir: {tmp_path / 'out'}\n")
    marker = tmp_path / "halfway"
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        import components.prepare as prep
        real, seen = prep.process_record, []
        def slow(record, cfg):
            seen.append(record.id)
            if len(seen) == 10:
                pathlib.Path({str(marker)!r}).touch()
                time.sleep(600)
            return real(record, cfg)
        prep.process_record = slow
        sys.argv = ["askd", "--params", "params.yaml", "stage", "prepare"]
        from components.cli import main
        main()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the subprocess never reached the middle of the run"
            time.sleep(0.1)
        assert (tmp_path / ".out.partial").is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not (tmp_path / "out").exists()
    # then a plain `askd stage prepare` killed at a random moment of its run
    cli = [sys.executable, "-m", "components", "--params", "params.yaml", "stage", "prepare"]
    started = time.monotonic()
    subprocess.run([*cli[:-2], "--set", f"prepare.out_dir={tmp_path / 'ref'}", *cli[-2:]], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=300)
    seed = fault_seed()
    kill_after(cli, random.Random(seed).uniform(0.1, 1.0) * (time.monotonic() - started), cwd=tmp_path, env=env)
    metrics = prepare(PrepareSettings(source="folder", input=str(root), out_dir=tmp_path / "out"))
    assert metrics["n_kept"] == 24
    assert not (tmp_path / ".out.partial").exists()
    assert sum(len(s) for s in _load(tmp_path / "out").values()) == 24
    ours, ref = _load(tmp_path / "out"), _load(tmp_path / "ref")  # the same as an uninterrupted run
    assert {k: _rows(v) for k, v in ours.items()} == {k: _rows(v) for k, v in ref.items()}, f"ASKD_FAULT_SEED={seed}"


def test_stage_output_has_no_stray_files(tmp_path, speech_clips):
    root = tmp_path / "in"
    _corpus(root, speech_clips, [(f"c{i}.wav", f"t{i}", "") for i in range(6)])
    _write_metadata(root / "metadata.csv", ["file_name", "text"], [[f"c{i}.wav", f"t{i}"] for i in range(6)])
    prepare(PrepareSettings(source="folder", input=str(root), out_dir=tmp_path / "out"))
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert "_work" not in names and not any("cache-" in n or "indices" in n for n in names)
    assert {"dataset_dict.json", "skipped.csv", "train", "validation", "test"} <= set(names)
    assert sorted(p.name for p in root.iterdir()) == sorted([*(f"c{i}.wav" for i in range(6)), "metadata.csv"])
