"""Transcript normalisation and error rates (WER / CER, in percent, corpus level).

English text goes through transformers' Whisper ``EnglishTextNormalizer`` (lower case, punctuation and
fillers removed, contractions expanded, numbers standardised: "nine" and "9" both become "9").
The British-to-American spelling table that normaliser can use is not shipped with transformers (it
is the hub's ``normalizer.json``), so it runs with an empty table offline: "colour" and "color" differ.
Non-English text uses the ``BasicTextNormalizer`` (lower case, symbols and punctuation removed).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jiwer
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

PERCENT = 100.0


@functools.lru_cache(maxsize=2)
def _normalizer(english: bool):
    if english:
        return EnglishTextNormalizer(english_spelling_mapping={})
    return BasicTextNormalizer()


def normalize(text: str, english: bool = True) -> str:
    """Whisper-style normalised text (stripped, single spaces); ``english=False`` uses the basic normaliser."""
    return " ".join(_normalizer(english)(text or "").split())


def _pairs(references: Sequence[str], hypotheses: Sequence[str], english: bool) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize(r, english) for r in references]
    hyps = [normalize(h, english) for h in hypotheses]
    return refs, hyps


def _error_rate(refs: list[str], hyps: list[str], unit_count, measure) -> float:
    """Corpus-level rate; pairs whose reference is empty after normalisation count their insertions only."""
    total_ref = sum(unit_count(r) for r in refs)
    kept = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    errors = sum(unit_count(h) for r, h in zip(refs, hyps, strict=True) if not r)  # all insertions
    if kept:
        out = measure([r for r, _ in kept], [h for _, h in kept])
        errors += out.substitutions + out.deletions + out.insertions
    if total_ref == 0:
        return 0.0 if errors == 0 else float("inf")
    return PERCENT * errors / total_ref


def wer(references: Sequence[str], hypotheses: Sequence[str], english: bool = True) -> float:
    """Corpus word error rate in percent after normalisation (errors over all reference words).

    Empty references are allowed: their hypothesis words count as insertions. If every reference is
    empty the result is 0.0 when every hypothesis is empty too, else ``inf``.
    """
    refs, hyps = _pairs(references, hypotheses, english)
    return _error_rate(refs, hyps, lambda s: len(s.split()), jiwer.process_words)


def cer(references: Sequence[str], hypotheses: Sequence[str], english: bool = True) -> float:
    """Corpus character error rate in percent after normalisation (spaces count as characters)."""
    refs, hyps = _pairs(references, hypotheses, english)
    return _error_rate(refs, hyps, len, jiwer.process_characters)


def utterance_wer(reference: str, hypothesis: str, english: bool = True) -> float:
    """WER of one pair in percent (convenience for per-clip filters)."""
    return wer([reference], [hypothesis], english)
