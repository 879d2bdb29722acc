"""The model in users' hands: load a student (or any Whisper form) and transcribe audio into timed segments.

    from components.inference import load_model

    model = load_model("models/exports/student-ct2_int8")   # a CTranslate2 export, a transformers folder,
    result = model.transcribe("call.wav")                  # a torch int8 export, or "whisper-askd-student@prod"
    print(result.text)
    for seg in result.segments:
        print(f"{seg.start_s:.2f}-{seg.end_s:.2f} {seg.text}")

Audio is anything FFmpeg decodes (a path or the file's bytes), or a 16 kHz mono float array. Audio longer than the
model's window is cut at pauses (:func:`components.speed.silence_spans`, the same cutting `evaluate` scores); each
piece is one :class:`Segment` whose times are the cut points. :meth:`Model.transcribe_batch` decodes the pieces of
several clips in shared batches (what ``askd serve`` uses for concurrent requests).

A registry reference, ``<model_name>@<alias>`` or ``<model_name>:<version>``, is pulled with ``askd registry
pull``'s code into ``cache_dir/<model_name>/v<N>`` (every file checked against the version's SHA-256 manifest; a
cached copy is re-checked, not re-downloaded) and its shipped CTranslate2 int8 export is loaded (the transformers
folder when the version has no export).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.tts import SAMPLE_RATE_HZ

DEFAULT_CACHE_DIR = Path("~/.cache/whisper-askd").expanduser()
REFERENCE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[A-Za-z0-9._-]+)|:(?P<version>v?\d+))$")
SHIPPED_EXPORT = "student-ct2_int8"


@dataclass(frozen=True)
class DecodeOptions:
    """Greedy decoding as `evaluate` scores it (Whisper's own option names)."""

    num_beams: int = 1
    max_new_tokens: int = 128  # per window
    batch_size: int = 8


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: list[Segment]
    duration_s: float
    language: str = "en"
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def as_audio(audio) -> np.ndarray:
    """16 kHz mono float32 from a path, encoded bytes, or an array already at 16 kHz."""
    from components.audio import decode_audio

    if isinstance(audio, np.ndarray):
        return audio.astype(np.float32, copy=False)
    return decode_audio(audio if isinstance(audio, (bytes, bytearray, memoryview)) else Path(audio))[0]


class Model:
    """A loaded form with one set of decode options."""

    def __init__(self, form, options: DecodeOptions | None = None, source: str = ""):
        self.form = form
        self.options = options or DecodeOptions()
        self.source = source or str(form.path)

    @property
    def window_s(self) -> float:
        return self.form.window_samples / SAMPLE_RATE_HZ

    def transcribe(self, audio) -> Transcript:
        return self.transcribe_batch([audio])[0]

    def transcribe_batch(self, audios: list) -> list[Transcript]:
        """One :class:`Transcript` per input; all pieces of all inputs share the decoder's batches."""
        from components.speed import silence_spans

        arrays = [as_audio(a) for a in audios]
        pieces, owner = [], []
        for i, audio in enumerate(arrays):
            for start, end in silence_spans(audio, self.form.window_samples):
                pieces.append((start, end, audio[start:end]))
                owner.append(i)
        outs = self.form.generate([p[2] for p in pieces], batch_size=self.options.batch_size,
                                  max_new_tokens=self.options.max_new_tokens, num_beams=self.options.num_beams)
        segments: list[list[Segment]] = [[] for _ in arrays]
        for i, (start, end, _), (_, text) in zip(owner, pieces, outs, strict=True):
            if text.strip():
                segments[i].append(Segment(round(start / SAMPLE_RATE_HZ, 3), round(end / SAMPLE_RATE_HZ, 3),
                                           text.strip()))
        return [Transcript(" ".join(s.text for s in segs), segs, round(len(a) / SAMPLE_RATE_HZ, 3),
                           model=self.source) for segs, a in zip(segments, arrays, strict=True)]


def parse_reference(text: str) -> tuple[str, str] | None:
    """``(model_name, alias or version)`` of a registry reference, or None when ``text`` is not one."""
    match = REFERENCE.match(text.strip())
    if not match:
        return None
    return match["name"], match["alias"] or match["version"]


def _cached_ok(folder: Path) -> bool:
    """A finished pull whose every file still matches the manifest it came with."""
    import json

    from components.registry import sha256_file
    from components.registry_ops import PULL_MARKER

    try:
        manifest = json.loads((folder / PULL_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((folder / f["path"]).is_file() and sha256_file(folder / f["path"]) == f["sha256"]
               for f in manifest.get("files") or [])


def pull_reference(name: str, ref: str, registry_cfg, cache_dir: Path, client=None) -> Path:
    """The local, verified folder of a registry version (pulled into the cache when not there or damaged)."""
    from components.registry_ops import pull, resolve

    cfg = registry_cfg.model_copy(update={"model_name": name})
    version = resolve(cfg, ref, client)
    folder = Path(cache_dir) / name / f"v{version}"
    if not _cached_ok(folder):
        pull(cfg, str(version), folder, client)
    return folder


def model_folder(pulled: Path) -> Path:
    """The folder to load inside a pulled version: the shipped CT2 int8 export, else the transformers model."""
    shipped = pulled / "exports" / SHIPPED_EXPORT
    return shipped if (shipped / "model.bin").is_file() else pulled / "model"


def load_model(source: str | Path, *, options: DecodeOptions | None = None, registry_cfg=None,
               cache_dir: str | Path = DEFAULT_CACHE_DIR, ct2_decode_threads: int = 1, client=None) -> Model:
    """A :class:`Model` from a model/export folder or a registry reference (``registry_cfg``: where the registry
    is; default: the ``registry`` section of the settings defaults, endpoint from the environment)."""
    from components.export import load_form

    path = Path(source)
    reference = None if path.exists() else parse_reference(str(source))
    if reference is not None:
        if registry_cfg is None:
            from components.sections import RegistrySettings

            registry_cfg = RegistrySettings()
        path = model_folder(pull_reference(*reference, registry_cfg, Path(cache_dir), client))
    form = load_form(path, ct2_decode_threads=ct2_decode_threads)  # a folder that is no model: a clear ValueError
    return Model(form, options, source=str(source))
