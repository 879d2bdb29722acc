"""Evaluation metrics on tables of cases: WER/CER with the normaliser, insertion, empty, repetition, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluate import empty_rate, hallucination_flags, insertion_rate, repeated_ngram_rate, set_metrics
from components.speed import chunk_spans, merge_chunk_tokens, silence_spans, speed_sample
from components.text import cer, wer

LOOP = "you know you know you know you know you know you know you know"

WER_CASES = [  # reference, hypothesis, expected WER (%)
    ("Hello, World!", "hello world", 0.0),  # case and punctuation
    ("I won't go.", "I will not go", 0.0),  # contractions expanded
    ("nine apples", "9 apples", 0.0),  # numbers standardised
    ("Mr. Smith is here", "mister smith is here", 0.0),  # titles
    ("the cat sat", "the cat sat down", 100 / 3),  # one insertion
    ("the cat sat", "the sat", 100 / 3),  # one deletion
    ("the cat sat", "a cat sat", 100 / 3),  # one substitution
    ("the cat sat", "", 100.0),  # empty output: all deletions
]


@pytest.mark.parametrize(("ref", "hyp", "expected"), WER_CASES)
def test_wer_table_with_whisper_normaliser(ref, hyp, expected):
    assert wer([ref], [hyp]) == pytest.approx(expected)


INSERTION_CASES = [  # references, hypotheses, expected insertion rate (%)
    (["a b c"], ["a b c"], 0.0),
    (["a b c"], ["a x b c"], 100 / 3),
    (["a b c"], ["x a b c y z"], 100.0),
    (["a b c"], ["a c"], 0.0),  # a deletion is no insertion
    (["a b c"], ["a x c"], 0.0),  # nor a substitution
    (["Hello, world!", "red blue"], ["hello world", "red blue green pink"], 50.0),
    (["a b", ""], ["a b", "extra words"], 100.0),  # empty reference: every word is an insertion
    ([""], [""], 0.0),
]


@pytest.mark.parametrize(("refs", "hyps", "expected"), INSERTION_CASES)
def test_insertion_rate_table(refs, hyps, expected):
    assert insertion_rate(refs, hyps) == pytest.approx(expected)


def test_insertion_rate_is_inf_when_only_empty_references_get_words():
    assert insertion_rate([""], ["words"]) == float("inf")


@pytest.mark.parametrize(
    ("hyps", "expected"),
    [
        (["hello", "world"], 0.0),
        (["", "hello"], 50.0),
        (["  ", ".", "...", "hi"], 75.0),  # the normaliser leaves nothing of punctuation
        ([], 0.0),
    ],
)
def test_empty_rate_table(hyps, expected):
    assert empty_rate(hyps) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("hyps", "threshold", "expected"),
    [
        ([LOOP], 0.3, 100.0),
        (["You know, you know, you know, you know, you know, you know!"], 0.3, 100.0),  # punctuation normalised
        (["the quick brown fox jumps over the lazy dog"], 0.3, 0.0),
        (["you know you know"], 0.3, 0.0),  # too short to loop
        ([LOOP, "a perfectly ordinary sentence with no repeats at all"], 0.3, 50.0),
        ([LOOP], 0.99, 0.0),
    ],
)
def test_repeated_ngram_rate_table(hyps, threshold, expected):
    assert repeated_ngram_rate(hyps, threshold) == pytest.approx(expected)


def test_hallucination_flags_combine_repetition_and_token_rate():
    flags = hallucination_flags(
        ["fine sentence here", LOOP, "short but fast", "silent"],
        [5, 20, 100, 3], [2.0, 10.0, 2.0, 0.0],
        repetition_threshold=0.3, max_tokens_per_s=12.0,
    )
    assert flags == [False, True, True, False]


def test_set_metrics_table():
    refs = ["the cat sat on the mat", "hello world", "one two three"]
    hyps = ["the cat sat on the mat", "", LOOP]
    m = set_metrics(refs, hyps, [7, 0, 30], [2.0, 1.0, 2.0])
    assert m["clips"] == 3 and m["tokens"] == 37 and m["audio_s"] == 5.0
    assert m["wer"] == pytest.approx(wer(refs, hyps), abs=1e-3)
    assert m["cer"] == pytest.approx(cer(refs, hyps), abs=1e-3)
    assert m["empty_rate"] == pytest.approx(100 / 3, abs=1e-3)
    assert m["repeated_ngram_rate"] == pytest.approx(100 / 3, abs=1e-3)
    assert m["hallucination_rate"] == pytest.approx(100 / 3, abs=1e-3)  # the loop (15 tokens/s as well)
    assert m["insertion_rate"] > 100  # the loop inserts far more words than the 11 reference words


WINDOW = 160_000  # 10 s at 16 kHz


@pytest.mark.parametrize("n", [1, 80_000, WINDOW])
def test_chunk_spans_one_window_when_the_clip_fits(n):
    assert chunk_spans(n, WINDOW, WINDOW // 6) == [(0, n)]


@pytest.mark.parametrize("seconds", [10.5, 20.2, 23.3, 28.0, 61.0])
def test_chunk_spans_cover_the_clip_with_overlaps_like_the_pipeline(seconds):
    n, stride = int(seconds * 16_000), round(WINDOW / 6)
    spans = chunk_spans(n, WINDOW, stride)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(end - start <= WINDOW for start, end in spans)
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        assert s1 - s0 == WINDOW - 2 * stride  # the pipeline's step
        assert e0 - s1 == 2 * stride  # each overlap holds both strides
    assert spans[-2][0] + WINDOW < n  # no window after the one that reaches the end


def _speech_with_pauses(pauses_s: list[float], total_s: float, seed: int = 0) -> np.ndarray:
    """Loud noise ("speech") with 0.3 s near-silent pauses starting at ``pauses_s``."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 0.3, int(total_s * 16_000)).astype(np.float32)
    for p in pauses_s:
        audio[int(p * 16_000) : int((p + 0.3) * 16_000)] *= 0.001
    return audio


def test_silence_spans_cut_in_the_pauses_and_cover_the_clip():
    audio = _speech_with_pauses([3.1, 7.2, 13.5, 18.9], total_s=23.0)
    spans = silence_spans(audio, WINDOW)
    assert spans[0][0] == 0 and spans[-1][1] == len(audio)
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))  # consecutive, no overlap, nothing lost
    assert all(end - start <= WINDOW for start, end in spans)
    cuts_s = [start / 16_000 for start, _ in spans[1:]]
    # the pause at 3.1 s lies in the first half of the window: the cut goes to the one at 7.2 s, then 13.5 s;
    # the remaining 9.4 s fit one window, so the pause at 18.9 s is not needed
    assert len(cuts_s) == 2
    for cut, pause in zip(cuts_s, [7.2, 13.5]):
        assert pause <= cut <= pause + 0.3, (cut, pause)


def test_silence_spans_one_span_when_the_clip_fits_and_a_cut_even_without_pauses():
    assert silence_spans(np.ones(WINDOW, np.float32), WINDOW) == [(0, WINDOW)]
    spans = silence_spans(_speech_with_pauses([], total_s=25.0), WINDOW)
    assert len(spans) >= 3 and all(e - s <= WINDOW for s, e in spans) and spans[-1][1] == 25 * 16_000


def test_chunk_spans_reject_a_stride_that_leaves_no_step():
    with pytest.raises(ValueError, match="stride"):
        chunk_spans(3 * WINDOW, WINDOW, WINDOW // 2)


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([[1, 2, 3, 4, 5], [4, 5, 6, 7]], [1, 2, 3, 4, 5, 6, 7]),
        ([[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]], [1, 2, 3, 4, 5, 6, 7, 8]),
        ([[1, 2, 3], []], [1, 2, 3]),  # a window without tokens is dropped
        ([[], []], []),
        ([[9, 8]], [9, 8]),
    ],
)
def test_merge_chunk_tokens_longest_common_sequence(chunks, expected):
    assert merge_chunk_tokens(chunks) == expected


def test_speed_sample_is_deterministic_spread_and_fits_the_window():
    audios = [np.zeros(n, dtype=np.float32) for n in (5, 50, 10, 40, 20, 30, 1000)]
    picked = speed_sample(audios, 3, max_samples=100)
    assert [len(a) for a in picked] == [5, 20, 50]
    assert [len(a) for a in speed_sample(audios, 10, max_samples=100)] == [5, 10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="fits"):
        speed_sample(audios, 2, max_samples=4)
