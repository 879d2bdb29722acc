"""The ``prepare`` stage: ingest, validate, resample and split audio into a ``datasets.DatasetDict``.

Every clip is decoded to 16 kHz mono (:mod:`components.audio`); unusable clips are counted, skipped
and listed with a reason in ``<out_dir>/skipped.csv`` and ``reports/prepare_skipped.csv``. Records
without a given split are split deterministically into train/validation/test so that no normalised
transcript (and, with >= 3 speakers, no speaker) occurs in two splits: records are grouped with
union-find over text and speaker, and each group goes to the split chosen by a seeded hash of its key,
so adding records does not move the others.

The dataset (columns id, audio, text, has_text, speaker, duration_s, source; sorted by id) is written
with :func:`components.artifacts.atomic_dir`: an interrupted run leaves the previous output or none.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from components.artifacts import atomic_dir, write_metrics
from components.audio import AudioDecodeError, check_clip, clip_detail, decode_audio, encode_wav
from components.settings import PrepareSettings
from components.sources import Record, SourceStats, iter_records
from components.tts import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

REPORTS_DIR = Path("reports")
SKIPPED_REPORT_NAME = "prepare_skipped.csv"  # under REPORTS_DIR
SKIPPED_FILE_NAME = "skipped.csv"  # inside out_dir
SKIPPED_COLUMNS = ("id", "source", "reason", "detail")
REASON_MISSING = "missing"
REASON_DUPLICATE_ID = "duplicate_id"
STANDARD_SPLITS = ("train", "validation", "test")
MIN_SPEAKERS_FOR_DISJOINT = 3
DECODE_WORKERS_MAX = 2
DECODE_WINDOW_CLIPS = 32  # decoded clips in flight (bounds memory)
WRITER_BATCH_ROWS = 64
SECONDS_PER_HOUR = 3600.0
HASH_SCALE = float(1 << 64)

T = TypeVar("T")
R = TypeVar("R")


def dataset_features():
    """The output schema (built lazily so importing this module does not import ``datasets``)."""
    from datasets import Audio, Features, Value

    return Features(
        {
            "id": Value("string"),
            "audio": Audio(sampling_rate=SAMPLE_RATE_HZ),
            "text": Value("string"),
            "has_text": Value("bool"),
            "speaker": Value("string"),
            "duration_s": Value("float64"),
            "source": Value("string"),
        }
    )


@dataclass(frozen=True)
class Skip:
    """One skipped clip, as listed in ``skipped.csv``."""

    id: str
    source: str
    reason: str
    detail: str = ""


@dataclass
class Outcome:
    """Result of processing one record: ``wav`` is set when the clip is kept, ``reason`` otherwise."""

    record: Record
    wav: bytes | None = None
    duration_s: float = 0.0
    resampled: bool = False
    downmixed: bool = False
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class SplitItem:
    """What split assignment needs to know about a kept clip."""

    id: str
    text: str | None
    speaker: str | None
    split: str | None


# ---------------------------------------------------------------------------------------------
# per-clip processing


def process_record(record: Record, cfg: PrepareSettings) -> Outcome:
    """Decode and validate one record; never raises for a bad clip."""
    try:
        ref = record.audio() if callable(record.audio) else record.audio
        audio, info = decode_audio(ref)
    except FileNotFoundError as err:
        return Outcome(record, reason=REASON_MISSING, detail=str(err))
    except AudioDecodeError as err:
        return Outcome(record, reason=err.reason, detail=err.detail)
    except Exception as err:  # a broken loader or an unexpected decoder error: one clip, not the run
        return Outcome(record, reason="corrupt", detail=f"{type(err).__name__}: {err}"[:200])
    reason = check_clip(audio, cfg)
    if reason is not None:
        return Outcome(record, reason=reason, detail=clip_detail(audio, reason))
    return Outcome(
        record,
        wav=encode_wav(audio),
        duration_s=info.duration_s,
        resampled=info.resampled,
        downmixed=info.downmixed,
    )


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int = DECODE_WINDOW_CLIPS) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, results in input order, at most ``window`` in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---------------------------------------------------------------------------------------------
# splitting


def normalize_text(text: str) -> str:
    """Casefolded, punctuation-free, single-spaced text: the key that makes splits text-disjoint."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s']|_", " ", text).replace("'", "")
    return " ".join(text.split())


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / HASH_SCALE


def _group(items: list[SplitItem], use_speakers: bool) -> dict[str, list[SplitItem]]:
    """Union-find over text and (optionally) speaker anchors; returns group key -> members."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def anchors(item: SplitItem) -> list[str]:
        out = []
        if item.text and normalize_text(item.text):
            out.append(f"text:{normalize_text(item.text)}")
        if use_speakers and item.speaker:
            out.append(f"speaker:{item.speaker}")
        return out

    for item in items:
        root = find(f"id:{item.id}")
        for anchor in anchors(item):
            ra = find(anchor)
            if ra != root:
                parent[max(ra, root)] = min(ra, root)
                root = min(ra, root)
    members: dict[str, list[SplitItem]] = {}
    keys: dict[str, str] = {}
    for item in items:
        root = find(f"id:{item.id}")
        members.setdefault(root, []).append(item)
        # group key: its smallest text/speaker anchor (stable as records are added), else the id
        own = anchors(item) or [f"id:{item.id}"]
        keys[root] = min([keys.get(root, own[0]), *own], key=lambda k: (k.startswith("id:"), k))
    return {keys[root]: group for root, group in members.items()}


def assign_splits(
    items: list[SplitItem], validation_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, str], str]:
    """Map id -> split. Given splits are kept; the rest are split text- (and speaker-) disjointly.

    Returns the assignment and the grouping used: ``given``, ``text+speaker`` or ``text``.
    """
    assignment = {it.id: it.split for it in items if it.split}
    free = [it for it in items if not it.split]
    if not free:
        return assignment, "given"
    wanted = [s for s, f in (("validation", validation_fraction), ("test", test_fraction)) if f > 0]
    speakers = {it.speaker for it in free if it.speaker}
    use_speakers = len(speakers) >= MIN_SPEAKERS_FOR_DISJOINT
    groups = _group(free, use_speakers)
    if use_speakers and len(groups) < 1 + len(wanted):
        log.warning("speaker-disjoint split leaves %d group(s); splitting by text only", len(groups))
        use_speakers = False
        groups = _group(free, use_speakers)
    split_of: dict[str, str] = {}
    for key in groups:
        u = _unit_hash(seed, key)
        split_of[key] = "test" if u < test_fraction else "validation" if u < test_fraction + validation_fraction else "train"
    # tiny inputs: make sure every wanted split gets a group, taking the smallest train groups
    for split in wanted:
        train_keys = [k for k, s in split_of.items() if s == "train"]
        if split not in split_of.values() and len(train_keys) > 1:
            move = min(train_keys, key=lambda k: (len(groups[k]), _unit_hash(seed, split, k)))
            split_of[move] = split
    for key, group in groups.items():
        for it in group:
            assignment[it.id] = split_of[key]
    return assignment, "text+speaker" if use_speakers else "text"


# ---------------------------------------------------------------------------------------------
# reports and output


def write_skipped_csv(path: Path, skips: list[Skip]) -> Path:
    """Write the skip list (sorted by id) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SKIPPED_COLUMNS)
        for s in sorted(skips, key=lambda s: (s.id, s.reason)):
            writer.writerow([s.id, s.source, s.reason, s.detail])
    os.replace(tmp, path)
    return path


def _split_order(names: Iterable[str]) -> list[str]:
    names = set(names) | set(STANDARD_SPLITS)
    return [s for s in STANDARD_SPLITS if s in names] + sorted(names - set(STANDARD_SPLITS))


def _save_dataset(out: Path, arrow_file: Path, ids: list[str], assignment: dict[str, str]) -> dict[str, int]:
    """Save the clips in ``arrow_file`` (rows in ``ids`` order) as a DatasetDict at ``out``."""
    from datasets import Dataset, DatasetDict

    clips = Dataset.from_file(str(arrow_file))
    by_split: dict[str, list[int]] = {s: [] for s in _split_order(assignment.values())}
    for index, clip_id in enumerate(ids):
        by_split[assignment[clip_id]].append(index)
    dd = DatasetDict({split: clips.select(indices) for split, indices in by_split.items()})
    # an empty split saved with the default 0 shards cannot be loaded back: give it one shard
    dd.save_to_disk(str(out), num_shards={s: 1 for s, idx in by_split.items() if not idx})
    return {split: len(idx) for split, idx in by_split.items()}


def prepare(cfg: PrepareSettings) -> dict[str, Any]:
    """Run the stage; returns (and writes to ``metrics/prepare.json``) the metrics dict.

    Raises ValueError when no clip is usable (after writing the skip report), FileNotFoundError /
    PermissionError / ConnectionError for unreadable inputs.
    """
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    start = time.perf_counter()
    stats = SourceStats()
    records = sorted(iter_records(cfg, stats), key=lambda r: r.id)
    skips: list[Skip] = []
    unique: list[Record] = []
    seen: set[str] = set()
    for rec in records:
        if rec.id in seen:
            skips.append(Skip(rec.id, rec.origin, REASON_DUPLICATE_ID, "id already used by another clip"))
        else:
            seen.add(rec.id)
            unique.append(rec)

    counts: Counter[str] = Counter()
    items: list[SplitItem] = []
    duration_by_id: dict[str, float] = {}
    workers = max(1, min(DECODE_WORKERS_MAX, os.cpu_count() or 1))
    out_dir = Path(cfg.out_dir)
    with atomic_dir(out_dir) as tmp:
        work = tmp / "_work"
        work.mkdir()
        arrow_file = work / "clips.arrow"
        writer = ArrowWriter(features=dataset_features(), path=str(arrow_file), writer_batch_size=WRITER_BATCH_ROWS)
        progress = tqdm(total=len(unique), desc="prepare", unit="clip", mininterval=1.0)
        try:
            for oc in ordered_map(lambda r: process_record(r, cfg), unique, workers):
                progress.update(1)
                rec = oc.record
                if oc.wav is None:
                    skips.append(Skip(rec.id, rec.origin, oc.reason or "corrupt", oc.detail))
                    continue
                counts["resampled"] += oc.resampled
                counts["downmixed"] += oc.downmixed
                counts["audio_only"] += rec.text is None
                writer.write(
                    {
                        "id": rec.id,
                        "audio": {"bytes": oc.wav, "path": f"{rec.id.replace('/', '__')}.wav"},
                        "text": rec.text or "",
                        "has_text": rec.text is not None,
                        "speaker": rec.speaker or "",
                        "duration_s": round(oc.duration_s, 4),
                        "source": rec.origin,
                    }
                )
                items.append(SplitItem(rec.id, rec.text, rec.speaker, rec.split))
                duration_by_id[rec.id] = oc.duration_s
        finally:
            progress.close()
            writer.finalize()
        skipped_by_reason = dict(sorted(Counter(s.reason for s in skips).items()))
        if not items:
            write_skipped_csv(REPORTS_DIR / SKIPPED_REPORT_NAME, skips)
            reasons = ", ".join(f"{k}={v}" for k, v in skipped_by_reason.items()) or "no clips found"
            raise ValueError(f"no usable clips in {cfg.input}: {len(skips)} skipped ({reasons})")
        assignment, grouping = assign_splits(items, cfg.validation_fraction, cfg.test_fraction, cfg.seed)
        split_sizes = _save_dataset(tmp, arrow_file, [it.id for it in items], assignment)
        shutil.rmtree(work)
        write_skipped_csv(tmp / SKIPPED_FILE_NAME, skips)
    write_skipped_csv(REPORTS_DIR / SKIPPED_REPORT_NAME, skips)

    hours = Counter()
    for clip_id, split in assignment.items():
        hours[split] += duration_by_id[clip_id] / SECONDS_PER_HOUR
    metrics: dict[str, Any] = {
        "source": cfg.source,
        "input": cfg.input,
        "out_dir": str(out_dir),
        "n_in": len(records),
        "n_kept": len(items),
        "n_skipped": len(skips),
        "skipped_by_reason": skipped_by_reason,
        "resampled": counts["resampled"],
        "downmixed": counts["downmixed"],
        "audio_only": counts["audio_only"],
        "split_sizes": split_sizes,
        "hours_by_split": {s: round(hours[s], 4) for s in split_sizes},
        "hours_total": round(sum(hours.values()), 4),
        "split_grouping": grouping,
        "text_encoding_fallback_lines": stats.text_encoding_fallback_lines,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if stats.s3:
        metrics["s3"] = stats.s3
    write_metrics("prepare", metrics)
    log.info("prepare: kept %d of %d clips (%s)", len(items), len(records), skipped_by_reason)
    return metrics
