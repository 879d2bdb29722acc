"""Which teacher labels to keep: WER filter against references and a hallucination guard.

Pure functions, so the decisions can be tested on a table of (reference, hypothesis) pairs.

Decision order for one clip (first match wins):

1. ``empty``          the teacher produced no words;
2. ``repetition``     runaway repetition: the share of repeated word 3-grams exceeds
                      ``max_repeated_ngram_fraction`` (e.g. "you know you know you know ...");
3. ``token_rate``     more than ``max_tokens_per_s`` label tokens per second of audio (speech is 2–5 tokens/s);
4. ``wer``            the clip has a reference and WER(normalised reference, normalised label) exceeds
                      ``wer_threshold_percent`` (Distil-Whisper's filter, λ = 10 %);
5. otherwise kept — as ``kept`` (checked against a reference) or ``kept_audio_only`` (no reference).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from components.text import normalize, wer

NGRAM_N = 3  # word n-gram order of the repetition guard
MIN_WORDS_FOR_REPETITION_CHECK = 6  # short labels cannot meaningfully "loop"

KEEP_REASONS = ("kept", "kept_audio_only")
DROP_REASONS = ("empty", "repetition", "token_rate", "wer")


@dataclass(frozen=True)
class LabelDecision:
    keep: bool
    reason: str  # one of KEEP_REASONS or DROP_REASONS
    wer_percent: float | None  # None when the clip has no reference


def repeated_ngram_fraction(text: str, n: int = NGRAM_N) -> float:
    """Share of word n-grams that repeat an n-gram seen earlier in the same text (0 = none)."""
    words = text.lower().split()
    if len(words) < max(n + 1, MIN_WORDS_FOR_REPETITION_CHECK):
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    repeats = sum(c - 1 for c in counts.values())
    return repeats / len(grams)


def _has_words(text: str) -> bool:
    """True when the normalised text holds a letter or digit (the normaliser may leave lone '.')."""
    return any(ch.isalnum() for ch in normalize(text))


def decide(
    reference: str | None,
    hypothesis: str,
    n_tokens: int,
    duration_s: float,
    *,
    wer_threshold_percent: float,
    max_repeated_ngram_fraction: float,
    max_tokens_per_s: float,
) -> LabelDecision:
    """Keep or drop one teacher label; see the module docstring for the rules."""
    has_ref = bool(reference) and _has_words(reference)
    clip_wer = wer([reference], [hypothesis]) if has_ref else None
    if not _has_words(hypothesis):
        return LabelDecision(False, "empty", clip_wer)
    if repeated_ngram_fraction(hypothesis) > max_repeated_ngram_fraction:
        return LabelDecision(False, "repetition", clip_wer)
    if duration_s > 0 and n_tokens / duration_s > max_tokens_per_s:
        return LabelDecision(False, "token_rate", clip_wer)
    if clip_wer is not None and clip_wer > wer_threshold_percent:
        return LabelDecision(False, "wer", clip_wer)
    return LabelDecision(True, "kept" if has_ref else "kept_audio_only", clip_wer)
