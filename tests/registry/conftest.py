"""Registry fixtures: a tiny fake project (model folder, exports, metrics) and a fault-injecting HTTP proxy.

The proxy sits between boto3 and the real moto server: it forwards every request unchanged, except those it
is told to break (HTTP 500, dropped connection before or after forwarding, or conditional headers stripped).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

EVAL = {
    "forms": {
        "teacher": {"sets": {"test": {"clips": 4, "wer": 8.0, "cer": 3.0, "hallucination_rate": 0.0}}},
        "student": {"sets": {"test": {"clips": 4, "wer": 9.5, "cer": 4.0, "hallucination_rate": 0.0}}},
    },
    "speed": {"speedup": {"student": {"natural_b1": 2.1}}},
    "protocol": {"decode": {"num_beams": 1}, "hardware": {"cpu": "test CPU"}},
}


class FakeProject:
    """A folder that looks like a finished pipeline run, with params.yaml pointing the registry at ``bucket``."""

    def __init__(self, root: Path, bucket: str):
        self.root, self.bucket = root, bucket
        self.student = root / "models" / "student"
        self.metrics = root / "metrics"
        self.student.mkdir(parents=True)
        (root / "models" / "exports" / "student-ct2_int8").mkdir(parents=True)
        self.metrics.mkdir()
        (self.student / "config.json").write_text('{"model_type": "whisper"}\n')
        (self.student / "model.safetensors").write_bytes(b"\x00weights" * 100)
        (self.student / ".hidden-partial").write_text("never uploaded")
        (root / "models" / "exports" / "student-ct2_int8" / "model.bin").write_bytes(b"ct2" * 50)
        (self.metrics / "eval.json").write_text(json.dumps(EVAL))
        (self.metrics / "teacher.json").write_text(json.dumps({"model": "tiny.en", "params": 37760256}))
        self.set_gate(True)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["registry"].update({"bucket": bucket, "enabled": True, "max_attempts": 3})
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def set_gate(self, passed: bool) -> None:
        reasons = [] if passed else ["FAIL test wer_delta_points = 9.000 (threshold <= 2.0)"]
        (self.metrics / "gate.json").write_text(json.dumps(
            {"passed": passed, "candidate": "student", "reference": "teacher", "reasons": reasons,
             "checks": reasons or ["PASS test wer_delta_points = 1.500 (threshold <= 2.0)"]}))

    def change_model(self, text: str) -> None:
        (self.student / "config.json").write_text(json.dumps({"model_type": "whisper", "tag": text}) + "\n")

    def settings(self, *overrides: str):
        from components.settings import load_settings

        return load_settings(self.root / "params.yaml", list(overrides))


@pytest.fixture
def project(tmp_path, s3_bucket, monkeypatch) -> FakeProject:
    """A fake finished run in ``tmp_path`` (also the CWD) whose registry bucket is a fresh moto bucket."""
    monkeypatch.chdir(tmp_path)
    return FakeProject(tmp_path, s3_bucket)


Rule = Callable[[str, str, dict], "str | None"]  # (method, path, headers) -> action or None


class FaultProxy:
    """HTTP proxy to moto. ``rule(method, path, headers)`` returns None (forward) or an action:
    '500' (answer 500 InternalError), '503' (503 SlowDown, S3's throttling answer), 'drop' (close without answering, nothing forwarded),
    'lose' (forward, then close without answering), 'strip' (forward without If-Match/If-None-Match)."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.rule: Rule = lambda m, p, h: None
        self.seen: list[tuple[str, str, str]] = []  # (method, path, action)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size + 2)
                        raw += chunk
                        if size == 0:
                            while chunk not in (b"\r\n", b""):  # trailers
                                chunk = self.rfile.readline()
                                raw += chunk
                            return raw
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                headers = {k: v for k, v in self.headers.items()}
                with proxy.lock:
                    action = proxy.rule(self.command, self.path, headers)
                    proxy.seen.append((self.command, self.path, action or "forward"))
                if action == "drop":
                    self.close_connection = True
                    return
                if action in ("500", "503"):
                    code = b"InternalError" if action == "500" else b"SlowDown"  # 503 SlowDown = S3 throttling
                    payload = b"<Error><Code>" + code + b"</Code><Message>injected fault</Message></Error>"
                    self.send_response(int(action))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action == "strip":
                    headers = {k: v for k, v in headers.items() if k.lower() not in ("if-match", "if-none-match")}
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if action == "lose":
                    self.close_connection = True
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def actions(self, action: str) -> int:
        return sum(1 for _, _, a in self.seen if a == action)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(moto_server):
    proxy = FaultProxy(moto_server)
    yield proxy
    proxy.close()


def fail_first(n: int, action: str = "500", when: Callable[[str, str], bool] = lambda m, p: True) -> Rule:
    """A rule that breaks the first ``n`` matching requests, then forwards everything."""
    state = {"left": n}

    def rule(method, path, headers):
        if state["left"] > 0 and when(method, path):
            state["left"] -= 1
            return action
        return None

    return rule

