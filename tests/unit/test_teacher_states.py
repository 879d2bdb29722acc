"""The cached teacher decoder states: round trip, batch order, resume after an interrupted fill, key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.train.teacher_states import TeacherStateCache, states_key

WIDTH = 6


def _sequences(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 9))
        inputs = [int(t) for t in rng.integers(0, 50, length)]
        out.append((inputs, [-100] + inputs[1:]))  # the first target is forced: not predicted
    return out


def _fake_teacher(sequences):
    def states(rows):  # distinct per (example, position): the cache must keep each example's own rows
        return torch.cat([torch.stack([torch.full((WIDTH,), 100.0 * r + i) for i, t in enumerate(sequences[r][1])
                                       if t != -100]) for r in rows])
    return states


def test_store_round_trip_and_batch_order(tmp_path):
    seqs = _sequences(37)
    store = TeacherStateCache(tmp_path / "t", seqs, WIDTH)
    assert store.fill(_fake_teacher(seqs)) == 37 and store.complete
    order = [30, 2, 17]
    assert torch.equal(store.rows(order), _fake_teacher(seqs)(order))
    assert TeacherStateCache(tmp_path / "t", seqs, WIDTH).fill(_fake_teacher(seqs)) == 0  # complete: no work


def test_interrupted_fill_resumes_to_the_same_store(tmp_path):
    seqs = _sequences(40, seed=3)
    fake = _fake_teacher(seqs)
    TeacherStateCache(tmp_path / "ref", seqs, WIDTH).fill(fake)
    calls = {"n": 0}

    def dies_on_the_second_chunk(rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return fake(rows)

    run = TeacherStateCache(tmp_path / "run", seqs, WIDTH)
    with pytest.raises(KeyboardInterrupt):
        run.fill(dies_on_the_second_chunk)
    assert 0 < run.done_examples() < 40
    assert run.fill(fake) == 40 - 16  # only the missing chunks
    assert (tmp_path / "ref" / "states.f32").read_bytes() == (tmp_path / "run" / "states.f32").read_bytes()


def test_wrong_shape_from_the_teacher_is_a_clear_error(tmp_path):
    seqs = _sequences(4)
    with pytest.raises(ValueError, match="teacher gave states of shape"):
        TeacherStateCache(tmp_path / "t", seqs, WIDTH).fill(lambda rows: torch.zeros(1, WIDTH))


def test_key_changes_with_teacher_window_and_sequences():
    seqs = _sequences(5)
    base = states_key("teacher", 10, seqs)
    assert base == states_key("teacher", 10, seqs)
    other = list(seqs)
    other[2] = (other[2][0], [-100] * len(other[2][1]))
    assert len({base, states_key("teacher", 10, other), states_key("teacher", 30, seqs),
                states_key("other", 10, seqs)}) == 4
