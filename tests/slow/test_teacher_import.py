"""The real teacher import: tiny.en CT2 -> transformers is exact against the CTranslate2 runtime,
transcribes Piper speech well, and a local folder is adopted through the same code path; base is multilingual.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.ct2 import packaged_weights
from components.settings import TeacherSettings
from components.teacher import TEACHER_INFO_FILE, import_teacher
from components.text import wer
from components.whisper_io import SAMPLE_RATE_HZ, convert_ct2_to_hf, generate_tokens, load_whisper, transcribe

pytestmark = pytest.mark.slow

# Harvard sentences and plain everyday ones (short, no digits, no names).
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "Please close the window before you leave the house.",
    "We will meet at the station after lunch.",
]
TEACHER_WER_MAX_PERCENT = 15.0
CT2_THREADS = 2
EASY_CLIP = 10  # "Please close the window ..." (plain words; Piper audio is not bit-reproducible)
BASE_CLIP_WER_MAX_PERCENT = 20.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher")


@pytest.fixture(scope="module")
def tiny_dir(workdir):
    """tiny.en imported from its PyPI package through the stage function (metrics go to the tmp dir)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        metrics = import_teacher(TeacherSettings(model="tiny.en", out_dir=workdir / "tiny"))
    assert metrics["model"] == "tiny.en" and metrics["multilingual"] is False
    assert metrics["vocab"] == 51864 and metrics["layers"] == {"encoder": 4, "decoder": 4}
    assert 37_000_000 < metrics["params"] < 38_500_000
    assert (workdir / "metrics" / "teacher.json").is_file()
    return workdir / "tiny"


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_whisper(tiny_dir)


@pytest.fixture(scope="module")
def clips():
    from components.tts import piper_say

    return [piper_say(s) for s in SENTENCES]


@pytest.fixture(scope="module")
def hf_outputs(tiny, clips):
    model, processor = tiny
    # batch 5 over 12 length-sorted clips: exercises several batches and the reordering
    return generate_tokens(model, processor, clips, batch_size=5, max_new_tokens=128)


def _text_ids(ids, eot_id: int) -> list[int]:
    """Token ids without specials or timestamps (all of those are >= <|endoftext|>)."""
    return [int(t) for t in ids if t < eot_id]


def test_greedy_tokens_match_ctranslate2_runtime(tiny, clips, hf_outputs):
    ctranslate2 = pytest.importorskip("ctranslate2")
    model, processor = tiny
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    weights = packaged_weights("tiny.en")
    ct2 = ctranslate2.models.Whisper(
        str(weights.model_bin.parent), device="cpu", compute_type="float32", intra_threads=CT2_THREADS
    )
    features = processor.feature_extractor(clips, sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    results = ct2.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        [prompt] * len(clips),
        beam_size=1,
        suppress_blank=True,
        suppress_tokens=[-1],
        max_length=len(prompt) + 128,
    )
    ct2_ids = [_text_ids(r.sequences_ids[0], eot) for r in results]
    hf_ids = [_text_ids(ids, eot) for ids, _ in hf_outputs]
    mismatches = [(SENTENCES[i], tok.decode(h), tok.decode(c)) for i, (h, c) in enumerate(zip(hf_ids, ct2_ids)) if h != c]
    assert not mismatches, mismatches
    assert all(hf_ids), "every clip should produce some text"


def test_teacher_wer_on_piper_clips(hf_outputs):
    # hf_outputs come from length-sorted batches; the per-clip CT2 comparison above also checks their order
    texts = [text for _, text in hf_outputs]
    score = wer(SENTENCES, texts)
    assert score < TEACHER_WER_MAX_PERCENT, list(zip(SENTENCES, texts))


def test_import_from_local_folder_uses_same_path(tiny_dir, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    out = workdir / "adopted"
    metrics = import_teacher(TeacherSettings(path=tiny_dir, out_dir=out))
    assert metrics["params"] == json.loads((tiny_dir / TEACHER_INFO_FILE).read_text())["params"]
    info = json.loads((out / TEACHER_INFO_FILE).read_text())
    assert info["source"]["kind"] == "local" and len(info["source"]["sha256"]) == 64
    assert info["multilingual"] is False
    model, processor = load_whisper(out)
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    assert len(processor.tokenizer) == model.config.vocab_size
    assert not list(workdir.glob(".adopted*")), "no partial folder is left behind"


def test_base_is_multilingual_and_transcribes_english(workdir, clips):
    out = workdir / "base"
    summary = convert_ct2_to_hf(packaged_weights("base"), out)
    assert summary["multilingual"] is True and summary["vocab"] == 51865
    model, processor = load_whisper(out)
    gen = model.generation_config
    assert gen.lang_to_id["<|en|>"] == 50259 and len(gen.lang_to_id) == 99
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert gen.decoder_start_token_id == 50258
    assert model.config.suppress_tokens is None  # suppress lists live in the generation config only
    assert processor.tokenizer(" the", add_special_tokens=False).input_ids == [264]  # canonical BPE
    (text,) = transcribe(model, processor, [clips[EASY_CLIP]], language="en")
    assert wer([SENTENCES[EASY_CLIP]], [text]) <= BASE_CLIP_WER_MAX_PERCENT, text
