"""Checkpoint averaging (``train.average_best``): which evaluation points are kept and how they are averaged."""

from __future__ import annotations

import pytest
import torch

from components.train.checkpoint import average_states, keep_top


def _entry(step: int, wer: float) -> dict:
    return {"step": step, "wer": wer, "state": {"w": torch.full((2,), float(step))}}


def test_keep_top_keeps_the_lowest_wer_and_breaks_ties_by_the_earlier_step():
    top: list = []
    for step, wer in [(100, 5.0), (200, 3.9), (300, 4.2), (400, 3.9), (500, 3.9), (600, 3.8)]:
        top = keep_top(top, _entry(step, wer), 3)
    assert [e["step"] for e in top] == [600, 200, 400]
    assert [e["step"] for e in keep_top([], _entry(7, 1.0), 1)] == [7]


def test_average_states_is_the_elementwise_mean_and_keeps_dtypes():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16)}
    c = {"w": torch.tensor([5.0, 1.0]), "h": torch.tensor([3.0], dtype=torch.float16)}
    avg = average_states([a, b, c])
    assert torch.allclose(avg["w"], torch.tensor([3.0, 3.0]))
    assert avg["h"].dtype == torch.float16 and float(avg["h"]) == pytest.approx(2.0)
    assert torch.equal(average_states([a])["w"], a["w"])
    with pytest.raises(ValueError):
        average_states([])


def test_model_card_says_how_the_saved_weights_were_made():
    from components.model_card import _recipe

    assert "- saved weights: mean of the 3 evaluation points with the lowest validation WER" in _recipe(
        {"train": {"average_best": 3}})
    assert "- saved weights: the evaluation point with the lowest validation WER" in _recipe({"train": {}})


def test_model_card_says_which_teacher_window_gave_the_kd_targets():
    from components.model_card import _recipe

    assert "KD targets from the teacher at its own window" in _recipe({"train": {"teacher_window": "full"}})[3]
    assert "KD targets from the teacher at the student window" in _recipe({"train": {"teacher_window": "student"}})[3]
    assert "KD targets from the teacher at a 10 s window" in _recipe({"train": {"teacher_window": 10}})[3]


def test_model_card_names_a_kept_vocabulary_only_when_there_is_one():
    from components.model_card import _recipe

    card = "\n".join(_recipe({"train": {"student": {"vocab_top_ranks": 16384}}}))
    assert "token ids below 16384" in card and "askd_vocab.json" in card and "suppress_tokens" in card
    assert "vocabulary" not in "\n".join(_recipe({"train": {"student": {"vocab_top_ranks": None}}}))


def test_model_card_names_the_student_it_was_cut_from():
    from components.model_card import _recipe

    card = "\n".join(_recipe({"train": {"student": {"init_from": "/runs/7/student"}}}))
    assert "initialised from the trained student `/runs/7/student`" in card and "init_from_sha256" in card
    assert "initialised" not in "\n".join(_recipe({"train": {"student": {"init_from": None}}}))
