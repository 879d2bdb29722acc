"""Decode any common audio format to float32 mono 16 kHz, and decide whether a clip is usable.

Decoding uses torchcodec's ``AudioDecoder`` (FFmpeg: wav, flac, mp3, ogg/opus, m4a, ...). It resamples
to :data:`SAMPLE_RATE_HZ` itself; channels are averaged here (FFmpeg's own stereo->mono downmix applies a
-3 dB pan law, i.e. ``(L + R) * 0.707``, which can clip identical loud channels). If torchcodec or FFmpeg
is unavailable, or FFmpeg rejects a file, soundfile (libsndfile) is tried before the clip is called
``corrupt``.

Problems are reported, never raised past :func:`decode_audio`'s documented :class:`AudioDecodeError`,
so one bad file cannot crash a run.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.tts import SAMPLE_RATE_HZ, resample

if TYPE_CHECKING:  # pragma: no cover
    from components.settings import PrepareSettings

log = logging.getLogger(__name__)

WAV_SUBTYPE = "PCM_16"  # what :func:`encode_wav` writes
DETAIL_MAX_CHARS = 200  # error details are shortened to one line of this length
SILENCE_FLOOR_DBFS = -200.0  # RMS level reported for digital silence (instead of -inf)

# skip reasons (also the values of ``skipped_by_reason`` in the prepare metrics)
REASON_EMPTY = "empty"
REASON_CORRUPT = "corrupt"
REASON_ZERO_LENGTH = "zero_length"
REASON_TOO_SHORT = "too_short"
REASON_TOO_LONG = "too_long"
REASON_SILENT = "silent"


class AudioDecodeError(Exception):
    """A clip that cannot be decoded; ``reason`` is ``empty`` or ``corrupt``, ``detail`` one line."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioInfo:
    """What the source file was, before conversion to 16 kHz mono."""

    orig_sample_rate_hz: int
    orig_channels: int
    duration_s: float  # of the decoded (16 kHz) audio
    decoder: str  # "torchcodec" or "soundfile"

    @property
    def resampled(self) -> bool:
        """True if the source was not already at 16 kHz."""
        return self.orig_sample_rate_hz != SAMPLE_RATE_HZ

    @property
    def downmixed(self) -> bool:
        """True if the source had more than one channel."""
        return self.orig_channels > 1


def _one_line(err: BaseException | str) -> str:
    """First line of an error, without torchcodec's C++ source location prefix."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    line = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", line)
    return line[:DETAIL_MAX_CHARS]


@functools.lru_cache(maxsize=1)
def _torchcodec_decoder_cls():
    """torchcodec's ``AudioDecoder``, or ``None`` when torchcodec / the FFmpeg libraries are missing."""
    try:
        from torchcodec.decoders import AudioDecoder
    except Exception as err:  # ImportError, or RuntimeError/OSError when FFmpeg libraries are missing
        log.warning("torchcodec unavailable (%s); decoding with soundfile only (no mp3/m4a)", _one_line(err))
        return None
    return AudioDecoder


def _downmix(channels_first: np.ndarray) -> np.ndarray:
    """(channels, samples) -> (samples,) float32 by averaging channels."""
    if channels_first.ndim == 1:
        return channels_first.astype(np.float32, copy=False)
    if channels_first.shape[0] == 1:
        return channels_first[0].astype(np.float32, copy=False)
    return channels_first.mean(axis=0).astype(np.float32)


def _decode_torchcodec(decoder_cls, source: bytes | str) -> tuple[np.ndarray, AudioInfo]:
    decoder = decoder_cls(source, sample_rate=SAMPLE_RATE_HZ)
    meta = decoder.metadata
    orig_rate = int(meta.sample_rate or SAMPLE_RATE_HZ)
    orig_channels = int(meta.num_channels or 1)
    try:
        samples = decoder.get_all_samples()
    except RuntimeError as err:
        if "No audio frames" in str(err):  # a valid header with no samples: a 0 s clip
            return np.zeros(0, dtype=np.float32), AudioInfo(orig_rate, orig_channels, 0.0, "torchcodec")
        raise
    audio = _downmix(samples.data.numpy())
    return audio, AudioInfo(orig_rate, orig_channels, len(audio) / SAMPLE_RATE_HZ, "torchcodec")


def _decode_soundfile(source: bytes | str) -> tuple[np.ndarray, AudioInfo]:
    import soundfile as sf

    data, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32", always_2d=True)
    channels = data.shape[1] if data.ndim == 2 else 1
    audio = resample(_downmix(data.T), int(rate)) if len(data) else np.zeros(0, dtype=np.float32)
    return audio, AudioInfo(int(rate), int(channels), len(audio) / SAMPLE_RATE_HZ, "soundfile")


def decode_audio(source: bytes | str | Path) -> tuple[np.ndarray, AudioInfo]:
    """Decode ``source`` (encoded bytes or a file path) to float32 mono at :data:`SAMPLE_RATE_HZ`.

    Raises :class:`FileNotFoundError` for a missing path and :class:`AudioDecodeError` with
    ``reason`` ``empty`` (0 bytes) or ``corrupt`` (not decodable as audio). A valid file with no
    samples decodes to an empty array (see :func:`check_clip`'s ``zero_length``).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        src: bytes | str = bytes(source)
        if len(src) == 0:
            raise AudioDecodeError(REASON_EMPTY, "0 bytes")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        if path.stat().st_size == 0:
            raise AudioDecodeError(REASON_EMPTY, "0 bytes")
        src = str(path)

    errors: list[str] = []
    decoder_cls = _torchcodec_decoder_cls()
    if decoder_cls is not None:
        try:
            return _decode_torchcodec(decoder_cls, src)
        except Exception as err:  # FFmpeg raises RuntimeError/ValueError for non-audio input
            errors.append(f"ffmpeg: {_one_line(err)}")
    try:
        return _decode_soundfile(src)
    except Exception as err:  # soundfile.LibsndfileError, ValueError, ...
        errors.append(f"soundfile: {_one_line(err)}")
    raise AudioDecodeError(REASON_CORRUPT, "; ".join(errors)[: 2 * DETAIL_MAX_CHARS])


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (1.0); digital silence gives -200."""
    if audio.size == 0:
        return SILENCE_FLOOR_DBFS
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return max(20.0 * math.log10(rms), SILENCE_FLOOR_DBFS) if rms > 0 else SILENCE_FLOOR_DBFS


def check_clip(audio: np.ndarray, cfg: PrepareSettings) -> str | None:
    """Return why a decoded 16 kHz clip must be skipped, or ``None`` if it is usable.

    Reasons, checked in this order: ``zero_length``, ``corrupt`` (NaN/inf samples), ``too_short`` /
    ``too_long`` (``cfg.min_duration_s`` / ``cfg.max_duration_s``), ``silent`` (RMS below
    ``cfg.silence_threshold_dbfs``).
    """
    if audio.size == 0:
        return REASON_ZERO_LENGTH
    if not np.isfinite(audio).all():
        return REASON_CORRUPT
    duration_s = audio.size / SAMPLE_RATE_HZ
    if duration_s < cfg.min_duration_s:
        return REASON_TOO_SHORT
    if duration_s > cfg.max_duration_s:
        return REASON_TOO_LONG
    if rms_dbfs(audio) < cfg.silence_threshold_dbfs:
        return REASON_SILENT
    return None


def clip_detail(audio: np.ndarray, reason: str) -> str:
    """A short human-readable detail for a skip reason from :func:`check_clip`."""
    duration_s = audio.size / SAMPLE_RATE_HZ
    if reason == REASON_SILENT:
        return f"rms {rms_dbfs(audio):.1f} dBFS"
    if reason == REASON_CORRUPT:
        return "non-finite samples"
    return f"{duration_s:.2f} s"


def encode_wav(audio: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """16-bit PCM WAV bytes of a float mono clip (values clipped to [-1, 1])."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate_hz, format="WAV", subtype=WAV_SUBTYPE)
    return buf.getvalue()


def dataset_audio_arrays(ds, column: str = "audio") -> list[np.ndarray]:
    """The 16 kHz float32 arrays of a prepared dataset's audio column, in row order.

    Prepared datasets store 16-bit WAV bytes; reading them without the datasets decoder (torchcodec)
    is fast and needs no FFmpeg.
    """
    import soundfile as sf
    from datasets import Audio

    rows = ds.cast_column(column, Audio(decode=False))[column]
    arrays = []
    for item in rows:
        if item.get("bytes"):
            audio, rate = sf.read(io.BytesIO(item["bytes"]), dtype="float32", always_2d=True)
        else:
            audio, rate = sf.read(item["path"], dtype="float32", always_2d=True)
        arrays.append(resample(audio.mean(axis=1), rate))
    return arrays
