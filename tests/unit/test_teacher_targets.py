"""Cached top-k teacher KD targets: the sparse KL against the full one and hand-computed values, and the store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.train.losses import LossWeights, distillation_loss, kl_divergence
from components.train.teacher_targets import (
    SparseTargets,
    TeacherTargetCache,
    kl_divergence_topk,
    sparse_targets_from_logits,
    targets_key,
)


def _batch(seed: int = 0, b: int = 2, length: int = 5, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, length, v, generator=g) * 3
    student = torch.randn(b, length, v, generator=g) * 3
    labels = torch.randint(0, v, (b, length), generator=g)
    labels[1, 3:] = -100  # padding
    return teacher, student, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocabulary_top_k_equals_the_full_kl_and_its_gradient(temperature):
    teacher, student, labels = _batch()
    mask = labels != -100
    s1 = student.clone().requires_grad_(True)
    s2 = student.clone().requires_grad_(True)
    full = kl_divergence(teacher, s1, mask, temperature)
    sparse = kl_divergence_topk(sparse_targets_from_logits(teacher[mask], temperature, 11), s2, mask, temperature)
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    full.backward()
    sparse.backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_kl_is_below_the_full_kl_and_positive(k):
    teacher, student, labels = _batch(seed=1)
    mask = labels != -100
    full = kl_divergence(teacher, student, mask, 2.0).item()
    sparse = kl_divergence_topk(sparse_targets_from_logits(teacher[mask], 2.0, k), student, mask, 2.0).item()
    assert 0 < sparse <= full + 1e-6
    same = kl_divergence_topk(sparse_targets_from_logits(student[mask], 2.0, k), student, mask, 2.0).item()
    assert same == pytest.approx(0.0, abs=1e-6)  # a student equal to the teacher has no divergence


def test_top_k_kl_hand_computed():
    """One position, vocabulary of 4, k = 2, T = 1: p = (.5, .3, .15, .05), q = (.25, .25, .25, .25)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    teacher = p.log().view(1, 1, 4)
    student = torch.zeros(1, 1, 4)
    mask = torch.ones(1, 1, dtype=torch.bool)
    targets = sparse_targets_from_logits(teacher[mask], 1.0, 2)
    assert targets.indices.tolist() == [[0, 1]]
    assert targets.tail_log_prob.item() == pytest.approx(math.log(0.2), rel=1e-6)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    got = kl_divergence_topk(targets, student, mask, 1.0).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # at T = 2 the result is scaled by T^2 and computed on the softened distributions
    t2 = sparse_targets_from_logits(teacher[mask], 2.0, 2)
    p2 = torch.softmax(p.log() / 2, -1)
    expected2 = 4 * (p2[0] * (p2[0] / 0.25).log() + p2[1] * (p2[1] / 0.25).log()
                     + (p2[2] + p2[3]) * ((p2[2] + p2[3]) / 0.5).log()).item()
    assert kl_divergence_topk(t2, student, mask, 2.0).item() == pytest.approx(expected2, rel=1e-5)


def test_distillation_loss_takes_cached_targets_and_all_padding_is_zero():
    teacher, student, labels = _batch(seed=2)
    mask = labels != -100
    w = LossWeights(ce=0.3, kd=0.7, self_kd=0.0, feature=0.0)
    live, parts_live = distillation_loss(student, teacher, None, labels, w, 2.0)
    cached, parts = distillation_loss(student, sparse_targets_from_logits(teacher[mask], 2.0, 11), None, labels,
                                      w, 2.0)
    assert cached.item() == pytest.approx(live.item(), rel=1e-5) and parts["kl"] == pytest.approx(parts_live["kl"],
                                                                                                 rel=1e-5)
    empty = torch.full_like(labels, -100)
    s = student.clone().requires_grad_(True)
    none = SparseTargets(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0))
    out = kl_divergence_topk(none, s, empty != -100, 2.0)
    out.backward()
    assert out.item() == 0 and torch.count_nonzero(s.grad) == 0


def test_row_count_mismatch_is_a_clear_error():
    teacher, student, labels = _batch()
    mask = labels != -100
    targets = sparse_targets_from_logits(teacher[mask][:-1], 2.0, 3)
    with pytest.raises(ValueError, match="the label sequences changed"):
        kl_divergence_topk(targets, student, mask, 2.0)


def _sequences(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 9))
        inputs = [int(t) for t in rng.integers(0, 50, length)]
        out.append((inputs, [-100] + inputs[1:]))  # the first target is forced: not predicted
    return out


def _fake_teacher(sequences, v: int = 50):
    def logits(rows):  # deterministic per (example, position): the cache must keep each example's own rows
        parts = [torch.stack([torch.sin(torch.arange(v) * (r + 1) + i) for i, t in enumerate(sequences[r][1])
                              if t != -100]) for r in rows]
        return torch.cat(parts) * 4
    return logits


def test_store_round_trip_and_batch_order(tmp_path):
    seqs = _sequences(37)
    store = TeacherTargetCache(tmp_path / "t", seqs, k=5)
    assert store.fill(_fake_teacher(seqs), 2.0) == 37 and store.complete
    fake = _fake_teacher(seqs)
    order = [30, 2, 17]
    got = store.rows(order)
    want = sparse_targets_from_logits(fake(order), 2.0, 5)
    assert torch.equal(got.indices, want.indices)
    assert torch.allclose(got.log_probs, want.log_probs) and torch.allclose(got.tail_log_prob, want.tail_log_prob)
    assert TeacherTargetCache(tmp_path / "t", seqs, k=5).fill(fake, 2.0) == 0  # complete: nothing recomputed


def test_interrupted_fill_resumes_to_the_same_store(tmp_path):
    seqs = _sequences(40, seed=3)
    fake = _fake_teacher(seqs)
    TeacherTargetCache(tmp_path / "ref", seqs, k=4).fill(fake, 2.0)
    calls = {"n": 0}

    def dies_on_the_second_chunk(rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return fake(rows)

    run = TeacherTargetCache(tmp_path / "run", seqs, k=4)
    with pytest.raises(KeyboardInterrupt):
        run.fill(dies_on_the_second_chunk, 2.0)
    assert 0 < run.done_examples() < 40
    assert run.fill(fake, 2.0) == 40 - 16  # only the missing chunks
    for name in ("indices.i32", "log_probs.f32", "tail.f32"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name


def test_key_changes_with_sequences_temperature_and_k():
    seqs = _sequences(5)
    base = targets_key("teacher", 10, seqs, 2.0, 64)
    assert base == targets_key("teacher", 10, seqs, 2.0, 64)
    other = [(i, t) for i, t in seqs]
    other[2] = (other[2][0], [-100] * len(other[2][1]))
    assert len({base, targets_key("teacher", 10, other, 2.0, 64), targets_key("teacher", 10, seqs, 1.0, 64),
                targets_key("teacher", 10, seqs, 2.0, 32), targets_key("teacher", 30, seqs, 2.0, 64),
                targets_key("other", 10, seqs, 2.0, 64)}) == 6
