"""Recording conditions for synthetic training speech: speed, room reverberation, background noise, telephone.

Users bring recordings from rooms, microphones and phone lines; the embedded corpus is clean studio TTS. These
transforms imitate what a recording adds, each deterministic given its numpy ``Generator``:

* ``speed``: speed perturbation (Kaldi's 0.9-1.1x): the clip is resampled, so tempo and pitch change together;
* ``reverb``: a room impulse response made of exponentially decaying noise with a random RT60 (the time to fall by
  60 dB), the direct path kept, mixed at a random direct-to-reverberant ratio;
* ``noise``: coloured noise (white, pink or brown, drawn per clip) at a random signal-to-noise ratio;
* ``telephone``: the narrow band and codec of a phone line: 300-3400 Hz band-pass, 8 kHz sampling and 8-bit
  mu-law (G.711) companding, back to 16 kHz.

Hand-written with numpy/scipy rather than a sox subprocess per clip: the same seed gives the same audio on every
machine and no extra process runs per clip. :func:`draw_conditions` picks a clip's conditions and their values,
:func:`apply_conditions` applies them in the order a signal meets them (speaker speed, room, noise, line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from components.tts import SAMPLE_RATE_HZ

CONDITIONS = ("speed", "reverb", "noise", "telephone")  # also the order they are applied in
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent
TELEPHONE_RATE_HZ = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
MU_LAW_MU = 255.0
DIRECT_TO_REVERB_DB_RANGE = (0.0, 10.0)
SPEED_MAX_DENOMINATOR = 50


@dataclass(frozen=True)
class Conditions:
    """One clip's recording conditions; a field left at None is not applied."""

    speed: float | None = None
    rt60_s: float | None = None
    direct_to_reverb_db: float | None = None
    snr_db: float | None = None
    noise_colour: str | None = None
    telephone: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        present = {"speed": self.speed is not None, "reverb": self.rt60_s is not None,
                   "noise": self.snr_db is not None, "telephone": self.telephone}
        return tuple(name for name in CONDITIONS if present[name])


def draw_conditions(rng: np.random.Generator, cfg) -> Conditions:
    """Each of ``cfg.conditions`` independently with ``cfg.condition_probability``, at least one; values drawn
    from ``cfg``'s ranges (``cfg``: :class:`components.sections.AugmentSettings`)."""
    names = [n for n in cfg.conditions if rng.random() < cfg.condition_probability]
    if not names and cfg.conditions:
        names = [cfg.conditions[int(rng.integers(len(cfg.conditions)))]]
    values: dict = {}
    if "speed" in names:
        values["speed"] = float(rng.uniform(cfg.speed_min, cfg.speed_max))
    if "reverb" in names:
        values["rt60_s"] = float(rng.uniform(cfg.rt60_s_min, cfg.rt60_s_max))
        values["direct_to_reverb_db"] = float(rng.uniform(*DIRECT_TO_REVERB_DB_RANGE))
    if "noise" in names:
        values["snr_db"] = float(rng.uniform(cfg.snr_db_min, cfg.snr_db_max))
        values["noise_colour"] = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
    return Conditions(**values, telephone="telephone" in names)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster (shorter and higher for factor > 1)."""
    from scipy.signal import resample_poly

    ratio = Fraction(factor).limit_denominator(SPEED_MAX_DENOMINATOR)
    return resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)


def room_impulse_response(rt60_s: float, direct_to_reverb_db: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic impulse response: a unit direct path, then noise decaying by 60 dB over ``rt60_s``."""
    n = max(2, int(rt60_s * SAMPLE_RATE_HZ))
    t = np.arange(n) / SAMPLE_RATE_HZ
    tail = rng.standard_normal(n) * np.exp(-3.0 * math.log(10) * t / rt60_s)
    tail[0] = 0.0
    tail *= math.sqrt(10 ** (-direct_to_reverb_db / 10) / float(np.sum(tail**2)))
    tail[0] = 1.0
    return tail


def reverberate(audio: np.ndarray, rt60_s: float, direct_to_reverb_db: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` in a room: convolved with :func:`room_impulse_response`, cut to the dry length."""
    from scipy.signal import fftconvolve

    rir = room_impulse_response(rt60_s, direct_to_reverb_db, rng)
    return fftconvolve(audio, rir)[: audio.size].astype(np.float32)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-power noise whose power spectrum falls as 1 / f^k (white 0, pink 1, brown 2)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / f ** (NOISE_COLOURS[colour] / 2), n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def add_noise(audio: np.ndarray, snr_db: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    """``audio`` plus :func:`coloured_noise` at ``snr_db`` relative to the clip's mean power."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    if audio.size == 0 or power == 0:
        return audio
    noise = coloured_noise(audio.size, colour, rng) * math.sqrt(power / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def telephone_line(audio: np.ndarray) -> np.ndarray:
    """300-3400 Hz, 8 kHz, 8-bit mu-law, back to 16 kHz: what a G.711 phone call leaves of the clip."""
    from scipy.signal import butter, resample_poly, sosfilt

    sos = butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    narrow = resample_poly(sosfilt(sos, audio), TELEPHONE_RATE_HZ, SAMPLE_RATE_HZ)
    peak = max(float(np.max(np.abs(narrow))), 1e-12) if narrow.size else 1.0
    x = np.clip(narrow / peak, -1.0, 1.0)
    companded = np.sign(x) * np.log1p(MU_LAW_MU * np.abs(x)) / math.log1p(MU_LAW_MU)
    quantised = np.round((companded + 1) / 2 * 255) / 255 * 2 - 1
    expanded = np.sign(quantised) * ((1 + MU_LAW_MU) ** np.abs(quantised) - 1) / MU_LAW_MU
    return (resample_poly(expanded * peak, SAMPLE_RATE_HZ, TELEPHONE_RATE_HZ)).astype(np.float32)


def apply_conditions(audio: np.ndarray, conditions: Conditions, rng: np.random.Generator) -> np.ndarray:
    """``audio`` (16 kHz float) under ``conditions``, in the order of :data:`CONDITIONS`."""
    out = np.asarray(audio, dtype=np.float32)
    if conditions.speed is not None:
        out = change_speed(out, conditions.speed)
    if conditions.rt60_s is not None:
        out = reverberate(out, conditions.rt60_s, conditions.direct_to_reverb_db or 0.0, rng)
    if conditions.snr_db is not None:
        out = add_noise(out, conditions.snr_db, conditions.noise_colour or "white", rng)
    if conditions.telephone:
        out = telephone_line(out)
    return out
