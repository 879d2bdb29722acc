"""Extra training text (components/text_sources.py): dialogue lines and numbers in words, seeded and held out."""

from __future__ import annotations

import re

from components.sections import SynthSettings
from components.text import normalize
from components.text_sources import dialogue_lines, extra_sentences, number_sentence, punctuate


def test_numbers_are_words_and_seeded():
    import random

    made = [number_sentence(random.Random(7)) for _ in range(3)]
    assert len(set(made)) == 1  # same seed, same sentence
    many = [number_sentence(random.Random(seed)) for seed in range(200)]
    assert not any(re.search(r"\d", s) for s in many) and len(set(many)) > 150
    assert any("o'clock" in s or "oh" in s.split() for s in many)


def test_dialogue_lines_come_from_the_package_and_get_punctuation():
    lines = dialogue_lines()
    assert len(lines) > 1000 and not any("def " in line and "(" in line for line in lines)  # coding.yml left out
    assert punctuate("do you ever get lonely") == "Do you ever get lonely?"
    assert punctuate("try plugging it into another port") == "Try plugging it into another port."
    assert punctuate("Hello there!") == "Hello there!"


def test_extra_sentences_alternate_sources_respect_lengths_and_hold_out_test_texts():
    first = extra_sentences(("dialogue", "numbers"), 40, 6, 18, seed=3, exclude=set())
    assert first == extra_sentences(("dialogue", "numbers"), 40, 6, 18, seed=3, exclude=set())
    assert len(first) == 40 and all(6 <= len(s.split()) <= 18 for s in first)
    held = {normalize(first[0]), normalize(first[1])}
    again = extra_sentences(("dialogue", "numbers"), 40, 6, 18, seed=3, exclude=held)
    assert not held & {normalize(s) for s in again}


def test_synth_replaces_a_share_of_train_sentences_only():
    from components.synth import with_extra_texts

    pools = {"train": [f"Fortune number {i} is here." for i in range(300)], "validation": ["A validation line here."],
             "test": ["A test line that stays."], "test_ood": [], "test_longform": []}
    cfg = SynthSettings(extra_text_fraction=0.3)
    out = with_extra_texts(cfg, pools)
    changed = [i for i, (a, b) in enumerate(zip(pools["train"], out["train"])) if a != b]
    assert 60 <= len(changed) <= 120 and {k: v for k, v in out.items() if k != "train"} == {
        k: v for k, v in pools.items() if k != "train"}
    assert with_extra_texts(cfg, pools) == out and with_extra_texts(SynthSettings(), pools) is pools
