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


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _repo_outputs_untouched():
    """Tests must never write into the checkout's metrics/ or reports/ (stages write relative to the CWD)."""

    def snapshot():
        return {p: p.stat().st_mtime_ns for d in ("metrics", "reports") for p in (REPO_ROOT / d).glob("*")}

    before = snapshot()
    yield
    changed = sorted(str(p.relative_to(REPO_ROOT)) for p, t in snapshot().items() if before.get(p) != t)
    assert not changed, f"tests wrote into the checkout: {changed}"


def copy_pipeline_project(root: Path, overrides: dict) -> Path:
    """Copy the pipeline definition and stage code into ``root`` with ``overrides`` (per params.yaml section;
    dict values are merged one level deep) applied to params.yaml. Git/DVC initialisation is the caller's."""
    import shutil

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in overrides.items():
        for key, value in values.items():
            params[section][key] = {**params[section][key], **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def fault_seed() -> int:
    """Seed of the random kill points: ``ASKD_FAULT_SEED`` to replay a failure, else a fresh one per run."""
    import os

    return int(os.environ.get("ASKD_FAULT_SEED", time.time_ns() % 10**6))


def kill_after(cmd: list[str], after_s: float, **popen) -> bool:
    """Run ``cmd``; ``SIGKILL`` it ``after_s`` seconds after the start. True if killed, False if it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        proc.wait(timeout=max(after_s, 0.001))
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return True


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


# ---------------------------------------------------------------------------------------------
# Whisper models: the real tiny.en teacher (converted from its PyPI package) and a tiny random one


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """The real tiny.en teacher converted into a transformers folder (about 5 s)."""
    from components.ct2 import packaged_weights
    from components.whisper_io import convert_ct2_to_hf

    out = tmp_path_factory.mktemp("teacher") / "tiny.en"
    convert_ct2_to_hf(packaged_weights("tiny.en"), out)
    return out


@pytest.fixture(scope="session")
def windowed_dir(tmp_path_factory, teacher_dir) -> Path:
    """tiny.en with a 10 s encoder window (a student's shape): real speech in, real text out, long audio cut."""
    from components.train.student import shorten_window
    from components.whisper_io import load_whisper

    model, processor = shorten_window(*load_whisper(teacher_dir), 10)
    out = tmp_path_factory.mktemp("windowed") / "student"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory, teacher_dir) -> Path:
    """A tiny random Whisper (d_model 32, 1 + 1 layers) with tiny.en's real processor and generation config."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    real = WhisperConfig.from_pretrained(teacher_dir)
    cfg = WhisperConfig(
        vocab_size=real.vocab_size,
        num_mel_bins=real.num_mel_bins,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=real.max_source_positions,
        max_target_positions=real.max_target_positions,
        pad_token_id=real.pad_token_id,
        bos_token_id=real.bos_token_id,
        eos_token_id=real.eos_token_id,
        decoder_start_token_id=real.decoder_start_token_id,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig.from_pretrained(teacher_dir)
    out = tmp_path_factory.mktemp("tiny_whisper") / "model"
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(teacher_dir).save_pretrained(out)
    return out


def make_prepared_dataset(root: Path, clips, *, copies: int = 1, audio_only: tuple[int, ...] = ()) -> Path:
    """Run the real prepare stage on ``clips`` (x ``copies``); every 3rd clip goes to validation.

    Clips whose index is in ``audio_only`` get no transcript. Returns the prepared dataset folder.
    """
    import csv
    import os
    import shutil

    from components.prepare import prepare
    from components.settings import PrepareSettings

    src = root / "corpus"
    src.mkdir(parents=True)
    rows = []
    for c in range(copies):
        for i, clip in enumerate(clips):
            name = f"c{c:02d}_{i:02d}.wav"
            shutil.copyfile(clip.path, src / name)
            split = "validation" if (c * len(clips) + i) % 3 == 2 else "train"
            rows.append([name, "" if i in audio_only else clip.text, clip.speaker, split])
    with (src / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file_name", "text", "speaker", "split"], *rows])
    out = root / "prepared"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        prepare(PrepareSettings(source="folder", input=str(src), out_dir=out))
    finally:
        os.chdir(cwd)
    return out


PIPER_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A rainbow is a division of white light into many beautiful colors.",
    "The train to Boston leaves from the main platform every morning.",
    "Glue the sheet to the dark blue background.",
    "My grandmother planted tomatoes and peppers in the garden last spring.",
)


@pytest.fixture(scope="session")
def piper_clips(tmp_path_factory) -> list[SpeechClip]:
    """Six clips of the in-domain Piper voice (what the teacher transcribes well), with their texts."""
    import soundfile as sf

    from components.tts import SAMPLE_RATE_HZ, piper_say

    folder = tmp_path_factory.mktemp("piper")
    clips = []
    for i, text in enumerate(PIPER_TEXTS):
        audio = piper_say(text, noise_scale=0.5)
        path = folder / f"piper_{i:02d}.wav"
        sf.write(path, audio.clip(-1, 1), SAMPLE_RATE_HZ, subtype="PCM_16")
        clips.append(SpeechClip(text=text, speaker="piper-joe", path=path, audio=audio))
    return clips


@pytest.fixture(scope="session")
def prepared_speech_dir(tmp_path_factory, piper_clips) -> Path:
    """A prepared dataset of the six Piper clips; clip 5 is audio-only."""
    return make_prepared_dataset(tmp_path_factory.mktemp("prep"), piper_clips, audio_only=(5,))
