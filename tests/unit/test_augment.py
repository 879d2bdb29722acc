"""Recording conditions (components/augment.py) measured on test signals, and how synth plans them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from components.augment import (
    Conditions,
    add_noise,
    apply_conditions,
    change_speed,
    coloured_noise,
    draw_conditions,
    reverberate,
    telephone_line,
)
from components.sections import AugmentSettings, SynthSettings
from components.tts import SAMPLE_RATE_HZ


def _sine(freq_hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (0.5 * np.sin(2 * math.pi * freq_hz * t)).astype(np.float32)


def _db(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(a.astype(np.float64) ** 2)) / float(np.mean(b.astype(np.float64) ** 2)))


def test_speed_changes_length_and_pitch_together():
    tone = _sine(1000.0)
    fast = change_speed(tone, 1.1)
    assert fast.size == pytest.approx(tone.size / 1.1, abs=2)
    peak_hz = np.argmax(np.abs(np.fft.rfft(fast))) * SAMPLE_RATE_HZ / fast.size
    assert peak_hz == pytest.approx(1100.0, abs=5)


def test_reverb_keeps_length_adds_a_decaying_tail_and_is_seeded():
    click = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)
    click[100] = 1.0
    wet = reverberate(click, 0.5, 0.0, np.random.default_rng(1))
    assert wet.size == click.size and wet[100] == pytest.approx(1.0)
    early = np.sum(wet[200:2000] ** 2)
    late = np.sum(wet[6000:8000] ** 2)
    assert early > 10 * late > 0  # energy after the direct path, decaying
    assert np.array_equal(wet, reverberate(click, 0.5, 0.0, np.random.default_rng(1)))


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
def test_noise_is_added_at_the_requested_snr(colour):
    speech_like = _sine(300.0, 2.0)
    noisy = add_noise(speech_like, 10.0, colour, np.random.default_rng(0))
    assert _db(speech_like, noisy - speech_like) == pytest.approx(10.0, abs=0.01)
    spectrum = np.abs(np.fft.rfft(coloured_noise(32000, colour, np.random.default_rng(0)))) ** 2
    low, high = spectrum[50:500].mean(), spectrum[5000:15000].mean()
    assert (low / high > 5) == (colour != "white")


def test_telephone_line_keeps_the_voice_band_and_removes_the_rest():
    band = telephone_line(_sine(1000.0))
    assert band.size == SAMPLE_RATE_HZ
    assert _db(band[2000:], _sine(1000.0)[2000:]) > -2.0
    assert _db(telephone_line(_sine(6000.0))[2000:], _sine(6000.0)[2000:]) < -30.0
    assert _db(telephone_line(_sine(100.0))[2000:], _sine(100.0)[2000:]) < -10.0


def test_draws_are_seeded_and_give_at_least_one_condition():
    cfg = AugmentSettings(fraction=1.0, condition_probability=0.0)
    for seed in range(20):
        c = draw_conditions(np.random.default_rng(seed), cfg)
        assert len(c.names) == 1 and c == draw_conditions(np.random.default_rng(seed), cfg)
    every = draw_conditions(np.random.default_rng(0), AugmentSettings(condition_probability=1.0))
    assert every.names == ("speed", "reverb", "noise", "telephone")
    assert 0.9 <= every.speed <= 1.1 and 0.15 <= every.rt60_s <= 0.8 and 5 <= every.snr_db <= 20
    out = apply_conditions(_sine(500.0), every, np.random.default_rng(0))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert apply_conditions(_sine(500.0), Conditions(), np.random.default_rng(0)).tolist() == _sine(500.0).tolist()
    with pytest.raises(ValueError, match="snr_db_min"):
        AugmentSettings(snr_db_min=30.0)


def test_synth_plans_conditions_for_a_share_of_train_clips_only_and_changes_no_other_draw():
    from components.synth import plan_clips

    pools = {"train": [f"train sentence {i}" for i in range(200)], "validation": ["v one", "v two"],
             "test": ["t one", "t two"], "test_ood": ["o one"], "test_longform": []}
    base = SynthSettings(n_train=200, n_validation=2, n_test=2, n_test_ood=1, n_test_longform=0)
    plain = [c for j in plan_clips(base, pools) for c in j.clips]
    aug_cfg = base.model_copy(update={"augment": AugmentSettings(fraction=0.5)})
    augmented = [c for j in plan_clips(aug_cfg, pools) for c in j.clips]
    with_conditions = [c for c in augmented if c.conditions is not None]
    assert {c.split for c in with_conditions} == {"train"}
    assert 70 <= len(with_conditions) <= 130
    assert [replace(c, conditions=None) for c in augmented] == plain


def test_synth_plans_extra_voices_for_a_share_of_train_clips_and_flite_speaks_them():
    from components.synth import plan_clips
    from components.tts import flite_say

    pools = {"train": [f"train sentence number {i}" for i in range(100)], "validation": ["v one"],
             "test": ["t one"], "test_ood": [], "test_longform": []}
    base = SynthSettings(n_train=100, n_validation=1, n_test=1, n_test_ood=0, n_test_longform=0)
    plain = [c for j in plan_clips(base, pools) for c in j.clips]
    voiced = [c for j in plan_clips(base.model_copy(update={"extra_voice_fraction": 0.5}), pools) for c in j.clips]
    flite = [c for c in voiced if c.engine == "flite"]
    assert {c.split for c in flite} == {"train"} and 30 <= len(flite) <= 70
    assert {c.speaker for c in flite} == {"flite-slt", "flite-rms", "flite-awb", "flite-kal16"}
    assert [replace(c, engine="piper", speaker="piper-joe") for c in voiced] == plain
    audio = flite_say("Press one for sales.", "awb", 1.2)
    assert audio.dtype == np.float32 and 0.8 < audio.size / SAMPLE_RATE_HZ < 3.0
    assert flite_say("Press one for sales.", "awb", 1.2).tolist() == audio.tolist()  # deterministic
    assert audio.size > flite_say("Press one for sales.", "awb", 1.0).size  # stretched = slower


def test_synth_writes_flite_clips_with_their_conditions(tmp_path):
    import json

    from components.synth import plan_clips, run_chunk

    pools = {"train": ["the quick brown fox jumps over the lazy dog"] + [f"clip {i} of the set" for i in range(7)],
             "validation": [], "test": [], "test_ood": [], "test_longform": []}
    cfg = SynthSettings(n_train=8, n_validation=1, n_test=1, n_test_ood=0, n_test_longform=0,
                        extra_voice_fraction=1.0, augment=AugmentSettings(fraction=1.0))
    (job,) = [j for j in plan_clips(cfg, pools) if j.clips]
    rows = run_chunk(job, str(tmp_path))
    assert all(r["voice"] == "flite" and r["speaker"].startswith("flite-") and r["conditions"] for r in rows)
    assert json.loads((tmp_path / "done" / f"{job.chunk_id}.json").read_text()) == rows
