"""Shared fixtures: a real moto S3 server, real synthetic speech clips, and a bad-audio matrix.

Fixtures that need tools (moto_server binary, espeak-ng/Piper) skip with a reason when absent.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

SPEECH_TEXTS = (
    ("The quick brown fox jumps over the lazy dog.", "en-us"),
    ("Please call Stella and ask her to bring these things.", "en-gb"),
    ("A rainbow is a division of white light into many beautiful colors.", "en-gb-scotland"),
    ("The birch canoe slid on the smooth planks.", "en-029"),
    ("Glue the sheet to the dark blue background.", "en-gb-x-rp"),
    ("It is easy to tell the depth of a well.", "en-us"),
)
MOTO_READY_TIMEOUT_S = 30.0
MOTO_STOP_TIMEOUT_S = 10.0
BAD_LONG_DURATION_S = 45.0
BAD_SILENCE_DURATION_S = 2.0
BAD_SHORT_DURATION_S = 0.1
LOW_RATE_HZ = 8_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A real ``moto_server`` on 127.0.0.1:<free port>; yields the endpoint URL.

    For the rest of the session AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    AWS_DEFAULT_REGION point boto3 (and DVC, s3fs) at it. Stopped with SIGINT, then killed.
    """
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        pytest.skip(f"moto_server not installed next to {sys.executable} (pip install 'moto[server]')")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    log_fh = log_path.open("wb")
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log_fh, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + MOTO_READY_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # any HTTP answer means it is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log_fh.close()
                pytest.fail(f"moto_server did not start on {url}:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", url)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.delenv("AWS_PROFILE", raising=False)
    mp.delenv("AWS_SESSION_TOKEN", raising=False)
    try:
        yield url
    finally:
        mp.undo()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=MOTO_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_fh.close()


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh, uniquely named bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    return name


@dataclass(frozen=True)
class SpeechClip:
    """A real speech clip: 16 kHz float32 ``audio``, written as 16-bit WAV at ``path``."""

    text: str
    speaker: str
    path: Path
    audio: np.ndarray = field(repr=False)


def _say(text: str, voice: str) -> np.ndarray:
    from components import tts

    if tts.espeak_available():
        return tts.espeak_say(text, voice=voice)
    return tts.piper_say(text)


@pytest.fixture(scope="session")
def speech_clips(tmp_path_factory) -> list[SpeechClip]:
    """Six short real speech clips (espeak-ng voices, Piper if espeak is absent) with their texts."""
    import soundfile as sf

    from components.tts import SAMPLE_RATE_HZ

    folder = tmp_path_factory.mktemp("speech")
    clips = []
    for i, (text, voice) in enumerate(SPEECH_TEXTS):
        try:
            audio = _say(text, voice)
        except Exception as err:  # pragma: no cover - environment without any TTS
            pytest.skip(f"no TTS available: {err}")
        path = folder / f"speech_{i:02d}.wav"
        sf.write(path, audio, SAMPLE_RATE_HZ, subtype="PCM_16")
        clips.append(SpeechClip(text=text, speaker=voice, path=path, audio=audio))
    return clips


@dataclass
class BadAudioMatrix:
    """The bad-audio folder and what prepare must make of it."""

    root: Path
    expected_reasons: dict[str, str]  # file name -> skip reason
    expected_kept: list[str]  # file names that must be kept
    formats_written: list[str]

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.expected_reasons.values():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))


@pytest.fixture
def bad_audio_dir(tmp_path, speech_clips) -> BadAudioMatrix:
    """A folder of broken / edge-case files next to good clips in several formats.

    Skipped: corrupt (random bytes .wav, text named .mp3, PNG named .ogg), empty (0 bytes), zero_length
    (valid 0 s wav), silent (2 s digital silence), too_short (0.1 s), too_long (45 s speech).
    Kept: an 8 kHz stereo speech clip (resampled + downmixed) and good flac/ogg/mp3 clips at 16 kHz.
    """
    import soundfile as sf

    from components.tts import SAMPLE_RATE_HZ, resample

    root = tmp_path / "bad_audio"
    root.mkdir()
    speech = speech_clips[0].audio
    rng = np.random.default_rng(0)
    reasons: dict[str, str] = {}
    kept: list[str] = []

    (root / "corrupt.wav").write_bytes(rng.bytes(8192))
    reasons["corrupt.wav"] = "corrupt"
    (root / "not_audio.mp3").write_text("this is a text file, not audio\n" * 20)
    reasons["not_audio.mp3"] = "corrupt"
    (root / "image.ogg").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(512))
    reasons["image.ogg"] = "corrupt"
    (root / "empty.wav").write_bytes(b"")
    reasons["empty.wav"] = "empty"
    sf.write(root / "zero_length.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE_HZ, subtype="PCM_16")
    reasons["zero_length.wav"] = "zero_length"
    silence = np.zeros(int(BAD_SILENCE_DURATION_S * SAMPLE_RATE_HZ), dtype=np.float32)
    sf.write(root / "silence.wav", silence, SAMPLE_RATE_HZ, subtype="PCM_16")
    reasons["silence.wav"] = "silent"
    sf.write(root / "too_short.wav", speech[: int(BAD_SHORT_DURATION_S * SAMPLE_RATE_HZ)] + 0.05, SAMPLE_RATE_HZ)
    reasons["too_short.wav"] = "too_short"
    n_long = int(BAD_LONG_DURATION_S * SAMPLE_RATE_HZ)
    sf.write(root / "too_long.wav", np.resize(speech, n_long), SAMPLE_RATE_HZ, subtype="PCM_16")
    reasons["too_long.wav"] = "too_long"

    low = resample(speech_clips[1].audio, SAMPLE_RATE_HZ, LOW_RATE_HZ)
    sf.write(root / "stereo_8k.wav", np.stack([low, 0.5 * low], axis=1), LOW_RATE_HZ, subtype="PCM_16")
    kept.append("stereo_8k.wav")
    formats = []
    for fmt, clip in (("flac", speech_clips[2]), ("ogg", speech_clips[3]), ("mp3", speech_clips[4])):
        path = root / f"good.{fmt}"
        try:
            sf.write(path, clip.audio, SAMPLE_RATE_HZ, format=fmt.upper())
        except Exception:  # libsndfile built without this format: leave it out
            path.unlink(missing_ok=True)
            continue
        kept.append(path.name)
        formats.append(fmt)
    return BadAudioMatrix(root=root, expected_reasons=reasons, expected_kept=kept, formats_written=formats)
