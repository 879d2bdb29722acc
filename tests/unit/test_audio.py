"""components.audio: decoding every common format to 16 kHz mono, and the clip checks."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from components import audio as audio_mod
from components.audio import AudioDecodeError, check_clip, decode_audio, encode_wav, rms_dbfs
from components.settings import PrepareSettings
from components.tts import SAMPLE_RATE_HZ

TONE_HZ = 440.0
TONE_AMPLITUDE = 0.3


def _tone(duration_s: float, rate_hz: int, amplitude: float = TONE_AMPLITUDE) -> np.ndarray:
    t = np.arange(int(duration_s * rate_hz)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


@pytest.fixture
def cfg() -> PrepareSettings:
    return PrepareSettings(source="synth")


@pytest.mark.parametrize(
    ("fmt", "rate_hz"), [("WAV", 16_000), ("WAV", 44_100), ("FLAC", 22_050), ("OGG", 48_000), ("MP3", 16_000)]
)
def test_decode_formats_to_16k_mono_float32(tmp_path, fmt, rate_hz):
    path = tmp_path / f"tone.{fmt.lower()}"
    try:
        sf.write(path, _tone(1.0, rate_hz), rate_hz, format=fmt)
    except Exception as err:  # pragma: no cover - libsndfile without this format
        pytest.skip(f"soundfile cannot write {fmt}: {err}")
    audio, info = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert info.orig_sample_rate_hz == rate_hz and info.orig_channels == 1
    assert info.resampled == (rate_hz != SAMPLE_RATE_HZ) and not info.downmixed
    assert abs(info.duration_s - 1.0) < 0.1  # codecs pad a little
    assert abs(len(audio) / SAMPLE_RATE_HZ - info.duration_s) < 1e-6
    assert abs(rms_dbfs(audio) - 20 * np.log10(TONE_AMPLITUDE / np.sqrt(2))) < 1.5


def test_decode_bytes_equals_path(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, _tone(0.5, 16_000), 16_000)
    from_path, _ = decode_audio(path)
    from_bytes, info = decode_audio(path.read_bytes())
    np.testing.assert_array_equal(from_path, from_bytes)
    assert info.decoder == "torchcodec"


def test_stereo_8k_is_resampled_and_averaged(tmp_path):
    # FFmpeg's own downmix would give (L+R)*0.707; we average the channels instead
    tone = _tone(1.0, 8_000)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), 8_000, subtype="FLOAT")
    audio, info = decode_audio(path)
    assert info.resampled and info.downmixed and info.orig_channels == 2
    assert len(audio) == SAMPLE_RATE_HZ
    expected_rms = 0.75 * TONE_AMPLITUDE / np.sqrt(2)
    assert abs(float(np.sqrt(np.mean(audio[1000:-1000] ** 2))) - expected_rms) < 0.01


def test_empty_corrupt_missing_zero_length(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError) as err:
        decode_audio(tmp_path / "empty.wav")
    assert err.value.reason == "empty"
    with pytest.raises(AudioDecodeError) as err:
        decode_audio(b"")
    assert err.value.reason == "empty"

    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    (tmp_path / "text.mp3").write_text("not audio at all\n" * 10)
    for name in ("noise.wav", "text.mp3"):
        with pytest.raises(AudioDecodeError) as err:
            decode_audio(tmp_path / name)
        assert err.value.reason == "corrupt"
        assert "\n" not in err.value.detail and ".cpp" not in err.value.detail

    with pytest.raises(FileNotFoundError):
        decode_audio(tmp_path / "nope.wav")

    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16_000)
    audio, info = decode_audio(tmp_path / "zero.wav")
    assert audio.size == 0 and info.duration_s == 0.0


def test_soundfile_fallback_without_torchcodec(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    sf.write(path, np.stack([_tone(1.0, 22_050)] * 2, axis=1), 22_050)
    reference, _ = decode_audio(path)
    monkeypatch.setattr(audio_mod, "_torchcodec_decoder_cls", lambda: None)
    audio, info = decode_audio(path)
    assert info.decoder == "soundfile" and info.resampled and info.downmixed
    assert abs(len(audio) - len(reference)) <= 2
    with pytest.raises(AudioDecodeError) as err:
        decode_audio(b"garbage" * 100)
    assert err.value.reason == "corrupt"


def test_check_clip_reasons(cfg):
    rate = SAMPLE_RATE_HZ
    assert check_clip(np.zeros(0, dtype=np.float32), cfg) == "zero_length"
    assert check_clip(_tone(0.1, rate), cfg) == "too_short"
    assert check_clip(_tone(cfg.max_duration_s + 1, rate), cfg) == "too_long"
    assert check_clip(np.zeros(2 * rate, dtype=np.float32), cfg) == "silent"
    assert check_clip(_tone(2.0, rate, amplitude=1e-4), cfg) == "silent"  # -83 dBFS < -60
    bad = _tone(1.0, rate)
    bad[10] = np.nan
    assert check_clip(bad, cfg) == "corrupt"
    assert check_clip(_tone(2.0, rate), cfg) is None
    loose = PrepareSettings(source="synth", silence_threshold_dbfs=-100.0, max_duration_s=60)
    assert check_clip(_tone(2.0, rate, amplitude=1e-4), loose) is None
    assert check_clip(_tone(45.0, rate), loose) is None


def test_encode_wav_is_16bit_16k(tmp_path):
    import io

    data = encode_wav(np.clip(_tone(0.5, SAMPLE_RATE_HZ) * 5, -3, 3))
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == SAMPLE_RATE_HZ and info.channels == 1 and info.subtype == "PCM_16"
    audio, _ = decode_audio(data)
    assert float(np.abs(audio).max()) <= 1.0
