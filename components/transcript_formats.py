"""A :class:`components.inference.Transcript` as text, JSON, SubRip (SRT) or WebVTT: what ``askd transcribe
--format`` prints and ``askd serve`` answers (OpenAI's ``response_format`` names: text, json, verbose_json, srt,
vtt)."""

from __future__ import annotations

import json
from typing import Any

FORMATS = ("text", "json", "verbose_json", "srt", "vtt")
MEDIA_TYPES = {"text": "text/plain", "json": "application/json", "verbose_json": "application/json",
               "srt": "application/x-subrip", "vtt": "text/vtt"}


def timestamp(seconds: float, decimal: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or with ``decimal="."`` ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def as_dict(transcript, verbose: bool = False) -> dict[str, Any]:
    """``{"text"}``; verbose adds language, duration and the segments (id, start, end, text)."""
    out: dict[str, Any] = {"text": transcript.text}
    if verbose:
        out.update(task="transcribe", language=transcript.language, duration=transcript.duration_s,
                   segments=[{"id": i, "start": s.start_s, "end": s.end_s, "text": s.text}
                             for i, s in enumerate(transcript.segments)])
    return out


def render(transcript, fmt: str) -> str:
    """The transcript in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "text":
        return transcript.text + "\n"
    if fmt in ("json", "verbose_json"):
        return json.dumps(as_dict(transcript, verbose=fmt == "verbose_json"), ensure_ascii=False) + "\n"
    if fmt == "srt":
        blocks = [f"{i}\n{timestamp(s.start_s)} --> {timestamp(s.end_s)}\n{s.text}\n"
                  for i, s in enumerate(transcript.segments, start=1)]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{timestamp(s.start_s, '.')} --> {timestamp(s.end_s, '.')}\n{s.text}\n" for s in transcript.segments]
        return "WEBVTT\n\n" + "\n".join(blocks)
    raise ValueError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
