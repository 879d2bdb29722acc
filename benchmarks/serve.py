"""`askd serve` under load: N concurrent clients for T seconds, the student and then the teacher, same clips.

    python -m benchmarks.serve [--student models/exports/student-ct2_int8] [--teacher models/teacher]
                               [--clients 16] [--seconds 60] [--set test] [--clips 32] [--results-dir DIR]

Each model runs in its own `askd serve` process on a free local port (the server as users start it: one model,
micro-batching). Every client thread posts clips of the prepared ``--set`` (WAV bytes) in a loop, one request at a
time, until the time is up; every answer is checked (HTTP 200 and a ``text`` field). Reported per model: requests,
failed requests, latency p50 / p95 (seconds), requests/s, audio seconds transcribed per second, and the student
/ teacher ratios of throughput and p50 latency, measured back to back on this machine. Writes serve.json.
"""

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, write_result_in


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clip_bytes(prepared: Path, split: str, n: int) -> list[tuple[bytes, float]]:
    """(WAV bytes, seconds) of the first ``n`` clips of a prepared split."""
    import soundfile as sf

    from components.evaluate import load_prepared_sets

    (eval_set,), _ = load_prepared_sets(prepared, [split], n)
    out = []
    for audio in eval_set.audios:
        buf = io.BytesIO()
        sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
        out.append((buf.getvalue(), len(audio) / 16000))
    return out


def start_server(model: str, port: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "components", "--params", str(REPO / "params.yaml"), "serve", "--model", model,
           "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"askd serve --model {model} exited with {proc.returncode}")
    proc.kill()
    raise RuntimeError(f"askd serve --model {model} did not start within 180 s")


def load(port: int, clips: list[tuple[bytes, float]], clients: int, seconds: float) -> dict[str, Any]:
    """Run the clients; latency percentiles, throughput and failures."""
    import httpx

    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    latencies: list[float] = []
    audio_s: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            i = k
            while time.monotonic() < stop_at:
                data, dur = clips[i % len(clips)]
                started = time.perf_counter()
                try:
                    r = http.post(url, files={"file": ("clip.wav", data)}, data={"model": "bench"})
                    ok = r.status_code == 200 and "text" in r.json()
                    problem = None if ok else f"{r.status_code}: {r.text[:100]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                with lock:
                    if problem:
                        failures.append(problem)
                    else:
                        latencies.append(time.perf_counter() - started)
                        audio_s.append(dur)
                i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {"requests": len(latencies) + len(failures), "failed": len(failures), "failures": failures[:5],
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
            "latency_p95_s": round(float(np.percentile(lat, 95)), 4), "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 3), "audio_s_per_s": round(sum(audio_s) / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="models/exports/student-ct2_int8")
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--set", dest="split", default="test")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    clips = clip_bytes(Path(args.prepared), args.split, args.clips)
    result: dict[str, Any] = {"command": "python -m benchmarks.serve " + " ".join(argv or sys.argv[1:]),
                              "clients": args.clients, "seconds": args.seconds, "clips": len(clips), "set": args.split}
    for name, model in (("student", args.student), ("teacher", args.teacher)):
        port = _free_port()
        proc = start_server(model, port)
        try:
            result[name] = {"model": model, **load(port, clips, args.clients, args.seconds)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        print(f"serve: {name} {result[name]}", flush=True)
    s, t = result["student"], result["teacher"]
    result["student_vs_teacher"] = {
        "throughput_ratio": round(s["requests_per_s"] / t["requests_per_s"], 3) if t["requests_per_s"] else None,
        "p50_latency_ratio": round(t["latency_p50_s"] / s["latency_p50_s"], 3) if s["latency_p50_s"] else None}
    print(f"wrote {write_result_in('serve', result, args.results_dir)}")
    return 0 if s["failed"] == 0 and t["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
