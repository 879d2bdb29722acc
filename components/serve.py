"""`askd serve`: the inference API behind an OpenAI-compatible HTTP endpoint (FastAPI + uvicorn).

* ``POST /v1/audio/transcriptions``: multipart ``file`` (any format FFmpeg decodes), ``model`` (required by
  OpenAI's clients; any value is accepted, the server has one model), ``response_format`` (json, text, srt, vtt,
  verbose_json), ``language`` (``en`` or absent: the students are English-only);
* ``GET /v1/models``: the one model; ``GET /health``: ``{"status": "ok"}`` plus the queue length.

Bad input gets a 4xx with one line in ``{"error": {"message", "type"}}`` (OpenAI's error shape) and the server
keeps serving: not audio / empty / truncated 400, over ``max_upload_mb`` or ``max_duration_s`` 413, a missing
field 422, an unknown ``response_format`` or language 400.

Concurrency: one model, one decoding thread fed by a queue (micro-batching). A request decodes its upload in the
event loop's thread pool, then waits on the queue; the decoding thread takes what is waiting, up to
``max_batch`` requests gathered for at most ``batch_wait_ms``, and runs them as one
:meth:`components.inference.Model.transcribe_batch`. Why: neither a torch model nor a CTranslate2 model is
meant to be called from several threads at once, and batching concurrent requests raises throughput (one decoder
pass serves several clients) while a lone request waits at most ``batch_wait_ms``.
"""

# no `from __future__ import annotations`: FastAPI resolves the endpoint's parameter types (UploadFile, imported
# inside create_app) from the annotations, which must therefore be real objects, not strings
import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.tts import SAMPLE_RATE_HZ

MB = 1024 * 1024


@dataclass
class _Job:
    audio: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class BatchingWorker:
    """One thread that owns the model and decodes queued requests in batches."""

    def __init__(self, model, max_batch: int = 8, batch_wait_ms: float = 20.0):
        self.model, self.max_batch, self.wait_s = model, max_batch, batch_wait_ms / 1000
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="askd-decoder", daemon=True)
        self._thread.start()

    def submit(self, audio: np.ndarray) -> _Job:
        job = _Job(audio)
        self.jobs.put(job)
        return job

    def _take(self) -> list[_Job]:
        batch = [self.jobs.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.jobs.get(timeout=max(left, 0)) if left > 0 else self.jobs.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                results = self.model.transcribe_batch([job.audio for job in batch])
                for job, result in zip(batch, results, strict=True):
                    job.result = result
            except Exception as err:  # one bad batch fails its requests, not the server
                for job in batch:
                    job.error = err
            self.batches += 1
            for job in batch:
                job.done.set()


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _decode_upload(data: bytes, cfg) -> np.ndarray:
    from components.audio import AudioDecodeError, decode_audio

    if not data:
        raise BadRequest(400, "the uploaded file is empty")
    if len(data) > cfg.max_upload_mb * MB:
        raise BadRequest(413, f"the upload is {len(data) / MB:.1f} MB, over the limit of {cfg.max_upload_mb} MB")
    try:
        audio, _ = decode_audio(data)
    except AudioDecodeError as err:
        raise BadRequest(400, f"the uploaded file is not audio FFmpeg can decode ({err.reason})") from None
    if audio.size == 0 or not np.isfinite(audio).all():
        raise BadRequest(400, "the uploaded file holds no usable audio samples")
    seconds = audio.size / SAMPLE_RATE_HZ
    if seconds > cfg.max_duration_s:
        raise BadRequest(413, f"the audio lasts {seconds:.0f} s, over the limit of {cfg.max_duration_s:g} s")
    return audio


def create_app(model, cfg, model_name: str = "whisper-askd-student"):
    """The FastAPI app serving ``model`` (:class:`components.inference.Model`) with ``cfg`` (ServeSettings)."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse

    from components.transcript_formats import FORMATS, MEDIA_TYPES, as_dict, render

    worker = BatchingWorker(model, cfg.max_batch, cfg.batch_wait_ms)
    app = FastAPI(title="whisper-askd", description="OpenAI-compatible transcription with a distilled Whisper")
    app.state.worker = worker

    @app.middleware("http")
    async def _upload_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > cfg.max_upload_mb * MB + MB:  # + room for the form fields
            return _error(413, f"the upload is {int(size) / MB:.1f} MB, over the limit of {cfg.max_upload_mb} MB")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or str(e["loc"]) for e in exc.errors())
        return _error(422, f"missing or invalid form field(s): {fields}")

    @app.exception_handler(BadRequest)
    async def _bad(_request: Request, exc: BadRequest):
        return _error(exc.status, exc.message, exc.kind)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "queued": worker.jobs.qsize(), "batches": worker.batches}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "whisper-askd",
                                            "window_s": model.window_s, "source": model.source}]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(file: UploadFile = File(...), model_field: str = Form(..., alias="model"),
                             response_format: str = Form("json"), language: str | None = Form(None)):
        if response_format not in FORMATS:
            raise BadRequest(400, f"response_format {response_format!r} is not one of {', '.join(FORMATS)}")
        if language not in (None, "", "en"):
            raise BadRequest(400, f"language {language!r} is not supported: this model transcribes English only")
        data = await file.read(cfg.max_upload_mb * MB + 1)
        audio = await asyncio.to_thread(_decode_upload, data, cfg)
        job = worker.submit(audio)
        await asyncio.to_thread(job.done.wait)
        if job.error is not None:
            return _error(500, f"decoding failed: {type(job.error).__name__}: {job.error}", "server_error")
        if response_format in ("json", "verbose_json"):
            return JSONResponse(as_dict(job.result, verbose=response_format == "verbose_json"))
        return PlainTextResponse(render(job.result, response_format), media_type=MEDIA_TYPES[response_format])

    return app


def serve(model, cfg, model_name: str = "whisper-askd-student") -> None:
    """Run the app with uvicorn on ``cfg.host:cfg.port`` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, cfg, model_name), host=cfg.host, port=cfg.port, log_level="info")
