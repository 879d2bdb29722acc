"""Where the timed runs of :func:`components.speed.measure_speed` execute: this process or worker processes.

Why workers: once CTranslate2 has decoded in a process, PyTorch's float32 decoding in that process is 1.3-1.6x
slower for the rest of its life (measured 2026-12-02 on a 2-core Xeon, student/teacher batch-1 ratio 1.84-1.91x
before vs 1.57x after). ctranslate2's wheel brings its own
OpenMP runtime beside torch's. A user runs one model in one process, so by default (``evaluate.speed_isolation:
form``) every form is loaded and timed in its own spawned worker process; ``runtime`` shares one worker between
the forms of a runtime (torch: transformers + torch_int8; ctranslate2: the CT2 exports); ``none`` times in the
calling process (what earlier runs did).

The parent sends one command at a time and waits for its answer, so exactly one process computes at any moment
and the rounds stay interleaved as before: background load still hits every form alike. When the next run is in
another worker, the parent first waits :data:`SETTLE_S` so the OpenMP threads of the last one have gone to sleep.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

import numpy as np

ISOLATION_MODES = ("form", "runtime", "none")
SETTLE_S = 0.25  # seconds between runs in different workers (OpenMP spin-wait of the last one: ~0.2 s at most)
READY_TIMEOUT_S = 600.0  # a worker imports torch/transformers and loads one or more models


def runtime_of(form) -> str:
    """``ctranslate2`` for CT2 exports, ``torch`` for transformers folders and torch_int8 exports."""
    return "ctranslate2" if form.kind.startswith("ct2") else "torch"


def run_once(form, audios, batches, budgets, max_new_tokens: int, num_beams: int) -> tuple[float, int]:
    """Seconds and generated tokens for the whole sample (``budgets`` None: natural; else tokens per batch)."""
    tokens = 0
    started = time.perf_counter()
    for k, idx in enumerate(batches):
        clips = [audios[i] for i in idx]
        if budgets is None:
            outs = form.generate(clips, batch_size=len(idx), max_new_tokens=max_new_tokens, num_beams=num_beams)
        else:
            outs = form.generate(clips, batch_size=len(idx), max_new_tokens=budgets[k], min_new_tokens=budgets[k],
                                 num_beams=num_beams)
        tokens += sum(len(ids) for ids, _ in outs)
    return time.perf_counter() - started, tokens


class LocalTimer:
    """Runs the timed work on already loaded forms in this process."""

    isolation = "none"

    def __init__(self, forms, audios: list[np.ndarray]):
        self.forms = {f.name: f for f in forms}
        self.audios = audios

    def token_counts(self, name: str, indices: list[int], batch_size: int, max_new_tokens: int,
                     num_beams: int) -> list[int]:
        """Tokens per clip of ``audios[indices]`` decoded naturally (also the warm-up)."""
        outs = self.forms[name].generate([self.audios[i] for i in indices], batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, num_beams=num_beams)
        return [len(ids) for ids, _ in outs]

    def time(self, name: str, batches, budgets, max_new_tokens: int, num_beams: int) -> tuple[float, int]:
        return run_once(self.forms[name], self.audios, batches, budgets, max_new_tokens, num_beams)

    def describe(self) -> dict[str, Any]:
        return {"calling process": {"pid": os.getpid(), "forms": list(self.forms),
                                    "ctranslate2_loaded": "ctranslate2" in sys.modules}}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _worker_main(conn, specs: list[dict[str, Any]], audios: list[np.ndarray], torch_threads: int) -> None:
    """A speed worker: load ``specs`` (load_form keyword arguments), then answer LocalTimer calls until told to stop."""
    try:
        import torch

        torch.set_num_threads(torch_threads)
        from components.export import load_form
        from components.whisper_io import _quiet_generate_logs

        _quiet_generate_logs()
        timer = LocalTimer([load_form(**spec) for spec in specs], audios)
        conn.send(("ok", {"pid": os.getpid(), "forms": list(timer.forms), "torch_threads": torch.get_num_threads(),
                          "ctranslate2_loaded": "ctranslate2" in sys.modules}))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone (killed): nothing left to do
            return
        if message is None:
            return
        method, args = message
        try:
            conn.send(("ok", getattr(timer, method)(*args)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class ProcessTimer:
    """The :class:`LocalTimer` interface, each group of forms (one form, or one runtime) in a spawned worker."""

    def __init__(self, forms, audios: list[np.ndarray], isolation: str = "form"):
        if isolation not in ("form", "runtime"):
            raise ValueError(f"isolation must be 'form' or 'runtime' for worker processes, not {isolation!r}")
        unloadable = [f.name for f in forms if not f.source]
        if unloadable:
            raise ValueError(f"forms {unloadable} were not loaded from disk (components.export.load_form), so a "
                             "worker process cannot load them; time them with evaluate.speed_isolation=none")
        self.isolation = isolation
        self.groups: dict[str, list] = {}
        for form in forms:
            self.groups.setdefault(form.name if isolation == "form" else runtime_of(form), []).append(form)
        self.route = {f.name: key for key, group in self.groups.items() for f in group}
        self.audios = audios
        self.workers: dict[str, tuple[Any, Any]] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self._last: str | None = None

    def __enter__(self):
        import multiprocessing

        import torch

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this process's runtimes
        try:
            for key, group in self.groups.items():
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, name=f"askd-speed-{key}", daemon=True,
                                   args=(child_end, [f.source for f in group], self.audios, torch.get_num_threads()))
                proc.start()
                child_end.close()
                self.workers[key] = (proc, parent_end)
            for key in self.workers:  # they load in parallel; wait for each
                self.info[key] = self._receive(key, READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _receive(self, key: str, timeout_s: float | None = None):
        proc, conn = self.workers[key]
        waited = 0.0
        while not conn.poll(1.0):
            waited += 1.0
            if not proc.is_alive():
                raise RuntimeError(f"speed worker {key!r} exited (code {proc.exitcode}) without an answer")
            if timeout_s is not None and waited >= timeout_s:
                raise RuntimeError(f"speed worker {key!r} gave no answer within {timeout_s:.0f} s")
        status, payload = conn.recv()
        if status == "error":
            raise RuntimeError(f"speed worker {key!r} failed:\n{payload}")
        return payload

    def _call(self, method: str, name: str, *args):
        key = self.route[name]
        if self._last is not None and self._last != key:
            time.sleep(SETTLE_S)
        self._last = key
        self.workers[key][1].send((method, (name, *args)))
        return self._receive(key)

    def token_counts(self, name: str, *args) -> list[int]:
        return self._call("token_counts", name, *args)

    def time(self, name: str, *args) -> tuple[float, int]:
        return tuple(self._call("time", name, *args))

    def describe(self) -> dict[str, Any]:
        return dict(self.info)

    def close(self) -> None:
        for proc, conn in self.workers.values():
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc, conn in self.workers.values():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()
        self.workers = {}


def make_timer(forms, audios: list[np.ndarray], isolation: str):
    """A :class:`LocalTimer` (``none``) or a :class:`ProcessTimer` (``form`` / ``runtime``); use it with ``with``."""
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"speed isolation must be one of {ISOLATION_MODES}, not {isolation!r}")
    return LocalTimer(forms, audios) if isolation == "none" else ProcessTimer(forms, audios, isolation)
