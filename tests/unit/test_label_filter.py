"""Keep/drop decisions of the label filter on a table of (reference, hypothesis) pairs."""

from __future__ import annotations

import math

import pytest

from components.label_filter import decide, repeated_ngram_fraction

LIMITS = {"wer_threshold_percent": 10.0, "max_repeated_ngram_fraction": 0.3, "max_tokens_per_s": 12.0}


@pytest.mark.parametrize(
    ("reference", "hypothesis", "n_tokens", "duration_s", "keep", "reason", "wer"),
    [
        # normalisation: case and punctuation do not count
        ("Hello, World!", "hello world", 3, 1.0, True, "kept", 0.0),
        # the English normaliser maps spelled numbers: "nine" == "9"
        ("Platform nine.", "platform 9", 3, 1.0, True, "kept", 0.0),
        # one substitution in 10 words = 10 %: kept (threshold is inclusive)
        ("the cat sat on a red mat by the door",
         "the cat sat on a red mat by the floor", 11, 3.0, True, "kept", 10.0),
        # two substitutions in 10 words = 20 %: dropped by the WER filter
        ("the cat sat on a red mat by the door",
         "the hat sat on a red mat by the floor", 11, 3.0, False, "wer", 20.0),
        # empty hypothesis
        ("Something was said.", "", 0, 2.0, False, "empty", 100.0),
        ("Something was said.", " ... ", 1, 2.0, False, "empty", 100.0),
        # runaway repetition (a hallucination loop) is dropped even without a reference
        (None, "you know you know you know you know you know you know", 13, 4.0, False, "repetition", None),
        # too many tokens for the audio length
        ("a b c", "a b c", 60, 2.0, False, "token_rate", 0.0),
        # audio-only clips skip the WER filter but not the guard
        (None, "a perfectly ordinary sentence", 5, 2.0, True, "kept_audio_only", None),
        ("", "a perfectly ordinary sentence", 5, 2.0, True, "kept_audio_only", None),
    ],
)
def test_decisions(reference, hypothesis, n_tokens, duration_s, keep, reason, wer):
    d = decide(reference, hypothesis, n_tokens, duration_s, **LIMITS)
    assert (d.keep, d.reason) == (keep, reason)
    if wer is None:
        assert d.wer_percent is None
    else:
        assert math.isclose(d.wer_percent, wer, abs_tol=0.01)


def test_threshold_is_a_parameter():
    ref, hyp = "alpha beta gamma delta epsilon", "alpha beta gamma delta upsilon"  # 20 %
    assert not decide(ref, hyp, 6, 2.0, **LIMITS).keep
    assert decide(ref, hyp, 6, 2.0, **{**LIMITS, "wer_threshold_percent": 25.0}).keep


def test_repeated_ngram_fraction():
    assert repeated_ngram_fraction("the cat sat on the mat today") == 0.0
    assert repeated_ngram_fraction("go go go go go go go go") > 0.8
    assert repeated_ngram_fraction("short") == 0.0
