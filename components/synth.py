"""`askd data synth`: the embedded default corpus, offline synthetic English speech.

Sentences come from Debian's ``fortunes`` (:mod:`components.sentences`), split into text-disjoint pools.

* ``train`` / ``validation`` / ``test``: Piper 'joe', per-clip length_scale and noise_scale, light
  Gaussian noise at a random SNR; a share ``augment.fraction`` of the train clips also gets recording conditions
  (speed, room reverberation, background noise, telephone line: :mod:`components.augment`), and a share
  ``extra_voice_fraction`` is spoken by one of ``extra_voices`` (Flite's four speakers) instead of Piper, and a
  share ``extra_text_fraction`` reads a dialogue line or a numbers sentence instead of a fortune
  (:mod:`components.text_sources`; the evaluation pools stay fortunes, text-disjoint).
* ``test_ood``: espeak-ng voices (cycled), varied rate and pitch: a hard out-of-domain set.
* ``test_longform``: Piper sentences joined with ~0.3 s gaps into clips of longform_min_s..max_s.

Output (``cfg.out_dir``): ``audio/<split>/<id>.wav`` (16 kHz mono PCM_16) and one ``metadata.csv``
(``file_name,text,speaker,split,voice,duration_s,conditions``; ``voice`` is the engine, ``piper``, ``flite`` or ``espeak-ng``;
``conditions`` the applied recording conditions joined by ``+``, empty for none).

Determinism: every random choice derives from ``cfg.seed``; per-clip RNGs are seeded from
(seed, split, index). Piper's own noise comes from ONNX Runtime random ops seeded at session creation,
so clips are synthesised in fixed chunks of :data:`CHUNK_CLIPS`, each with a fresh single-threaded
session seeded from (seed, split, chunk): the audio is bit-identical for any ``workers``.

Resumability: clips go to ``<out_dir>.partial-<hash>/`` (hash of the settings and the clip plan); a
chunk finished by an interrupted run is reused. At the end the corpus is hard-linked into place with
:func:`components.artifacts.atomic_dir` and the partial folder is removed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from components.artifacts import atomic_dir, write_json_atomic, write_metrics
from components.augment import Conditions, apply_conditions, draw_conditions
from components.sentences import NotEnoughSentencesError, assign_splits, load_sentences
from components.settings import SynthSettings
from components.tts import SAMPLE_RATE_HZ

SYNTH_FORMAT_VERSION = 1  # bump when the audio recipe changes, so old partial folders are not reused
SPLITS = ("train", "validation", "test", "test_ood", "test_longform")
#: sentence pools are cut in this order: evaluation pools stay fixed when only n_train changes
POOL_ORDER = ("test", "test_ood", "test_longform", "validation", "train")
METADATA_COLUMNS = ("file_name", "text", "speaker", "split", "voice", "duration_s", "conditions")
AUGMENT_STREAM = 11  # augmentation and extra-voice draws use their own seeded streams: turning them on changes
VOICE_STREAM = 12    # no other draw
TEXT_STREAM = 13
CHUNK_CLIPS = 16  # clips per fresh, seeded Piper session (resume granularity too)
PIPER_SPEAKER = "piper-joe"
PIPER_NOISE_W_SCALE = 0.8  # Piper's phoneme-duration noise (its default)
PIPER_INTRA_OP_THREADS = 1  # more threads change float sums, so the audio would depend on `workers`
PEAK_TARGET = 0.9  # peak amplitude after normalisation, full scale = 1
ESPEAK_WPM_RANGE = (140, 180)  # words per minute, inclusive
ESPEAK_PITCH_RANGE = (30, 70)  # espeak-ng pitch 0..99, inclusive
LONGFORM_GAP_S_RANGE = (0.2, 0.4)  # silence between joined sentences, seconds
LONGFORM_SENTENCE_S_LOWER_BOUND = 1.2  # a 6-word sentence + gap lasts at least this long (seconds)


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to synthesise one clip (drawn up front, so the plan can be hashed)."""

    split: str
    index: int
    clip_id: str
    texts: tuple[str, ...]  # one sentence, or the candidate sentences of a long-form clip
    engine: str  # "piper" or "espeak-ng"
    speaker: str
    noise_seed: int
    length_scale: float = 1.0
    noise_scale: float = 0.667
    snr_db: float | None = None
    espeak_voice: str = ""
    espeak_wpm: int = 0
    espeak_pitch: int = 0
    longform_min_s: float = 0.0
    longform_max_s: float = 0.0
    conditions: Conditions | None = None


@dataclass(frozen=True)
class ChunkJob:
    """A run of clips of one split synthesised in order by one fresh Piper session."""

    chunk_id: str
    ort_seed: int
    clips: tuple[ClipPlan, ...]


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def longform_sentences_per_clip(cfg: SynthSettings) -> int:
    """Candidate sentences reserved per long-form clip (enough to reach longform_max_s)."""
    return max(4, math.ceil(cfg.longform_max_s / LONGFORM_SENTENCE_S_LOWER_BOUND))


def pool_sizes(cfg: SynthSettings) -> dict[str, int]:
    """Sentences each split needs, in :data:`POOL_ORDER`."""
    sizes = {
        "train": cfg.n_train,
        "validation": cfg.n_validation,
        "test": cfg.n_test,
        "test_ood": cfg.n_test_ood,
        "test_longform": cfg.n_test_longform * longform_sentences_per_clip(cfg),
    }
    return {name: sizes[name] for name in POOL_ORDER}


def sentence_pools(cfg: SynthSettings, sentences: list[str] | None = None) -> dict[str, list[str]]:
    """The text-disjoint sentence pool of each split, exactly as :func:`synthesize` draws them (no audio made).

    ``sentences``: the usable sentences of ``cfg.sentence_source`` when the caller has loaded them already."""
    if sentences is None:
        sentences = load_sentences(cfg.sentence_source, cfg.min_words, cfg.max_words)
    try:
        return assign_splits(sentences, pool_sizes(cfg), cfg.seed)
    except NotEnoughSentencesError as err:
        raise NotEnoughSentencesError(
            f"{err} (source {cfg.sentence_source}, {cfg.min_words}-{cfg.max_words} words; "
            f"each long-form clip reserves {longform_sentences_per_clip(cfg)})"
        ) from None


def with_extra_texts(cfg: SynthSettings, pools: dict[str, list[str]]) -> dict[str, list[str]]:
    """The pools with a seeded share ``extra_text_fraction`` of the train sentences replaced by extra texts."""
    if cfg.extra_text_fraction <= 0 or not cfg.extra_texts or not pools.get("train"):
        return pools
    from components.text import normalize
    from components.text_sources import extra_sentences

    s_idx = SPLITS.index("train")
    chosen = [i for i in range(len(pools["train"]))
              if _rng(cfg.seed, s_idx, i, TEXT_STREAM).random() < cfg.extra_text_fraction]
    held_out = {normalize(t) for split, texts in pools.items() if split != "train" for t in texts}
    extra = extra_sentences(cfg.extra_texts, len(chosen), cfg.min_words, cfg.max_words, cfg.seed, held_out)
    train = list(pools["train"])
    for i, sentence in zip(chosen, extra):
        train[i] = sentence
    return {**pools, "train": train}


def plan_clips(cfg: SynthSettings, pools: dict[str, list[str]]) -> list[ChunkJob]:
    """Turn sentence pools into seeded clip plans grouped into :data:`CHUNK_CLIPS`-sized chunks."""
    jobs: list[ChunkJob] = []
    pools = with_extra_texts(cfg, pools)
    per_longform = longform_sentences_per_clip(cfg)
    for s_idx, split in enumerate(SPLITS):
        pool = pools[split]
        n = len(pool) // per_longform if split == "test_longform" else len(pool)
        clips: list[ClipPlan] = []
        for i in range(n):
            rng = _rng(cfg.seed, s_idx, i)
            common = {
                "split": split,
                "index": i,
                "clip_id": f"{split}-{i:05d}",
                "noise_seed": int(rng.integers(2**31)),
            }
            if split == "test_ood":
                voice = cfg.espeak_voices[i % len(cfg.espeak_voices)]
                clips.append(
                    ClipPlan(
                        texts=(pool[i],),
                        engine="espeak-ng",
                        speaker=f"espeak-{voice}",
                        espeak_voice=voice,
                        espeak_wpm=int(rng.integers(ESPEAK_WPM_RANGE[0], ESPEAK_WPM_RANGE[1] + 1)),
                        espeak_pitch=int(rng.integers(ESPEAK_PITCH_RANGE[0], ESPEAK_PITCH_RANGE[1] + 1)),
                        **common,
                    )
                )
                continue
            if split == "test_longform":
                texts = tuple(pool[i * per_longform : (i + 1) * per_longform])
            else:
                texts = (pool[i],)
            engine, speaker = "piper", PIPER_SPEAKER
            if split == "train" and cfg.extra_voice_fraction > 0 and cfg.extra_voices:
                voice_rng = _rng(cfg.seed, s_idx, i, VOICE_STREAM)
                if voice_rng.random() < cfg.extra_voice_fraction:
                    speaker = cfg.extra_voices[int(voice_rng.integers(len(cfg.extra_voices)))]
                    engine = speaker.split("-", 1)[0]
            if split == "train" and cfg.augment.fraction > 0:
                aug_rng = _rng(cfg.seed, s_idx, i, AUGMENT_STREAM)
                if aug_rng.random() < cfg.augment.fraction:
                    common["conditions"] = draw_conditions(aug_rng, cfg.augment)
            clips.append(
                ClipPlan(
                    texts=texts,
                    engine=engine,
                    speaker=speaker,
                    length_scale=float(rng.uniform(cfg.length_scale_min, cfg.length_scale_max)),
                    noise_scale=float(rng.uniform(cfg.noise_scale_min, cfg.noise_scale_max)),
                    snr_db=float(rng.uniform(cfg.snr_db_min, cfg.snr_db_max)),
                    longform_min_s=cfg.longform_min_s if split == "test_longform" else 0.0,
                    longform_max_s=cfg.longform_max_s if split == "test_longform" else 0.0,
                    **common,
                )
            )
        size = 1 if split == "test_longform" else CHUNK_CLIPS
        for c_idx in range(0, len(clips), size):
            seed = int(np.random.SeedSequence([cfg.seed, s_idx, c_idx, 7]).generate_state(1)[0])
            jobs.append(ChunkJob(f"{split}-c{c_idx // size:05d}", seed, tuple(clips[c_idx : c_idx + size])))
    return jobs


def settings_hash(cfg: SynthSettings, jobs: list[ChunkJob]) -> str:
    """Short hash of everything that changes the audio (not ``workers`` or ``out_dir``)."""
    data = cfg.model_dump(mode="json", exclude={"workers", "out_dir"})
    blob = json.dumps(
        {"v": SYNTH_FORMAT_VERSION, "cfg": data, "jobs": [asdict(j) for j in jobs]}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- audio


def finish_audio(clean: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise at ``snr_db`` (relative to the clip's mean power), peak-normalise, clip."""
    audio = clean.astype(np.float64)
    if snr_db is not None and audio.size:
        power = float(np.mean(audio**2))
        audio = audio + rng.standard_normal(audio.size) * math.sqrt(power / 10 ** (snr_db / 10))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio = audio * (PEAK_TARGET / peak)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _longform(voice, clip: ClipPlan, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Join Piper sentences with short gaps until the duration lies in [min, max] seconds."""
    from components.tts import piper_say_with

    parts: list[np.ndarray] = []
    used: list[str] = []
    total_s = 0.0
    for text in clip.texts:
        speech = piper_say_with(voice, text, clip.length_scale, clip.noise_scale, PIPER_NOISE_W_SCALE)
        gap_s = float(rng.uniform(*LONGFORM_GAP_S_RANGE)) if parts else 0.0
        added_s = gap_s + speech.size / SAMPLE_RATE_HZ
        if total_s + added_s > clip.longform_max_s:
            continue  # too long to fit: try the next candidate
        if gap_s:
            parts.append(np.zeros(round(gap_s * SAMPLE_RATE_HZ), dtype=np.float32))
        parts.append(speech)
        used.append(text)
        total_s += added_s
        if total_s >= clip.longform_min_s:
            return np.concatenate(parts), " ".join(used)
    raise RuntimeError(
        f"long-form clip {clip.clip_id}: reached only {total_s:.1f} s from {len(clip.texts)} sentences, "
        f"need {clip.longform_min_s}-{clip.longform_max_s} s (widen the longform range)"
    )


def _write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, audio, SAMPLE_RATE_HZ, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def run_chunk(job: ChunkJob, work_dir: str) -> list[dict[str, Any]]:
    """Synthesise one chunk into ``work_dir`` (top-level, so spawned workers can run it).

    Writes each wav, then ``done/<chunk_id>.json`` with the chunk's metadata rows; returns the rows.
    """
    from components.tts import espeak_say, flite_say, load_piper_voice, piper_say_with

    work = Path(work_dir)
    voice = None
    if any(c.engine == "piper" for c in job.clips):
        voice = load_piper_voice(seed=job.ort_seed, intra_op_threads=PIPER_INTRA_OP_THREADS)
    rows = []
    for clip in job.clips:
        rng = _rng(clip.noise_seed)
        if clip.split == "test_longform":
            clean, text = _longform(voice, clip, rng)
        elif clip.engine == "flite":
            text = clip.texts[0]
            clean = flite_say(text, clip.speaker.removeprefix("flite-"), clip.length_scale)
        elif clip.engine == "espeak-ng":
            text = clip.texts[0]
            clean = espeak_say(text, clip.espeak_voice, clip.espeak_wpm, clip.espeak_pitch)
        else:
            text = clip.texts[0]
            clean = piper_say_with(voice, text, clip.length_scale, clip.noise_scale, PIPER_NOISE_W_SCALE)
        if clean.size == 0:
            raise RuntimeError(f"{clip.engine} produced no audio for clip {clip.clip_id}: {text!r}")
        if clip.conditions is not None:
            clean = apply_conditions(clean, clip.conditions, _rng(clip.noise_seed, AUGMENT_STREAM))
        audio = finish_audio(clean, clip.snr_db, rng)
        file_name = f"audio/{clip.split}/{clip.clip_id}.wav"
        _write_wav(work / file_name, audio)
        rows.append(
            {
                "file_name": file_name,
                "text": text,
                "speaker": clip.speaker,
                "split": clip.split,
                "voice": clip.engine,
                "duration_s": round(audio.size / SAMPLE_RATE_HZ, 3),
                "conditions": "+".join(clip.conditions.names) if clip.conditions else "",
            }
        )
    write_json_atomic(work / "done" / f"{job.chunk_id}.json", rows)
    return rows


def _load_done(work: Path, job: ChunkJob) -> list[dict[str, Any]] | None:
    """The rows of a chunk finished by an earlier run, or None if it must be (re)done."""
    marker = work / "done" / f"{job.chunk_id}.json"
    try:
        rows = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if len(rows) != len(job.clips) or not all((work / r["file_name"]).is_file() for r in rows):
        return None
    return rows


# ---------------------------------------------------------------------------------------- the stage


def _check_espeak(voices: tuple[str, ...]) -> None:
    import subprocess

    from components.tts import espeak_available, espeak_say

    if not espeak_available():
        raise FileNotFoundError(
            "espeak-ng is not installed (apt-get install espeak-ng); or set synth.n_test_ood=0"
        )
    for voice in voices:
        try:
            espeak_say("test", voice)
        except subprocess.CalledProcessError as err:
            raise ValueError(
                f"espeak-ng voice '{voice}' does not exist (see `espeak-ng --voices=en`)"
            ) from err


def _run_jobs(todo: list[ChunkJob], work: Path, workers: int, progress) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            rows += run_chunk(job, str(work))
            progress.update(len(job.clips))
        return rows
    # longest jobs first for load balance (a long-form clip costs about 8 short clips)
    todo = sorted(todo, key=lambda j: -sum(len(c.texts) for c in j.clips))
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(run_chunk, job, str(work)): job for job in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise fut.exception()
                rows += fut.result()
                progress.update(len(job.clips))
    return rows


def _publish(work: Path, out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Hard-link (or copy) the wavs and write metadata.csv into ``out_dir`` atomically."""
    with atomic_dir(out_dir) as tmp:
        for row in rows:
            dst = tmp / row["file_name"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(work / row["file_name"], dst)
            except OSError:
                shutil.copy2(work / row["file_name"], dst)
        with open(tmp / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def synthesize(cfg: SynthSettings) -> dict[str, Any]:
    """Build the corpus described by ``cfg`` in ``cfg.out_dir``; write and return ``metrics/synth.json``."""
    from tqdm import tqdm

    started = time.perf_counter()
    sentences = load_sentences(cfg.sentence_source, cfg.min_words, cfg.max_words)
    pools = sentence_pools(cfg, sentences)
    jobs = plan_clips(cfg, pools)
    if cfg.n_test_ood:
        _check_espeak(tuple(dict.fromkeys(cfg.espeak_voices)))
    if cfg.extra_voice_fraction > 0 and any(v.startswith("flite-") for v in cfg.extra_voices):
        from components.tts import flite_available

        if not flite_available():
            raise FileNotFoundError("synth.extra_voices: flite is not installed (apt-get install flite); "
                                    "or set synth.extra_voice_fraction=0")

    out_dir = Path(cfg.out_dir)
    digest = settings_hash(cfg, jobs)
    work = out_dir.with_name(f"{out_dir.name}.partial-{digest}")
    work.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    todo: list[ChunkJob] = []
    for job in jobs:
        done = _load_done(work, job)
        if done is None:
            todo.append(job)
        else:
            rows += done
    n_clips = sum(len(j.clips) for j in jobs)
    reused = len(rows)
    with tqdm(total=n_clips, initial=reused, desc="synth", unit="clip", dynamic_ncols=True) as progress:
        rows += _run_jobs(todo, work, cfg.workers, progress)

    order = {s: i for i, s in enumerate(SPLITS)}
    rows.sort(key=lambda r: (order[r["split"]], r["file_name"]))
    _publish(work, out_dir, rows)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started

    clips = Counter(r["split"] for r in rows)
    audio_s = Counter()
    for r in rows:
        audio_s[r["split"]] += r["duration_s"]
    metrics = {
        "out_dir": str(out_dir),
        "settings_hash": digest,
        "seed": cfg.seed,
        "sentences_usable": len(sentences),
        "sentences_reserved": sum(len(p) for p in pools.values()),
        "clips": {s: clips.get(s, 0) for s in SPLITS},
        "clips_total": len(rows),
        "clips_reused": reused,
        "hours": {s: round(audio_s.get(s, 0.0) / 3600, 4) for s in SPLITS},
        "hours_total": round(sum(audio_s.values()) / 3600, 4),
        "mean_duration_s": {s: round(audio_s[s] / clips[s], 2) for s in SPLITS if clips.get(s)},
        "voices": dict(sorted(Counter(r["speaker"] for r in rows).items())),
        "conditions": dict(sorted(Counter(c for r in rows for c in (r.get("conditions") or "").split("+") if c).items())),
        "clips_with_conditions": sum(bool(r.get("conditions")) for r in rows),
        "workers": cfg.workers,
        "seconds": round(seconds, 1),
        "clips_per_s": round((len(rows) - reused) / seconds, 3) if seconds > 0 else None,
    }
    write_metrics("synth", metrics)
    return metrics
