"""Where clips come from: one iterator of :class:`Record` for every ``prepare.source``.

Sources: ``synth`` (the embedded corpus folder with a root ``metadata.csv``), ``folder`` (an audio
folder, recursive, with optional ``metadata.csv``/``metadata.jsonl`` files), ``manifest`` (CSV/TSV or
JSONL with audio paths relative to the manifest), ``hf_disk`` (a ``datasets`` Dataset/DatasetDict
saved with ``save_to_disk``) and ``s3`` (a prefix mirrored locally, then read as ``folder``).

Records only point at audio (a path, bytes, or a loader); decoding and validation happen in
:mod:`components.prepare`. A path that does not exist is left to the caller to report as ``missing``.
Metadata that is not UTF-8 is decoded line by line as latin-1 and counted, not fatal.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from components.settings import PrepareSettings

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif", ".au", ".webm"}
)
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
FILE_COLUMNS = ("file_name",)  # plus cfg.audio_column
TEXT_COLUMNS = ("text", "transcription", "transcript", "sentence")  # after cfg.text_column
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")  # after cfg.speaker_column
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
FALLBACK_ENCODING = "latin-1"

AudioRef = bytes | Path | Callable[[], "bytes | str | Path"]


@dataclass
class Record:
    """One clip to ingest: ``audio`` is encoded bytes, a file path, or a zero-argument loader of either."""

    id: str
    audio: AudioRef
    text: str | None = None
    speaker: str | None = None
    split: str | None = None
    origin: str = ""  # where it came from (relative path, S3 key, dataset row), for reports


@dataclass
class SourceStats:
    """Counters the sources report into the prepare metrics."""

    text_encoding_fallback_lines: int = 0
    metadata_files: int = 0
    s3: dict[str, Any] = field(default_factory=dict)


def normalize_split(value: Any) -> str | None:
    """Canonical split name (``dev``/``valid`` -> ``validation``; others kept, made identifier-safe)."""
    if value is None:
        return None
    name = str(value).strip().lower()
    if not name or name in ("nan", "none"):
        return None
    name = SPLIT_ALIASES.get(name, name)
    return re.sub(r"\W+", "_", name).strip("_") or None


def _clean(value: Any) -> str | None:
    """A metadata cell as a stripped string; empty / missing / NaN -> ``None``."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas-written files
        return None
    text = str(value).strip()
    return text or None


def decode_text_lines(data: bytes, stats: SourceStats, origin: str) -> str:
    """Decode metadata bytes as UTF-8 (BOM allowed); lines that are not UTF-8 fall back to latin-1."""
    out: list[str] = []
    bad = 0
    for line in data.splitlines(keepends=True):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(line.decode(FALLBACK_ENCODING))
            bad += 1
    if bad:
        stats.text_encoding_fallback_lines += bad
        log.warning("%s: %d line(s) not UTF-8, decoded as %s", origin, bad, FALLBACK_ENCODING)
    return "".join(out).removeprefix("\ufeff")


def read_table(path: Path, stats: SourceStats) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV (header row) or JSONL file, as dicts."""
    text = decode_text_lines(path.read_bytes(), stats, str(path))
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON line ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
            rows.append(row)
        return rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def _pick(columns: list[str], preferred: str | None, fallbacks: tuple[str, ...]) -> str | None:
    for name in (preferred, *fallbacks):
        if name and name in columns:
            return name
    return None


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _is_hidden(rel: PurePosixPath) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _unique_ids(rels: list[str]) -> dict[str, str]:
    """Map relative paths to ids (path without suffix; the suffix is kept where stems collide)."""
    stems = {rel: str(PurePosixPath(rel).with_suffix("")) for rel in rels}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {rel: rel if counts[stem] > 1 else stem for rel, stem in stems.items()}


def iter_folder(
    root: Path,
    cfg: PrepareSettings,
    stats: SourceStats,
    *,
    only: set[str] | None = None,
    require_metadata: bool = False,
    origin_prefix: str = "",
) -> Iterator[Record]:
    """Audio files under ``root`` (recursive), with transcripts from any ``metadata.csv/jsonl``.

    ``file_name`` in a metadata file is relative to that file's folder. Files listed in metadata but
    absent yield records whose path does not exist (reported as ``missing``); audio files not listed
    are audio-only. ``only`` restricts to these relative paths (an S3 mirror's current listing).
    """
    root = Path(root)
    if require_metadata and not (root / METADATA_FILES[0]).is_file():
        raise FileNotFoundError(
            f"no synthetic corpus at '{root}' ({METADATA_FILES[0]} missing): run `askd data synth` first"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    meta: dict[str, dict[str, Any]] = {}
    meta_paths = sorted(
        p for name in METADATA_FILES for p in root.rglob(name) if not _is_hidden(PurePosixPath(p.relative_to(root).as_posix()))
    )
    meta_paths = [p for p in meta_paths if only is None or p.relative_to(root).as_posix() in only]
    for meta_path in meta_paths:
        stats.metadata_files += 1
        rows = read_table(meta_path, stats)
        cols = _columns(rows)
        file_col = _pick(cols, "file_name", (cfg.audio_column, "path", "file"))
        if file_col is None:
            raise ValueError(f"{meta_path}: no 'file_name' (or '{cfg.audio_column}') column; columns: {cols}")
        text_col = _pick(cols, cfg.text_column, TEXT_COLUMNS)
        spk_col = _pick(cols, cfg.speaker_column, SPEAKER_COLUMNS)
        base = PurePosixPath(meta_path.parent.relative_to(root).as_posix())
        for row in rows:
            name = _clean(row.get(file_col))
            if name is None:
                continue
            rel = str(base / PurePosixPath(name.replace("\\", "/")))
            rel = rel.removeprefix("./")
            meta[rel] = {
                "text": _clean(row.get(text_col)) if text_col else None,
                "speaker": _clean(row.get(spk_col)) if spk_col else None,
                "split": normalize_split(row.get("split")),
            }
    audio_rels = {
        rel
        for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES
        and p.is_file()
        and not _is_hidden(PurePosixPath(rel := p.relative_to(root).as_posix()))
    }
    if only is not None:
        audio_rels &= only
    all_rels = sorted(audio_rels | set(meta))
    ids = _unique_ids(all_rels)
    for rel in all_rels:
        info = meta.get(rel, {})
        yield Record(
            id=ids[rel],
            audio=root / rel,
            text=info.get("text"),
            speaker=info.get("speaker"),
            split=info.get("split"),
            origin=f"{origin_prefix}{rel}",
        )


def iter_manifest(path: Path, cfg: PrepareSettings, stats: SourceStats) -> Iterator[Record]:
    """Rows of a CSV/TSV/JSONL manifest; ``cfg.audio_column`` holds paths relative to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    rows = read_table(path, stats)
    cols = _columns(rows)
    audio_col = _pick(cols, cfg.audio_column, ("file_name", "path", "audio_filepath"))
    if audio_col is None:
        raise ValueError(f"{path}: no '{cfg.audio_column}' column (columns: {cols}); set prepare.audio_column")
    text_col = _pick(cols, cfg.text_column, TEXT_COLUMNS)
    spk_col = _pick(cols, cfg.speaker_column, SPEAKER_COLUMNS)
    entries = []
    for lineno, row in enumerate(rows, start=1):
        name = _clean(row.get(audio_col)) or ""
        entries.append((lineno, row, name))
    ids = _unique_ids([name.replace("\\", "/") for _, _, name in entries if name])
    for lineno, row, name in entries:
        audio_path = Path(name) if Path(name).is_absolute() else path.parent / name
        rec_id = _clean(row.get("id")) or (ids.get(name.replace("\\", "/")) if name else None) or f"row-{lineno:06d}"
        yield Record(
            id=rec_id,
            audio=audio_path if name else path.parent / f"<row {lineno}: no {audio_col}>",
            text=_clean(row.get(text_col)) if text_col else None,
            speaker=_clean(row.get(spk_col)) if spk_col else None,
            split=normalize_split(row.get("split")),
            origin=f"{path.name}:{lineno}:{name}",
        )


def _hf_loader(ds, index: int, audio_col: str, base: Path) -> Callable[[], bytes | Path]:
    def load() -> bytes | Path:
        value = ds[index][audio_col]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if not value:
            return base / f"<row {index}: no audio>"
        p = Path(str(value))
        return p if p.is_absolute() or p.exists() else base / p

    return load


def iter_hf_disk(path: Path, cfg: PrepareSettings, stats: SourceStats) -> Iterator[Record]:
    """Rows of a ``save_to_disk`` Dataset or DatasetDict (split names honoured); audio read undecoded."""
    from datasets import Audio, Dataset, DatasetDict, load_from_disk

    obj = load_from_disk(str(path))
    parts: list[tuple[str | None, Dataset]] = list(obj.items()) if isinstance(obj, DatasetDict) else [(None, obj)]
    for split_name, ds in parts:
        cols = list(ds.column_names)
        audio_col = _pick(cols, cfg.audio_column, ("audio", "file_name", "path"))
        if audio_col is None:
            raise ValueError(f"{path}: no '{cfg.audio_column}' column (columns: {cols}); set prepare.audio_column")
        if isinstance(ds.features[audio_col], Audio):
            ds = ds.cast_column(audio_col, Audio(decode=False))
        text_col = _pick(cols, cfg.text_column, TEXT_COLUMNS)
        spk_col = _pick(cols, cfg.speaker_column, SPEAKER_COLUMNS)
        meta = {c: list(ds[c]) for c in {"id", text_col, spk_col, "split"} if c and c in cols and c != audio_col}
        audio_only = ds.select_columns([audio_col])
        prefix = f"{split_name}-" if split_name else ""
        for i in range(ds.num_rows):
            row = {c: values[i] for c, values in meta.items()}
            given_split = normalize_split(split_name) or normalize_split(row.get("split"))
            yield Record(
                id=_clean(row.get("id")) or f"{prefix}{i:06d}",
                audio=_hf_loader(audio_only, i, audio_col, Path(path)),
                text=_clean(row.get(text_col)) if text_col else None,
                speaker=_clean(row.get(spk_col)) if spk_col else None,
                split=given_split,
                origin=f"{split_name or 'data'}[{i}]",
            )


def iter_s3(cfg: PrepareSettings, stats: SourceStats) -> Iterator[Record]:
    """Mirror the S3 prefix into ``cfg.download_dir`` (resumable), then read it as a folder."""
    from components.s3 import sync_prefix

    result = sync_prefix(cfg.input, cfg.download_dir, endpoint_url=cfg.s3_endpoint_url)
    stats.s3 = result.as_metrics()
    prefix = cfg.input.rstrip("/") + "/"
    yield from iter_folder(result.local_root, cfg, stats, only=set(result.files), origin_prefix=prefix)


def iter_records(cfg: PrepareSettings, stats: SourceStats | None = None) -> Iterator[Record]:
    """All records of ``cfg.source`` / ``cfg.input`` (not decoded, not validated)."""
    stats = stats if stats is not None else SourceStats()
    if cfg.source == "synth":
        return iter_folder(Path(cfg.input), cfg, stats, require_metadata=True)
    if cfg.source == "folder":
        return iter_folder(Path(cfg.input), cfg, stats)
    if cfg.source == "manifest":
        return iter_manifest(Path(cfg.input), cfg, stats)
    if cfg.source == "hf_disk":
        return iter_hf_disk(Path(cfg.input), cfg, stats)
    if cfg.source == "s3":
        return iter_s3(cfg, stats)
    raise ValueError(f"unknown prepare.source '{cfg.source}'")
