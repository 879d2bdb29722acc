"""How each evaluated form runs (:class:`Form`, chunked long-form), and how fast, measured interleaved in one run.

A :class:`Form` wraps a torch Whisper (transformers folder or torch_int8 export) or a CTranslate2 engine behind one
``generate`` (clips within the window; ``min_new_tokens`` forces the length for speed runs) and one ``decode``
(any length: chunked long-form, see :mod:`components.evaluate`). Loading and exporting: components.export.

Speed protocol (:func:`measure_speed`):

* a small sample of short clips (``speed_clips`` from ``speed_set``, each within every form's window) is
  decoded whole, at batch 1 and at the serving batch size (``speed_batch_size``), length-sorted batches;
* two length protocols: ``natural`` (each form stops at its own ``<|endoftext|>``, ``max_new_tokens`` cap)
  and ``fixed`` (every form decodes exactly the reference's (teacher's) token count, ``min_new_tokens =
  max_new_tokens``: per clip at batch 1, the batch's longest teacher output at larger batches), so a student that
  babbles to the cap cannot make the ratio look worse, nor a terse one better;
* ``speed_rounds`` rounds; in each round every form runs once per (protocol, batch), the form order rotating
  between rounds (interleaved, so background load hits every form alike); the MINIMUM over rounds is kept;
* each form is timed in its own worker process by default (``speed_isolation``, :mod:`components.speed_workers`):
  CTranslate2 having run in a process slows PyTorch there; one command at a time, so rounds stay interleaved;
* per (form, protocol, batch): ``seconds`` (the whole sample), ``latency_s`` (per clip), ``rtf`` (seconds per
  second of audio), ``tokens_per_s`` (generated tokens); ``speedup[form][<protocol>_b<batch>]`` is the
  reference's seconds over the form's, both minima of the same run; ``speedup_same_runtime[student_<x>]`` is the
  same against ``teacher_<x>`` (same runtime and precision, e.g. both CTranslate2 int8).

Timing covers what a caller pays: feature extraction, encoder, ``generate``, token decoding; not audio decoding.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.whisper_io import SAMPLE_RATE_HZ, _strip_generated, generate_tokens

PROTOCOLS = ("natural", "fixed")
LONGFORM_MODES = ("silence", "chunked")
PACKAGES = ("torch", "transformers", "ctranslate2", "numpy", "datasets", "jiwer", "tokenizers")


class _DropMinLengthLog(logging.Filter):
    """transformers logs 'Both `min_new_tokens` and `min_length`' on every fixed-length generate: harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`min_new_tokens`" not in record.getMessage()


def _quiet_min_length_log() -> None:
    gen_logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _DropMinLengthLog) for f in gen_logger.filters):
        gen_logger.addFilter(_DropMinLengthLog())


# ---------------------------------------------------------------------------------------------------------------
# long-form chunking (the ASR pipeline's algorithm, on any backend)


def chunk_spans(n_samples: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` sample spans as transformers' ``chunk_iter``: one span when the clip fits the window."""
    if n_samples <= window:
        return [(0, n_samples)]
    step = window - 2 * stride
    if step <= 0:
        raise ValueError(f"stride {stride} too large for window {window} (needs 2 * stride < window)")
    spans = []
    for start in range(0, n_samples, step):
        spans.append((start, min(start + window, n_samples)))
        if start + window >= n_samples:
            break
    return spans


SILENCE_FRAME_S = 0.02  # energy frame for silence cuts (seconds)
SILENCE_SMOOTH_FRAMES = 5  # moving average over 0.1 s, so a cut lands in a pause, not between two syllables
SILENCE_MIN_FILL = 0.5  # a cut is searched in the last half of the window: segments are at least half a window


def silence_spans(audio: np.ndarray, window: int, sample_rate: int = SAMPLE_RATE_HZ) -> list[tuple[int, int]]:
    """Consecutive, non-overlapping ``(start, end)`` spans of at most ``window`` samples, cut at the quietest point.

    Each cut is the centre of the lowest-energy 0.1 s stretch in the second half of the remaining window (the
    idea of VAD segmentation in faster-whisper / WhisperX, with energy instead of a VAD model): segments hold
    whole words, as the clips a student was trained on, instead of windows cut mid-word, on which a small
    decoder loops. One span when the clip fits the window.
    """
    n = len(audio)
    if n <= window:
        return [(0, n)]
    frame = max(1, int(round(SILENCE_FRAME_S * sample_rate)))
    x = np.asarray(audio, dtype=np.float32)
    n_frames = n // frame
    energy = np.square(x[: n_frames * frame]).reshape(n_frames, frame).mean(axis=1)
    smooth = np.convolve(energy, np.ones(SILENCE_SMOOTH_FRAMES) / SILENCE_SMOOTH_FRAMES, mode="same")
    spans, pos = [], 0
    while n - pos > window:
        lo = (pos + int(window * SILENCE_MIN_FILL)) // frame
        hi = max(lo + 1, (pos + window) // frame - 1)  # the cut frame's centre stays inside the window
        cut = (lo + int(np.argmin(smooth[lo:hi]))) * frame + frame // 2
        cut = min(max(cut, pos + 1), pos + window)
        spans.append((pos, cut))
        pos = cut
    spans.append((pos, n))
    return spans


def merge_chunk_tokens(chunks: list[list[int]]) -> list[int]:
    """Merge the text tokens of overlapping windows (the ASR pipeline's merge without timestamps)."""
    from transformers.models.whisper.tokenization_whisper import _find_longest_common_sequence

    chunks = [list(c) for c in chunks if c]  # the pipeline drops windows that produced no token
    if len(chunks) <= 1:
        return chunks[0] if chunks else []
    tokens, _ = _find_longest_common_sequence(chunks, [])
    return [int(t) for t in tokens]


# ---------------------------------------------------------------------------------------------------------------
# forms


@dataclass
class Form:
    """One evaluated model: ``generate`` decodes clips that fit its window; :meth:`decode` any clips."""

    name: str
    kind: str  # transformers | torch_vocab | torch_int8 | ct2_float32 | ct2_int8 | ct2_int8_vocab
    path: Path | None
    processor: Any
    model: Any = None  # a torch Whisper (transformers, torch_vocab, torch_int8)
    engine: Any = None  # a components.ct2_runtime.Ct2Whisper
    params: int = 0
    bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None  # load_form keyword arguments that load this form again (speed workers)

    @property
    def window_samples(self) -> int:
        return int(self.processor.feature_extractor.n_samples)

    def generate(self, audios, *, batch_size: int = 8, max_new_tokens: int = 128, num_beams: int = 1,
                 min_new_tokens: int | None = None) -> list[tuple[list[int], str]]:
        """``(ids, text)`` per clip (each within the window); ``min_new_tokens`` forces the length (speed runs)."""
        if self.engine is not None:
            if min_new_tokens:  # CT2 can only force min = max (see _ct2_fixed)
                return _ct2_fixed(self.engine, audios, batch_size, max_new_tokens, min_new_tokens, num_beams)
            return self.engine.generate_tokens(audios, batch_size=batch_size, num_beams=num_beams,
                                               max_new_tokens=max_new_tokens)
        if min_new_tokens:
            return _torch_fixed(self.model, self.processor, audios, batch_size, max_new_tokens, min_new_tokens,
                                num_beams)
        return generate_tokens(self.model, self.processor, list(audios), batch_size=batch_size,
                               num_beams=num_beams, max_new_tokens=max_new_tokens)

    def decode(self, audios, *, batch_size: int = 8, max_new_tokens: int = 128, num_beams: int = 1,
               stride_fraction: float = 1 / 6, longform: str = "silence") -> list[tuple[list[int], str, int]]:
        """``(ids, text, n_windows)`` per clip of any length.

        Clips longer than the window: ``longform="silence"`` cuts them at pauses (:func:`silence_spans`) and joins
        the segments' tokens; ``"chunked"`` overlaps windows with ``stride_fraction`` and merges the tokens by
        longest common sequence (transformers' ASR pipeline).
        """
        if longform not in LONGFORM_MODES:
            raise ValueError(f"longform must be one of {LONGFORM_MODES}, not {longform!r}")
        window = self.window_samples
        stride = int(round(window * stride_fraction))
        pieces, owner = [], []
        for i, audio in enumerate(audios):
            spans = (silence_spans(audio, window) if longform == "silence"
                     else chunk_spans(len(audio), window, stride))
            for start, end in spans:
                pieces.append(audio[start:end])
                owner.append(i)
        outs = self.generate(pieces, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        per_clip: list[list[list[int]]] = [[] for _ in audios]
        for i, (ids, _) in zip(owner, outs, strict=True):
            per_clip[i].append(ids)
        tok = self.processor.tokenizer
        results = []
        for chunks in per_clip:
            if len(chunks) == 1:
                ids = chunks[0]
            else:
                ids = [t for c in chunks for t in c] if longform == "silence" else merge_chunk_tokens(chunks)
            results.append((ids, tok.decode(ids, skip_special_tokens=True).strip(), len(chunks)))
        return results


def _prompt_ids(gen) -> set[int]:
    ids = {gen.decoder_start_token_id, getattr(gen, "no_timestamps_token_id", None)}
    ids |= set((getattr(gen, "lang_to_id", None) or {}).values())
    return ids | set((getattr(gen, "task_to_id", None) or {}).values())


def _torch_fixed(model, processor, audios, batch_size, max_new_tokens, min_new_tokens, num_beams):
    """Short-form decode of a batch with a forced length (``min_new_tokens`` <= ``max_new_tokens``)."""
    import torch

    _quiet_min_length_log()
    fe, tok = processor.feature_extractor, processor.tokenizer
    eot, prompt = tok.convert_tokens_to_ids("<|endoftext|>"), _prompt_ids(model.generation_config)
    results = []
    with torch.inference_mode():
        for start in range(0, len(audios), batch_size):
            batch = [np.asarray(a, dtype=np.float32) for a in audios[start : start + batch_size]]
            feats = fe(batch, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
            out = model.generate(feats.to(model.device, model.dtype), num_beams=num_beams, do_sample=False,
                                 max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
            for row in (out["sequences"] if isinstance(out, dict) else out).tolist():
                ids = _strip_generated(row, eot, prompt)
                results.append((ids, tok.decode(ids, skip_special_tokens=True).strip()))
    return results


def _ct2_fixed(engine, audios, batch_size, max_new_tokens, min_new_tokens, num_beams):
    """CTranslate2 decode with a forced length: CT2's Whisper ``generate`` has no ``min_length``, so
    ``<|endoftext|>`` is suppressed and ``max_length`` stops it (exactly ``max_new_tokens`` tokens; the length
    cap counts doubled in ctranslate2 4.8, see ct2_runtime). Fixed-length speed runs use min = max."""
    from components.ct2_runtime import CT2_MAX_LENGTH_FACTOR

    fe, tok = engine.processor.feature_extractor, engine.processor.tokenizer
    eot, prompt = tok.convert_tokens_to_ids("<|endoftext|>"), _prompt_ids(engine.generation_config)
    gen = engine.generation_config
    results = []
    for start in range(0, len(audios), batch_size):
        batch = [np.asarray(a, dtype=np.float32) for a in audios[start : start + batch_size]]
        feats = fe(batch, sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features
        features = engine._encode(np.ascontiguousarray(feats, dtype=np.float32))
        out = engine.generate_ids(
            features, engine._prompts(features, len(batch), None, "transcribe"),
            [int(t) for t in (getattr(gen, "suppress_tokens", None) or [])] + [eot], beam_size=num_beams,
            max_length=CT2_MAX_LENGTH_FACTOR * max_new_tokens,
            suppress_blank=bool(getattr(gen, "begin_suppress_tokens", None)), sampling_topk=1,
        )
        for seq in out:
            ids = _strip_generated(seq[:max_new_tokens], eot, prompt)
            results.append((ids, tok.decode(ids, skip_special_tokens=True).strip()))
    return results


# ---------------------------------------------------------------------------------------------------------------
# speed


def hardware() -> dict[str, Any]:
    """CPU model, core count, torch threads, CUDA flag, Python (as benchmarks/common.py reports it)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def package_versions() -> dict[str, str | None]:
    """Python and the versions of the packages that decide decode results and speed (None: not installed)."""
    from components.lineage import package_versions as versions

    return versions(PACKAGES)


def speed_sample(audios: list[np.ndarray], n: int, max_samples: int) -> list[np.ndarray]:
    """``n`` clips that fit ``max_samples``, spread evenly over the length-sorted set (deterministic)."""
    fits = sorted((i for i, a in enumerate(audios) if 0 < len(a) <= max_samples), key=lambda i: (len(audios[i]), i))
    if not fits:
        raise ValueError(f"no clip of the speed set fits the smallest window ({max_samples / SAMPLE_RATE_HZ:.0f} s)")
    if n >= len(fits):
        picked = fits
    else:
        picked = [fits[int(round(j * (len(fits) - 1) / max(n - 1, 1)))] for j in range(n)]
    return [audios[i] for i in picked]


def _batches(audios: list[np.ndarray], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]), reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def measure_speed(forms, audios: list[np.ndarray], cfg, reference: str = "teacher",
                  isolation: str | None = None) -> dict[str, Any]:
    """Interleaved speed of ``forms`` on ``audios`` (see the module docstring); ``reference`` is the 1x form.

    ``isolation`` (default ``cfg.speed_isolation``): ``form`` times each form in its own worker process,
    ``runtime`` one worker per runtime, ``none`` this process (:mod:`components.speed_workers`).
    """
    from components.speed_workers import make_timer

    names = [f.name for f in forms]
    if reference not in names:
        raise ValueError(f"reference form {reference!r} not among {names}")
    isolation = isolation or getattr(cfg, "speed_isolation", "form")
    batch_sizes = sorted({1, int(cfg.speed_batch_size)})
    protocols = [p for p in PROTOCOLS if p in cfg.speed_protocols]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE_HZ
    decode = (cfg.max_new_tokens, cfg.num_beams)
    plans = {bs: _batches(audios, bs) for bs in batch_sizes}
    times: dict[str, dict[str, list[tuple[float, int]]]] = {n: {} for n in names}
    with make_timer(forms, audios, isolation) as timer:
        # warm-up (not timed) + the reference's natural token counts for the fixed-length protocol
        ref_counts = timer.token_counts(reference, list(range(len(audios))), 1, *decode)
        for name in names:
            if name != reference:
                timer.token_counts(name, list(range(min(2, len(audios)))), 2, *decode)
        budgets = {bs: [max(1, max(ref_counts[i] for i in idx)) for idx in plans[bs]] for bs in batch_sizes}
        for r in range(cfg.speed_rounds):
            for form in forms[r % len(forms):] + forms[: r % len(forms)]:
                for bs in batch_sizes:
                    for proto in protocols:
                        seconds, tokens = timer.time(form.name, plans[bs], None if proto == "natural" else budgets[bs],
                                                     *decode)
                        times[form.name].setdefault(f"{proto}_b{bs}", []).append((seconds, tokens))
        workers = timer.describe()
    result: dict[str, Any] = {"forms": {}, "speedup": {}}
    for name in names:
        per = {}
        for key, runs in times[name].items():
            seconds, tokens = min(runs)
            per[key] = {"seconds": round(seconds, 4), "latency_s": round(seconds / len(audios), 4),
                        "rtf": round(seconds / audio_s, 4), "tokens_per_s": round(tokens / seconds, 2),
                        "tokens": tokens, "rounds_s": [round(s, 3) for s, _ in runs]}
        result["forms"][name] = per
    ref = result["forms"][reference]
    for name in names:
        if name != reference:
            result["speedup"][name] = {k: round(ref[k]["seconds"] / v["seconds"], 3)
                                       for k, v in result["forms"][name].items()}
    # same runtime and precision: each student form against the teacher in that form (student_ct2_int8 vs
    # teacher_ct2_int8), the comparison a user who would run the teacher in that runtime cares about
    # (a pruned-vocabulary student without a pruned twin: against the unpruned teacher form of its runtime and
    # precision, i.e. student_ct2_int8_vocab vs teacher_ct2_int8 and student_torch_vocab vs the float32 teacher)
    result["speedup_same_runtime"] = {}
    kinds = {f.name: f.kind for f in forms}
    for name in names:
        twin = f"{reference}{name[len('student'):]}" if name.startswith("student") else None
        if twin not in result["forms"] and name.startswith("student") and kinds[name].endswith("_vocab"):
            twin = (reference if kinds[name] == "torch_vocab" and kinds[reference] == "transformers"
                    else twin[: -len("_vocab")])
        if twin in result["forms"]:
            result["speedup_same_runtime"][name] = {
                "versus": twin, **{k: round(result["forms"][twin][k]["seconds"] / v["seconds"], 3)
                                   for k, v in result["forms"][name].items() if k in result["forms"][twin]}}
    result["size"] = {f.name: {"params": f.params, "bytes": f.bytes} for f in forms}
    result["sample"] = {"clips": len(audios), "audio_s": round(audio_s, 2),
                        "reference_tokens": int(sum(ref_counts)), "set": cfg.speed_set}
    result["protocol"] = {"rounds": cfg.speed_rounds, "batch_sizes": batch_sizes, "protocols": protocols,
                          "reference": reference, "statistic": "min over interleaved rounds (rotating order)",
                          "max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams,
                          "isolation": isolation, "workers": workers}
    return result
