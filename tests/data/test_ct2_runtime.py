"""The CTranslate2 engine: export round trip, cache, and the same tokens as transformers ``generate_tokens``.

Fast tests use the tiny random Whisper (which never emits <|endoftext|>, so every decode runs to
``max_new_tokens``: that pins CT2's ``max_length`` semantics); slow ones the real tiny.en teacher and base.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from components.ct2_export import MANIFEST_FILE, ensure_ct2, export_ct2, model_fingerprint
from components.ct2_runtime import Ct2Whisper
from components.whisper_io import SAMPLE_RATE_HZ, generate_tokens, load_whisper

if importlib.util.find_spec("ctranslate2") is None:  # not importorskip: the runtime imports it (OpenMP policy)
    pytest.skip("ctranslate2 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_ct2_dir(tmp_path_factory, tiny_whisper_dir) -> Path:
    return export_ct2(tiny_whisper_dir, tmp_path_factory.mktemp("ct2") / "tiny")


@pytest.fixture(scope="module")
def tiny_hf(tiny_whisper_dir):
    return load_whisper(tiny_whisper_dir)


def _noise_clips(seconds: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE_HZ))).astype(np.float32) for s in seconds]


def test_export_round_trip(tiny_whisper_dir, tiny_ct2_dir):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_whisper_dir.iterdir()}
    for name in ("model.bin", "config.json", "generation_config.json", "tokenizer.json", MANIFEST_FILE):
        assert (tiny_ct2_dir / name).is_file(), name
    names = ("processor_config.json", "preprocessor_config.json")
    processor_files = [n for n in names if (tiny_whisper_dir / n).is_file()]
    assert processor_files and all((tiny_ct2_dir / n).is_file() for n in processor_files)
    ct2_cfg = json.loads((tiny_ct2_dir / "config.json").read_text())
    gen_cfg = json.loads((tiny_whisper_dir / "generation_config.json").read_text())
    assert ct2_cfg["suppress_ids"] == gen_cfg["suppress_tokens"]
    assert ct2_cfg["suppress_ids_begin"] == gen_cfg["begin_suppress_tokens"]
    manifest = json.loads((tiny_ct2_dir / MANIFEST_FILE).read_text())
    assert manifest["quantization"] == "float32" and manifest["max_source_positions"] == 1500
    engine = Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2")
    assert engine.multilingual is False and engine.processor.tokenizer.pad_token == "<|endoftext|>"
    assert {p.name: p.stat().st_mtime_ns for p in tiny_whisper_dir.iterdir()} == before  # source untouched


def test_ensure_ct2_converts_once_per_model_and_quantisation(tmp_path, tiny_whisper_dir):
    first = ensure_ct2(tiny_whisper_dir, "float32", cache_root=tmp_path)
    stamp = (first / "model.bin").stat().st_mtime_ns
    again = ensure_ct2(tiny_whisper_dir, "float32", cache_root=tmp_path)
    assert again == first and (again / "model.bin").stat().st_mtime_ns == stamp  # reused, not re-converted
    int8 = ensure_ct2(tiny_whisper_dir, "int8", cache_root=tmp_path)
    assert int8 != first and json.loads((int8 / MANIFEST_FILE).read_text())["quantization"] == "int8"
    assert (int8 / "model.bin").stat().st_size < (first / "model.bin").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left
    # another model (same name, other weights) gets another cache entry
    import shutil

    other = tmp_path / "src" / tiny_whisper_dir.name
    shutil.copytree(tiny_whisper_dir, other)
    cfg = json.loads((other / "generation_config.json").read_text())
    cfg["suppress_tokens"] = cfg["suppress_tokens"][:-1]
    (other / "generation_config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(other) != model_fingerprint(tiny_whisper_dir)
    assert ensure_ct2(other, "float32", cache_root=tmp_path) != first
    with pytest.raises(ValueError, match="compute_type"):
        ensure_ct2(tiny_whisper_dir, "float16", cache_root=tmp_path)


def test_not_a_whisper_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.json is missing"):
        export_ct2(tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'"):
        ensure_ct2(tmp_path, cache_root=tmp_path / "cache")


@pytest.mark.parametrize("encoder", ["ctranslate2", "torch"])
def test_random_model_tokens_equal_transformers(tiny_whisper_dir, tiny_ct2_dir, tiny_hf, speech_clips, encoder):
    model, processor = tiny_hf
    engine = Ct2Whisper(tiny_ct2_dir, encoder=encoder, fallback_dir=tiny_whisper_dir)
    audios = [c.audio for c in speech_clips[:3]] + _noise_clips((0.7, 2.0))
    for batch_size, max_new_tokens in ((2, 5), (5, 16)):
        ref = generate_tokens(model, processor, audios, batch_size=batch_size, max_new_tokens=max_new_tokens)
        got = engine.generate_tokens(audios, batch_size=batch_size, max_new_tokens=max_new_tokens)
        assert got == ref
        # the random model never ends: CT2 must stop at exactly max_new_tokens (its max_length counts 2 per token)
        assert {len(ids) for ids, _ in got} == {max_new_tokens}
    assert engine.generate_tokens([]) == []


def test_long_clips_and_timestamps_use_the_transformers_fallback(tiny_whisper_dir, tiny_ct2_dir, tiny_hf):
    model, processor = tiny_hf
    engine = Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2", fallback_dir=tiny_whisper_dir)
    short, long_ = _noise_clips((2.0, 31.0), seed=1)
    opts = {"batch_size": 2, "max_new_tokens": 6}
    got = engine.generate_tokens([short, long_], **opts)
    assert got[0] == generate_tokens(model, processor, [short], **opts)[0]
    assert got[1] == generate_tokens(model, processor, [long_], **opts)[0]
    stamped = engine.generate_tokens([short], return_timestamps=True, **opts)
    assert stamped == generate_tokens(model, processor, [short], return_timestamps=True, **opts)
    no_fallback = Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2")
    with pytest.raises(ValueError, match="fallback_dir"):
        no_fallback.generate_tokens([long_], **opts)
    with pytest.raises(ValueError, match="fallback_dir"):
        Ct2Whisper(tiny_ct2_dir, encoder="torch")


def test_shortened_window_student_converts_and_matches(tmp_path, teacher_dir):
    """A 10 s encoder window (max_source_positions 500): CT2 takes the window from the position table."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    real = WhisperConfig.from_pretrained(teacher_dir)
    cfg = WhisperConfig(
        vocab_size=real.vocab_size, num_mel_bins=real.num_mel_bins, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=500, max_target_positions=real.max_target_positions, pad_token_id=real.pad_token_id,
        bos_token_id=real.bos_token_id, eos_token_id=real.eos_token_id,
        decoder_start_token_id=real.decoder_start_token_id, begin_suppress_tokens=None, suppress_tokens=None,
    )
    torch.manual_seed(1)
    student = WhisperForConditionalGeneration(cfg)
    student.generation_config = GenerationConfig.from_pretrained(teacher_dir)
    src = tmp_path / "student10s"
    student.save_pretrained(src)
    tok = WhisperProcessor.from_pretrained(teacher_dir).tokenizer
    fe = WhisperFeatureExtractor(feature_size=real.num_mel_bins, chunk_length=10)
    WhisperProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(src)

    engine = Ct2Whisper.from_transformers(src, cache_root=tmp_path / "cache", encoder="ctranslate2")
    assert json.loads((engine.ct2_dir / MANIFEST_FILE).read_text())["max_source_positions"] == 500
    model, processor = load_whisper(src)
    audios = _noise_clips((1.0, 4.0, 9.5))
    opts = {"batch_size": 2, "max_new_tokens": 10}
    assert engine.generate_tokens(audios, **opts) == generate_tokens(model, processor, audios, **opts)
    twelve = _noise_clips((12.0,), seed=2)  # longer than the window: transformers' long-form path
    assert engine.generate_tokens(twelve, **opts) == generate_tokens(model, processor, twelve, **opts)


# ---------------------------------------------------------------------------------------------
# the real teacher


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["torch", "ctranslate2"])
def test_teacher_tokens_equal_transformers_on_piper(tmp_path, teacher_dir, piper_clips, encoder):
    from components.text import wer

    model, processor = load_whisper(teacher_dir)
    audios = [c.audio for c in piper_clips]
    ref = generate_tokens(model, processor, audios, batch_size=4, max_new_tokens=128)
    engine = Ct2Whisper.from_transformers(teacher_dir, cache_root=tmp_path, encoder=encoder)
    got = engine.generate_tokens(audios, batch_size=4, max_new_tokens=128)
    assert got == ref, [(r[1], g[1]) for r, g in zip(ref, got, strict=True) if r != g]
    assert all(ids for ids, _ in got)
    assert wer([c.text for c in piper_clips], [t for _, t in got]) < 15.0
    one_by_one = [engine.generate_tokens([a], batch_size=1)[0] for a in audios[:2]]
    assert one_by_one == ref[:2]


@pytest.mark.slow
def test_teacher_int8_transcribes(tmp_path, teacher_dir, piper_clips):
    from components.text import wer

    engine = Ct2Whisper.from_transformers(teacher_dir, compute_type="int8", cache_root=tmp_path)
    texts = [t for _, t in engine.generate_tokens([c.audio for c in piper_clips], batch_size=6)]
    assert wer([c.text for c in piper_clips], texts) < 20.0, texts


@pytest.mark.slow
def test_multilingual_base_forced_and_detected_language(tmp_path_factory, piper_clips):
    """base (multilingual): <|en|><|transcribe|> forced, and the language detected per clip, as transformers."""
    from components.ct2 import packaged_weights
    from components.whisper_io import convert_ct2_to_hf

    if os.environ.get("ASKD_SKIP_BASE"):
        pytest.skip("ASKD_SKIP_BASE set")
    base = tmp_path_factory.mktemp("base") / "base"
    convert_ct2_to_hf(packaged_weights("base"), base)
    model, processor = load_whisper(base)
    engine = Ct2Whisper.from_transformers(base, cache_root=base.parent / "cache")
    assert engine.multilingual
    audios = [c.audio for c in piper_clips[:3]]
    for language in ("en", None):
        ref = generate_tokens(model, processor, audios, batch_size=3, language=language, max_new_tokens=64)
        assert engine.generate_tokens(audios, batch_size=3, language=language, max_new_tokens=64) == ref


def test_decoder_on_its_own_threads_decodes_the_same_tokens(tiny_whisper_dir, tiny_ct2_dir, speech_clips):
    """decode_threads != intra_threads: the encoder's instance encodes, a second instance runs the decoder steps."""
    audios = [c.audio for c in speech_clips[:3]] + _noise_clips((0.7,))
    one = Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2", intra_threads=2)
    split = Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2", intra_threads=2, decode_threads=1)
    same = Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2", intra_threads=2, decode_threads=2)
    assert one.decoder_model is one.model and same.decoder_model is same.model  # one instance when nothing differs
    assert split.decoder_model is not split.model and (split.intra_threads, split.decode_threads) == (2, 1)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Ct2Whisper(tiny_ct2_dir, encoder="ctranslate2", intra_threads=1)
        assert torch.get_num_threads() == 2  # loading a 1-thread CT2 model once left torch on 1 thread
    finally:
        torch.set_num_threads(torch_threads)
    # the transformers encoder feeds CT2: CT2 only decodes, so one instance on decode_threads
    torch_enc = Ct2Whisper(tiny_ct2_dir, encoder="torch", fallback_dir=tiny_whisper_dir, intra_threads=2,
                           decode_threads=1)
    assert torch_enc.decoder_model is torch_enc.model
    for batch_size in (1, 4):
        ref = one.generate_tokens(audios, batch_size=batch_size, max_new_tokens=7)
        assert split.generate_tokens(audios, batch_size=batch_size, max_new_tokens=7) == ref
        assert torch_enc.generate_tokens(audios, batch_size=batch_size, max_new_tokens=7) == ref
