"""`askd serve` as a real uvicorn server in its own process: the OpenAI client against it, every bad input of the
matrix answered with one 4xx line while the server keeps serving, concurrent requests decoded in shared batches."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from components.text import wer
from components.tts import SAMPLE_RATE_HZ
from tests.conftest import _free_port

REPO = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, windowed_dir):
    root = tmp_path_factory.mktemp("serve")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    port = _free_port()
    cmd = [sys.executable, "-m", "components", "--params", str(root / "params.yaml"), "--set", "serve.max_upload_mb=2",
           "--set", "serve.max_duration_s=120", "serve", "--model", str(windowed_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = URL.format(port=port)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"askd serve exited: {proc.stdout.read()}")
    else:
        proc.kill()
        pytest.fail("askd serve did not answer /health within 120 s")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def _wav(audio: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE_HZ, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _post(base: str, data: bytes | None, **fields) -> httpx.Response:
    files = {"file": ("clip.wav", data, "application/octet-stream")} if data is not None else None
    return httpx.post(f"{base}/v1/audio/transcriptions", files=files, data={"model": "whisper-askd-student", **fields},
                      timeout=120)


def test_openai_client_gets_the_transcript_in_every_format(server, piper_clips):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="not-needed")
    clip = piper_clips[1]
    with clip.path.open("rb") as fh:
        result = client.audio.transcriptions.create(model="whisper-askd-student", file=fh)
    assert wer([clip.text], [result.text]) < 20
    with clip.path.open("rb") as fh:
        srt = client.audio.transcriptions.create(model="whisper-askd-student", file=fh, response_format="srt")
    assert str(srt).startswith("1\n00:00:00,000 --> ")
    verbose = _post(server, clip.path.read_bytes(), response_format="verbose_json").json()
    assert verbose["segments"][0]["start"] == 0 and verbose["duration"] > 1
    assert _post(server, clip.path.read_bytes(), response_format="vtt").text.startswith("WEBVTT")
    assert _post(server, clip.path.read_bytes(), response_format="text").text.strip() == result.text
    assert httpx.get(f"{server}/v1/models").json()["data"][0]["id"] == "whisper-askd-student"


def test_bad_inputs_get_one_line_4xx_and_the_server_keeps_serving(server, piper_clips):
    good = piper_clips[0].path.read_bytes()
    ten_minutes = _wav(np.zeros(600 * SAMPLE_RATE_HZ, dtype=np.float32), fmt="FLAC")  # small file, long audio
    cases = {
        "not audio": (_post(server, b"this is a text file, not audio\n" * 20), 400, "not audio"),
        "empty": (_post(server, b""), 400, "empty"),
        "truncated": (_post(server, good[:40]), 400, "not audio"),
        "10 minutes": (_post(server, ten_minutes), 413, "over the limit of 120 s"),
        "too big": (_post(server, _wav(np.zeros(90 * SAMPLE_RATE_HZ, dtype=np.float32))), 413, "over the limit of 2 MB"),
        "no file": (_post(server, None), 422, "file"),
        "no model": (httpx.post(f"{server}/v1/audio/transcriptions", files={"file": ("a.wav", good)}), 422, "model"),
        "bad format": (_post(server, good, response_format="docx"), 400, "response_format 'docx'"),
        "bad language": (_post(server, good, language="fr"), 400, "English only"),
    }
    for name, (response, status, needle) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        message = response.json()["error"]["message"]
        assert needle in message and "\n" not in message and "Traceback" not in message, (name, message)
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert _post(server, good).status_code == 200


def test_concurrent_requests_are_all_answered_and_batched(server, piper_clips):
    clips = [c.path.read_bytes() for c in piper_clips] * 2
    batches_before = httpx.get(f"{server}/health").json()["batches"]
    with ThreadPoolExecutor(max_workers=len(clips)) as pool:
        responses = list(pool.map(lambda data: _post(server, data), clips))
    assert [r.status_code for r in responses] == [200] * len(clips)
    texts = [r.json()["text"] for r in responses]
    assert texts[: len(piper_clips)] == texts[len(piper_clips):]  # the same clip, the same text, whatever the batch
    batches = httpx.get(f"{server}/health").json()["batches"] - batches_before
    assert 1 <= batches < len(clips)  # some requests shared a decoder batch


def test_load_benchmark_smoke(tmp_path, tiny_whisper_dir, prepared_speech_dir):
    import json

    from benchmarks import serve as bench

    code = bench.main(["--student", str(tiny_whisper_dir), "--teacher", str(tiny_whisper_dir), "--prepared",
                       str(prepared_speech_dir), "--set", "train", "--clips", "2", "--clients", "2", "--seconds", "3",
                       "--results-dir", str(tmp_path)])
    result = json.loads((tmp_path / "serve.json").read_text())
    assert code == 0 and result["benchmark"] == "serve"
    for name in ("student", "teacher"):
        assert result[name]["failed"] == 0 and result[name]["requests"] >= 2 and result[name]["audio_s_per_s"] > 0
        assert 0 < result[name]["latency_p50_s"] <= result[name]["latency_p95_s"]
    assert result["student_vs_teacher"]["throughput_ratio"] > 0
