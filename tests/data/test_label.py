"""The label stage: real teacher labels + filter, audio-only path, kill-and-resume, multilingual forcing."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import yaml

from components.label import pseudo_label
from components.settings import LabelSettings
from tests.conftest import fault_seed, kill_after

LOOSE = {"wer_threshold_percent": 1e9, "max_repeated_ngram_fraction": 1.0, "max_tokens_per_s": 1e9}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_real_teacher_labels_filters_and_audio_only(tmp_path, monkeypatch, teacher_dir, prepared_speech_dir):
    monkeypatch.chdir(tmp_path)
    cfg = LabelSettings(out_dir=tmp_path / "labelled", work_dir=tmp_path / "work", batch_size=4, shard_size=2)
    before = sorted(p.relative_to(prepared_speech_dir) for p in prepared_speech_dir.rglob("*"))
    metrics = pseudo_label(cfg, teacher_dir, prepared_speech_dir)
    # the input (a DVC output of `prepare`) is read-only for this stage: no cache files written into it
    assert sorted(p.relative_to(prepared_speech_dir) for p in prepared_speech_dir.rglob("*")) == before

    rows = _csv_rows(tmp_path / "labelled" / "labels.csv")
    prepared = datasets.load_from_disk(str(prepared_speech_dir))
    assert len(rows) == sum(len(prepared[s]) for s in cfg.splits) == 6
    statuses = {r["status"] for r in rows}
    assert "kept_audio_only" in statuses  # clip 5 has no transcript: no WER filter, counted
    audio_only = [r for r in rows if r["status"] == "kept_audio_only"]
    assert len(audio_only) == 1 and audio_only[0]["wer_vs_reference"] == ""
    for r in rows:
        if r["status"] == "kept":
            assert float(r["wer_vs_reference"]) <= cfg.wer_threshold_percent
        if r["status"] == "wer":
            assert float(r["wer_vs_reference"]) > cfg.wer_threshold_percent

    labelled = datasets.load_from_disk(str(tmp_path / "labelled"))
    kept_total = sum(len(labelled[s]) for s in labelled)
    assert kept_total == metrics["kept"] == sum(r["status"].startswith("kept") for r in rows)
    for split in labelled:
        for ex in labelled[split].select_columns(["teacher_text", "teacher_tokens", "label_status"]):
            assert ex["teacher_text"] and ex["teacher_tokens"] and ex["label_status"].startswith("kept")

    # the teacher really transcribes: at least the easiest espeak sentence survives the 10 % filter
    assert sum(r["status"] == "kept" for r in rows) >= 1
    tr = metrics["splits"]["train"]
    assert tr["kept_audio_only"] + sum(tr["dropped_by_reason"].values()) + (tr["kept"] - tr["kept_audio_only"]) == tr["labelled"]
    assert 0 <= tr["teacher_wer_percent"] < 100
    assert metrics["protocol"]["num_beams"] == 1 and metrics["protocol"]["length_sorted"]
    assert (tmp_path / "metrics" / "label.json").is_file()

    # a second run reuses every shard and gives the same output; a stricter filter re-filters without relabelling
    again = pseudo_label(cfg, teacher_dir, prepared_speech_dir)
    assert again["labelled_this_run"] == 0 and again["resumed_clips"] == 6 and again["kept"] == metrics["kept"]
    strict = pseudo_label(cfg.model_copy(update={"wer_threshold_percent": 0.0}), teacher_dir, prepared_speech_dir)
    assert strict["labelled_this_run"] == 0 and strict["kept"] <= metrics["kept"]


def _params_file(tmp: Path, model_dir: Path, prepared: Path, **label) -> Path:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["teacher"]["out_dir"] = str(model_dir)
    params["prepare"]["out_dir"] = str(prepared)
    params["label"].update(
        {"out_dir": str(tmp / "labelled"), "work_dir": str(tmp / "work"), **label}
    )
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _label_cmd(params: Path) -> list[str]:
    return [sys.executable, "-m", "components", "--params", str(params), "stage", "label"]


def _snapshot(out: Path) -> tuple[list[dict[str, str]], dict[str, list]]:
    ds = datasets.load_from_disk(str(out))
    cols = ["id", "teacher_text", "teacher_tokens", "label_status"]
    return _csv_rows(out / "labels.csv"), {s: ds[s].select_columns(cols).to_list() for s in ds}


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, tiny_whisper_dir, speech_clips):
    from tests.conftest import make_prepared_dataset

    prepared = make_prepared_dataset(tmp_path / "data", speech_clips, copies=4)  # 24 clips
    options = {**LOOSE, "shard_size": 1, "batch_size": 1, "max_new_tokens": 24}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    # uninterrupted reference run
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    started = time.monotonic()
    subprocess.run(_label_cmd(_params_file(ref_dir, tiny_whisper_dir, prepared, **options)),
                   cwd=ref_dir, env=env, check=True, capture_output=True, timeout=300)
    ref_s = time.monotonic() - started

    # a run killed (SIGKILL) after its first shards, then started again
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    params = _params_file(run_dir, tiny_whisper_dir, prepared, **options)
    proc = subprocess.Popen(_label_cmd(params), cwd=run_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    shards_at_kill = 0
    while time.monotonic() < deadline and proc.poll() is None:
        shards_at_kill = len(list((run_dir / "work").rglob("shard-*.jsonl")))
        if shards_at_kill >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 3 <= shards_at_kill < 24
    assert not (run_dir / "labelled").exists()  # nothing half-written is visible
    seed = fault_seed()  # then once more at a random moment of a run (start-up, a shard, the merge)
    kill_after(_label_cmd(params), random.Random(seed).uniform(0.1, 1.0) * ref_s, cwd=run_dir, env=env)
    done = subprocess.run(_label_cmd(params), cwd=run_dir, env=env, check=True, capture_output=True,
                          text=True, timeout=300)
    metrics = yaml.safe_load((run_dir / "metrics" / "label.json").read_text())
    assert metrics["resumed_clips"] >= shards_at_kill and metrics["labelled_this_run"] + metrics["resumed_clips"] == 24
    assert "label done" in done.stderr

    ref_csv, ref_ds = _snapshot(ref_dir / "labelled")
    run_csv, run_ds = _snapshot(run_dir / "labelled")
    assert run_csv == ref_csv and run_ds == ref_ds, f"ASKD_FAULT_SEED={seed}"
    ids = [r["id"] for r in run_csv]
    assert len(ids) == len(set(ids)) == 24  # nothing lost, nothing labelled twice


def test_missing_split_and_missing_dataset_are_clear_errors(tmp_path, tiny_whisper_dir, prepared_speech_dir):
    with pytest.raises(FileNotFoundError, match="no prepared dataset"):
        pseudo_label(LabelSettings(out_dir=tmp_path / "o"), tiny_whisper_dir, tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"label.splits \['test_ood'\] not in the prepared dataset"):
        pseudo_label(LabelSettings(splits=("test_ood",), out_dir=tmp_path / "o"), tiny_whisper_dir, prepared_speech_dir)


def test_multilingual_teacher_gets_language_and_task(tiny_whisper_dir, speech_clips):
    """generate_tokens forces language/task for a multilingual teacher and never for an English-only one."""
    from components.whisper_io import generate_tokens, load_whisper

    model, processor = load_whisper(tiny_whisper_dir)
    seen: list[dict] = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_generate(*args, **{k: v for k, v in kwargs.items() if k not in ("language", "task")})

    model.generate = spy
    audio = [speech_clips[0].audio]
    generate_tokens(model, processor, audio, max_new_tokens=4, language="en", task="transcribe")
    assert "language" not in seen[-1] and "task" not in seen[-1]
    model.generation_config.is_multilingual = True
    generate_tokens(model, processor, audio, max_new_tokens=4, language="de", task="translate")
    assert seen[-1]["language"] == "de" and seen[-1]["task"] == "translate"


def test_work_key_depends_on_engine_and_ct2_compute_type(tiny_whisper_dir, prepared_speech_dir):
    from components.label import work_key

    def key(**kw):
        return work_key(LabelSettings(**kw), tiny_whisper_dir, prepared_speech_dir)

    hf, ct2 = key(engine="transformers"), key(engine="ctranslate2")
    assert hf != ct2 and ct2 != key(engine="ctranslate2", ct2_compute_type="int8")
    assert hf == key(engine="transformers", ct2_compute_type="int8")  # unused by transformers: same job


@pytest.mark.slow
def test_ctranslate2_engine_gives_the_same_labels_as_transformers(tmp_path, monkeypatch, teacher_dir,
                                                                   prepared_speech_dir):
    monkeypatch.chdir(tmp_path)
    snapshots, metrics = {}, {}
    for engine in ("transformers", "ctranslate2"):
        cfg = LabelSettings(out_dir=tmp_path / engine, work_dir=tmp_path / "work", batch_size=4, shard_size=3,
                            engine=engine)
        metrics[engine] = pseudo_label(cfg, teacher_dir, prepared_speech_dir)
        snapshots[engine] = _snapshot(tmp_path / engine)
    assert snapshots["ctranslate2"] == snapshots["transformers"]
    assert metrics["ctranslate2"]["work_key"] != metrics["transformers"]["work_key"]
    assert metrics["ctranslate2"]["labelled_this_run"] == 6  # its own shards, not the transformers run's
    protocol = metrics["ctranslate2"]["protocol"]
    assert protocol["engine"] == "ctranslate2" and protocol["ct2_compute_type"] == "float32"
    assert protocol["ctranslate2"] and protocol["multilingual"] is False
    assert metrics["transformers"]["protocol"]["engine"] == "transformers"
    assert list((tmp_path / "data" / "interim" / "ct2").iterdir()), "the converted teacher is cached"
