"""The train stage on a tiny random Whisper: runs, kill-and-resume equality, NaN guard, clear errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.settings import TrainSettings
from components.train.loop import NonFiniteLossError, distill
from tests.conftest import fault_seed, kill_after

TINY_TRAIN = {
    "student": {"decoder_layers": 1, "window_s": 10},
    "optim": {"batch_size": 2, "max_steps": 8, "warmup_steps": 2, "lr": 1e-3},
    "eval_every_steps": 4, "eval_max_clips": 2, "eval_batch_size": 2, "save_every_steps": 2,
    "max_label_tokens": 32, "early_stopping_patience": None, "average_best": 2,
    "askd": {"alpha_start": 0.9, "alpha_end": 0.1, "decay_fraction": 0.5, "self_teacher": "ema",
             "self_kd_start_fraction": 0.5, "self_kd_weight": 0.5},
}


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory, prepared_speech_dir, tiny_whisper_dir) -> Path:
    """The prepared speech clips 'labelled' with their reference text (a perfect teacher)."""
    from transformers import WhisperTokenizer

    tok = WhisperTokenizer.from_pretrained(tiny_whisper_dir)
    prepared = datasets.load_from_disk(str(prepared_speech_dir))
    out = datasets.DatasetDict()
    for split in ("train", "validation"):
        ds = prepared[split]
        texts = [t or "hello world" for t in ds["text"]]
        ds = ds.add_column("teacher_text", texts)
        ds = ds.add_column("teacher_tokens", [tok.encode(" " + t, add_special_tokens=False) for t in texts])
        out[split] = ds
    path = tmp_path_factory.mktemp("labelled") / "labelled"
    out.save_to_disk(str(path))
    return path


def _cfg(tmp: Path, **over) -> TrainSettings:
    data = json.loads(json.dumps(TINY_TRAIN))
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainSettings(out_dir=tmp / "student", checkpoint_dir=tmp / "ckpt", cache_dir=tmp / "cache", **data)


def test_distill_runs_and_writes_everything(tmp_path, monkeypatch, tiny_whisper_dir, labelled_dir):
    monkeypatch.chdir(tmp_path)
    metrics = distill(_cfg(tmp_path), tiny_whisper_dir, labelled_dir)
    assert metrics["steps"] == 8 and metrics["encoder_cache"] is True
    assert metrics["resumed_from_step"] == 0 and metrics["seconds"] == metrics["seconds_this_process"] > 0
    assert [h["step"] for h in metrics["history"]] == [4, 8]
    assert (tmp_path / "student" / "model.safetensors").is_file()
    assert (tmp_path / "metrics" / "train.json").is_file()
    rows = (tmp_path / "metrics" / "train_steps.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,ce,kl,self_kd") and len(rows) == 9
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    first = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert float(first["alpha"]) == pytest.approx(0.9) and float(first["beta"]) == 0
    assert float(last["alpha"]) == pytest.approx(0.1) and float(last["beta"]) == pytest.approx(0.5)
    assert float(last["self_kd"]) > 0  # stage B really ran the EMA self-teacher
    assert float(first["self_kd_share"]) == 0 and 0 < float(last["self_kd_share"]) < 1
    stage_b = json.loads((tmp_path / "metrics" / "train.json").read_text())["stage_b"]
    assert stage_b["steps"] >= 1 and 0 < stage_b["mean_self_kd_share"] < 1
    assert (tmp_path / "reports" / "train_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from components.whisper_io import load_whisper

    model, processor = load_whisper(tmp_path / "student")
    assert model.config.decoder_layers == 1 and model.config.max_source_positions == 500
    # average_best 2: the saved weights are the mean of both evaluation points' states, re-scored on validation
    assert metrics["averaged_steps"] == [4, 8] and metrics["final_val_wer_percent"] >= 0
    final_ckpt = torch.load(sorted((tmp_path / "ckpt").glob("*/step-0000008.pt"))[0], weights_only=False)
    tops = {e["step"]: e["state"] for e in final_ckpt["top"]}
    assert set(tops) == {4, 8} and not torch.equal(tops[4]["model.decoder.layers.0.fc1.weight"],
                                                   tops[8]["model.decoder.layers.0.fc1.weight"])
    saved = model.state_dict()
    for key in tops[4]:
        assert torch.allclose(saved[key], (tops[4][key] + tops[8][key]) / 2, atol=1e-6), key

    # a rerun of the finished run (as `dvc repro` does after deleting the outputs) rewrites every output unchanged
    logs = {name: (tmp_path / "metrics" / name).read_text() for name in ("train_steps.csv", "train_eval.csv")}
    weights = load_file(tmp_path / "student" / "model.safetensors")
    shutil.rmtree(tmp_path / "student")
    shutil.rmtree(tmp_path / "metrics")
    again = distill(_cfg(tmp_path), tiny_whisper_dir, labelled_dir)
    assert again["steps"] == 8 and again["averaged_steps"] == [4, 8]
    # the run's time is carried by its checkpoints: the rerun reports the first run's training time plus its own
    assert again["resumed_from_step"] == 8 and again["seconds"] > again["seconds_this_process"]
    assert {name: (tmp_path / "metrics" / name).read_text() for name in logs} == logs
    rerun = load_file(tmp_path / "student" / "model.safetensors")
    assert all(torch.equal(weights[key], rerun[key]) for key in weights)


def _train_cmd(params: Path) -> list[str]:
    return [sys.executable, "-m", "components", "--params", str(params), "stage", "train"]


def _params(tmp: Path, teacher: Path, labelled: Path) -> Path:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["teacher"]["out_dir"] = str(teacher)
    params["label"]["out_dir"] = str(labelled)
    params["train"] = {**params["train"], **json.loads(json.dumps(TINY_TRAIN)),
                       "out_dir": str(tmp / "student"), "checkpoint_dir": str(tmp / "ckpt"),
                       "cache_dir": str(tmp / "cache")}
    params["train"]["optim"] = {**yaml.safe_load(Path("params.yaml").read_text())["train"]["optim"],
                                **TINY_TRAIN["optim"], "max_steps": 12}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_kill_and_resume_ends_with_the_same_weights(tmp_path, tiny_whisper_dir, labelled_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    started = time.monotonic()
    subprocess.run(_train_cmd(_params(ref, tiny_whisper_dir, labelled_dir)), cwd=ref, env=env, check=True,
                   capture_output=True, timeout=600)
    ref_s = time.monotonic() - started

    params = _params(run, tiny_whisper_dir, labelled_dir)
    proc = subprocess.Popen(_train_cmd(params), cwd=run, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    killed_after = None
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = sorted(p.name for p in (run / "ckpt").rglob("step-*.pt"))
        if any(name >= "step-0000004.pt" for name in ckpts):
            proc.send_signal(signal.SIGKILL)
            killed_after = ckpts[-1]
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and killed_after, "the run ended before it could be killed"
    assert not (run / "student").exists()
    seed = fault_seed()  # then once more at a random moment of a run (start-up, a step, an eval, a save)
    kill_after(_train_cmd(params), random.Random(seed).uniform(0.1, 1.0) * ref_s, cwd=run, env=env)
    shutil.rmtree(run / "metrics", ignore_errors=True)  # `dvc repro` deletes a stage's outputs before rerunning it
    subprocess.run(_train_cmd(params), cwd=run, env=env, check=True, capture_output=True, timeout=600)

    a = load_file(ref / "student" / "model.safetensors")
    b = load_file(run / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{key} (ASKD_FAULT_SEED={seed})")
    for log in ("train_steps.csv", "train_eval.csv"):
        assert (ref / "metrics" / log).read_text() == (run / "metrics" / log).read_text(), log
    ref_metrics, run_metrics = (json.loads((d / "metrics" / "train.json").read_text()) for d in (ref, run))
    assert ref_metrics["best_step"] == run_metrics["best_step"]
    assert ref_metrics["resumed_from_step"] == 0 and run_metrics["resumed_from_step"] >= 4


def test_kd_targets_from_the_teacher_at_its_own_window(tmp_path, monkeypatch, tiny_whisper_dir, labelled_dir):
    """teacher_window full: a second cache holds the teacher's encoder outputs at its 30 s window, and the KD term
    (not the cross-entropy) differs from the run whose teacher is cut to the student's 10 s window."""
    monkeypatch.chdir(tmp_path)
    logs = {}
    for mode in ("student", "full", 20):
        cfg = _cfg(tmp_path, teacher_window=mode, optim={"max_steps": 2}, average_best=1, eval_every_steps=2,
                   cache_teacher_states=False)  # the live teacher: the exact-zero KL below
        distill(cfg, tiny_whisper_dir, labelled_dir)
        rows = (tmp_path / "metrics" / "train_steps.csv").read_text().splitlines()
        logs[mode] = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    frames = sorted(json.loads(p.read_text())["shape"][1] for p in (tmp_path / "cache").glob("*/train.progress.json"))
    assert frames == [500, 1000, 1500]  # the student's 10 s window, the teacher cut to 20 s, its own 30 s window
    assert logs["student"]["ce"] == logs["full"]["ce"] == logs[20]["ce"]  # same student, same batch
    # the 1-layer student starts as an exact copy of the 1-layer teacher: no KL to the teacher cut to its window,
    # but a KL to the teacher that sees 30 s
    assert float(logs["student"]["kl"]) == 0 < float(logs["full"]["kl"])
    assert 0 < float(logs[20]["kl"]) != float(logs["full"]["kl"])


def test_cached_teacher_states_train_like_the_live_teacher(tmp_path, monkeypatch, tiny_whisper_dir, labelled_dir):
    """The teacher's decoder states cached once give the same training as the live teacher pass (within float
    noise), which also shows the cached rows line up with every batch; sequences that vary per step switch the
    cache off by themselves."""
    monkeypatch.chdir(tmp_path)
    # teacher_window full: the 1-layer student starts as a copy of the 1-layer teacher, so only the teacher at its
    # own window gives a non-zero KL from the first step
    base = {"teacher_window": "full", "optim": {"max_steps": 4}, "eval_every_steps": 4, "average_best": 1}
    runs = {}
    for name, over in (("live", {"cache_teacher_states": False}), ("cached", {}),
                       ("varying", {"timestamp_probability": 0.5})):
        out = tmp_path / name
        metrics = distill(_cfg(out, **base, **over), tiny_whisper_dir, labelled_dir)
        rows = (tmp_path / "metrics" / "train_steps.csv").read_text().splitlines()
        runs[name] = {"metrics": metrics, "log": [dict(zip(rows[0].split(","), r.split(","), strict=True))
                                                  for r in rows[1:]],
                      "weights": load_file(out / "student" / "model.safetensors")}
    assert runs["live"]["metrics"]["teacher_states_cached"] is False
    assert runs["cached"]["metrics"]["teacher_states_cached"] is True
    assert runs["varying"]["metrics"]["teacher_states_cached"] is False
    assert list((tmp_path / "cached" / "cache" / "teacher_states").iterdir())  # the store is on disk
    for a, b in zip(runs["live"]["log"], runs["cached"]["log"], strict=True):
        assert float(a["kl"]) > 0
        assert float(b["kl"]) == pytest.approx(float(a["kl"]), rel=1e-3, abs=2e-6), (a, b)
        assert float(b["ce"]) == pytest.approx(float(a["ce"]), rel=1e-3)
    for key, value in runs["live"]["weights"].items():
        assert torch.allclose(value, runs["cached"]["weights"][key], atol=1e-4), key


@pytest.mark.parametrize(("patience", "steps", "stopped_early"), [(2, 6, True), (3, 8, False)])
def test_early_stopping(tmp_path, monkeypatch, tiny_whisper_dir, labelled_dir, patience, steps, stopped_early):
    """lr 1e-12 leaves the weights as they were, so the validation WER never improves after the first evaluation:
    training stops once `patience` evaluations passed without a better WER, and reaching max_steps at that same
    evaluation is not an early stop."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, optim={"lr": 1e-12}, eval_every_steps=2, early_stopping_patience=patience, average_best=1)
    metrics = distill(cfg, tiny_whisper_dir, labelled_dir)
    assert [h["step"] for h in metrics["history"]] == list(range(2, steps + 1, 2))
    assert len({h["val_wer"] for h in metrics["history"]}) == 1 and metrics["best_step"] == 2
    assert metrics["steps"] == steps and metrics["stopped_early"] is stopped_early


def test_nan_guard_stops_with_a_clear_message(tmp_path, monkeypatch, tiny_whisper_dir, labelled_dir):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, optim={"lr": 1e30, "warmup_steps": 0, "max_grad_norm": 1e30})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+"):
        distill(cfg, tiny_whisper_dir, labelled_dir)


def test_missing_labels_is_a_clear_error(tmp_path, tiny_whisper_dir):
    with pytest.raises(FileNotFoundError, match="no labelled dataset"):
        distill(_cfg(tmp_path), tiny_whisper_dir, tmp_path / "nothing")


def test_a_student_trained_on_a_kept_vocabulary_emits_only_it_in_every_form(tmp_path, monkeypatch, tiny_whisper_dir,
                                                                              labelled_dir):
    from components.audio import dataset_audio_arrays
    from components.export import load_form, make_export
    from components.vocab import VOCAB_FILE, read_vocab_file, top_rank_ids

    monkeypatch.chdir(tmp_path)
    metrics = distill(_cfg(tmp_path, student={"vocab_top_ranks": 300}), tiny_whisper_dir, labelled_dir)
    assert metrics["vocab"]["top_ranks"] == 300 and metrics["vocab"]["label_tokens_ratio"] > 1.5  # spelled in pieces
    keep = read_vocab_file(tmp_path / "student")
    student = load_form(tmp_path / "student", "student")
    assert keep == top_rank_ids(student.processor.tokenizer, student.model.config.vocab_size, 300)
    assert student.kind == "torch_vocab"
    audios = dataset_audio_arrays(datasets.load_from_disk(str(labelled_dir))["validation"].select(range(2)))
    forms = [student] + [make_export(student, kind, tmp_path / "exports") for kind in ("torch_int8", "ct2_int8")]
    assert [f.kind for f in forms] == ["torch_vocab", "torch_int8", "ct2_int8_vocab"]
    assert (tmp_path / "exports" / "student-torch_int8" / VOCAB_FILE).is_file()
    for form in forms:
        for ids, _ in form.generate(audios, batch_size=2, max_new_tokens=12):
            assert set(ids) <= set(keep), form.name
    assert type(forms[2].engine._transformers()[0].proj_out).__name__ == "PrunedHead"  # CT2's transformers fallback
    with pytest.raises(ValueError, match="vocab_top_ranks needs train.cache_teacher_states"):
        distill(_cfg(tmp_path / "live", student={"vocab_top_ranks": 300}, cache_teacher_states=False),
                tiny_whisper_dir, labelled_dir)
    whole = distill(_cfg(tmp_path / "whole"), tiny_whisper_dir, labelled_dir)
    assert whole["vocab"] is None and not (tmp_path / "whole" / "student" / VOCAB_FILE).exists()
