"""load_whisper's folder validation, and the text normaliser / WER / CER on a table of cases."""

from __future__ import annotations

import json
import math

import pytest

from components.text import cer, normalize, wer
from components.whisper_io import load_whisper


def test_load_whisper_rejects_missing_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="is not a Whisper model folder: no such folder"):
        load_whisper(tmp_path / "nope")
    with pytest.raises(ValueError, match="is not a Whisper model folder: config.json is missing"):
        load_whisper(tmp_path)


def test_load_whisper_rejects_other_model_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"not a Whisper model folder: .*model_type='bert'"):
        load_whisper(tmp_path)


def test_load_whisper_rejects_broken_config_and_missing_weights(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_whisper(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match="no weights"):
        load_whisper(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  The  birch canoe.  ", "the birch canoe"),
        ("Platform nine at half past seven.", "platform 9 at half past 7"),
        ("I won't go, um, there", "i will not go there"),
        ("", ""),
    ],
)
def test_normalize_english(text, expected):
    assert normalize(text) == expected


def test_normalize_non_english_keeps_letters():
    assert normalize("Héllo, wörld!", english=False) == "héllo wörld"


@pytest.mark.parametrize(
    ("refs", "hyps", "expected"),
    [
        (["Hello, World!"], ["hello world"], 0.0),  # case and punctuation
        (["Platform nine."], ["platform 9"], 0.0),  # numbers standardised
        (["the cat sat"], ["the big cat sat"], 100 / 3),  # one insertion over 3 words
        (["the cat sat"], ["the cat"], 100 / 3),  # one deletion
        (["the cat sat"], ["a cat sat"], 100 / 3),  # one substitution
        (["the cat sat"], [""], 100.0),  # empty hypothesis: everything deleted
        (["a b c d", "e f"], ["a b c d", "e x"], 100 / 6),  # corpus level, not the mean of utterances
        (["a b", ""], ["a b", "x y"], 100.0),  # empty reference: its words are insertions
        ([""], [""], 0.0),
    ],
)
def test_wer_table(refs, hyps, expected):
    assert wer(refs, hyps) == pytest.approx(expected)


def test_wer_all_empty_references_with_words_is_infinite():
    assert math.isinf(wer([""], ["something"]))


def test_wer_length_mismatch():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_cer():
    assert cer(["abc"], ["abd"]) == pytest.approx(100 / 3)
    assert cer(["Hello!"], ["hello"]) == 0.0
