"""ASKD schedules, loss terms against hand-computed values, self-teachers and fake quantisation (tiny tensors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from components.settings import AskdSchedule
from components.train.fake_quant import fake_quantize_linears, remove_fake_quant
from components.train.losses import (
    LossWeights,
    alpha_at,
    beta_at,
    cross_entropy,
    distillation_loss,
    feature_loss,
    kl_divergence,
    loss_weights,
)
from components.train.self_teacher import EmaTeacher, PreviousEpochTargets, snapshot_teacher

MAX_STEPS = 100


def sched(**kw) -> AskdSchedule:
    base = {"alpha_start": 0.9, "alpha_end": 0.1, "decay_fraction": 0.7, "self_kd_weight": 0.0}
    return AskdSchedule(**{**base, **kw})


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        ("constant", {}, {0: 0.9, 35: 0.9, 70: 0.9, 99: 0.9}),
        ("linear", {}, {0: 0.9, 35: 0.5, 70: 0.1, 100: 0.1}),
        ("cosine", {}, {0: 0.9, 35: 0.5, 70: 0.1, 90: 0.1}),
        # geometric: 0.9 * (0.1 / 0.9) ** 0.5 = 0.3 at the middle
        ("exponential", {}, {0: 0.9, 35: 0.3, 70: 0.1, 80: 0.1}),
        # 3 drops of 0.8 / 3 at steps 25, 50 and 70
        ("step", {}, {0: 0.9, 24: 0.9, 25: 0.9 - 0.8 / 3, 49: 0.9 - 0.8 / 3, 50: 0.9 - 1.6 / 3, 69: 0.9 - 1.6 / 3,
                      70: 0.1, 99: 0.1}),
        ("step", {"decay_fraction": 0.5, "step_every_fraction": 0.25}, {24: 0.9, 25: 0.5, 50: 0.1}),
    ],
)
def test_alpha_schedules(kind, extra, expected):
    s = sched(alpha_schedule=kind, self_teacher="none", **extra)
    for step, value in expected.items():
        assert alpha_at(step, MAX_STEPS, s) == pytest.approx(value, abs=1e-12), (kind, step)


def test_cosine_quarter_and_exponential_to_zero():
    cos = sched(alpha_schedule="cosine", self_teacher="none")
    assert alpha_at(17.5, MAX_STEPS, cos) == pytest.approx(0.1 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)
    exp0 = sched(alpha_schedule="exponential", alpha_start=0.8, alpha_end=0.0, self_teacher="none")
    assert alpha_at(35, MAX_STEPS, exp0) == pytest.approx(math.sqrt(0.8 * 1e-4))
    assert alpha_at(70, MAX_STEPS, exp0) == 0.0
    with pytest.raises(ValueError):
        alpha_at(-1, MAX_STEPS, exp0)
    with pytest.raises(ValueError):
        alpha_at(0, 0, exp0)


def test_beta_switches_at_phase_change_and_weights():
    s = sched(self_teacher="ema", self_kd_weight=0.5, self_kd_start_fraction=0.7)
    assert [beta_at(t, MAX_STEPS, s) for t in (0, 69, 70, 99)] == [0.0, 0.0, 0.5, 0.5]
    assert beta_at(80, MAX_STEPS, s.model_copy(update={"self_teacher": "none"})) == 0.0
    w = loss_weights(35, MAX_STEPS, s)
    assert (w.kd, w.self_kd, w.feature) == (pytest.approx(0.5), 0.0, 0.0) and w.ce == pytest.approx(0.5)
    w = loss_weights(80, MAX_STEPS, s)
    assert (w.kd, w.self_kd) == (pytest.approx(0.1), 0.5) and w.ce == pytest.approx(0.4)
    fixed = sched(alpha_schedule="constant", alpha_start=1.0, alpha_end=1.0, self_teacher="none", ce_weight=0.8)
    assert loss_weights(50, MAX_STEPS, fixed) == LossWeights(ce=0.8, kd=1.0, self_kd=0.0, feature=0.0)


# ---------------------------------------------------------------------------------------------
# loss values on 1 batch x 2 positions x vocab 3 (second position is padding)

S_LOGITS = [[1.0, 2.0, 0.5], [0.3, 0.1, 0.2]]
T_LOGITS = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]
LABELS = [[1, -100]]


def _softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def _tensors():
    s = torch.tensor([S_LOGITS], requires_grad=True)
    t = torch.tensor([T_LOGITS])
    return s, t, torch.tensor(LABELS)


def test_cross_entropy_and_kl_match_hand_values():
    s, t, labels = _tensors()
    ce_hand = -math.log(_softmax(S_LOGITS[0])[1])
    assert cross_entropy(s, labels).item() == pytest.approx(ce_hand, rel=1e-6)
    temp = 2.0
    p_t, p_s = _softmax(np.array(T_LOGITS[0]) / temp), _softmax(np.array(S_LOGITS[0]) / temp)
    kl_hand = temp**2 * float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))
    assert kl_divergence(t, s, labels != -100, temp).item() == pytest.approx(kl_hand, rel=1e-5)
    assert kl_divergence(s.detach(), s, labels != -100, temp).item() == pytest.approx(0.0, abs=1e-7)


def test_weighted_total_skips_zero_terms_and_checks_inputs():
    s, t, labels = _tensors()
    temp = 2.0
    ce_hand = -math.log(_softmax(S_LOGITS[0])[1])
    p_t, p_s = _softmax(np.array(T_LOGITS[0]) / temp), _softmax(np.array(S_LOGITS[0]) / temp)
    kl_hand = temp**2 * float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))
    w = LossWeights(ce=0.3, kd=0.7, self_kd=0.0, feature=0.0)
    total, parts = distillation_loss(s, t, None, labels, w, temp)
    assert total.item() == pytest.approx(0.3 * ce_hand + 0.7 * kl_hand, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce_hand, rel=1e-6) and parts["kl"] == pytest.approx(kl_hand, rel=1e-5)
    assert parts["self_kd"] == 0.0 and parts["feature"] == 0.0 and parts["n_tokens"] == 1
    total.backward()
    assert s.grad is not None and torch.all(s.grad[0, 1] == 0)  # padding gets no gradient
    # self-KD with the teacher as self-teacher doubles the KL part
    total2, parts2 = distillation_loss(s, t, t, labels, LossWeights(0.0, 0.5, 0.5, 0.0), temp)
    assert total2.item() == pytest.approx(kl_hand, rel=1e-5) and parts2["ce"] == pytest.approx(ce_hand, rel=1e-6)
    assert parts2["self_kd_share"] == pytest.approx(0.5) and parts["self_kd_share"] == 0.0  # half of the loss
    # zero-weight terms are not computed: missing inputs are fine, present-but-needed ones are not
    distillation_loss(s, None, None, labels, LossWeights(1.0, 0.0, 0.0, 0.0), temp)
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(s, None, None, labels, LossWeights(0.5, 0.5, 0.0, 0.0), temp)
    with pytest.raises(ValueError, match="self-teacher"):
        distillation_loss(s, t, None, labels, LossWeights(0.5, 0.0, 0.5, 0.0), temp)


def test_feature_loss_masked_mse():
    torch.manual_seed(0)
    student_h = tuple(torch.randn(1, 2, 4) for _ in range(3))  # embeddings + 2 layers
    teacher_h = tuple(torch.randn(1, 2, 4) for _ in range(5))  # embeddings + 4 layers
    mask = torch.tensor([[True, False]])
    mapping = {0: 0, 1: 3}
    hand = np.mean([((student_h[s + 1][0, 0] - teacher_h[t + 1][0, 0]) ** 2).mean().item() for s, t in mapping.items()])
    assert float(feature_loss(student_h, teacher_h, mapping, mask)) == pytest.approx(hand, rel=1e-6)

    class Out:
        logits = torch.tensor([S_LOGITS])
        decoder_hidden_states = student_h

    total, parts = distillation_loss(Out(), None, None, torch.tensor(LABELS), LossWeights(0.0, 0.0, 0.0, 2.0),
                                     1.0, teacher_hidden=teacher_h, mapping=mapping)
    assert float(total) == pytest.approx(2 * hand, rel=1e-6) and parts["feature"] == pytest.approx(hand, rel=1e-6)
    with pytest.raises(ValueError, match="widths"):
        feature_loss(student_h, tuple(torch.randn(1, 2, 8) for _ in range(5)), mapping)


def test_all_padding_batch_gives_zero_not_nan():
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5)
    labels = torch.full((2, 3), -100)
    w = LossWeights(0.5, 0.5, 0.0, 0.0)
    total, parts = distillation_loss(s, t, None, labels, w, 2.0)
    assert total.item() == 0.0 and parts["n_tokens"] == 0 and parts["ce"] == 0.0 and parts["kl"] == 0.0
    total.backward()
    assert torch.all(s.grad == 0)


# ---------------------------------------------------------------------------------------------
# self-teachers


class Scalar(nn.Module):
    """y = w * x with one trainable weight and one frozen bias."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w]))
        self.b = nn.Parameter(torch.tensor([0.5]), requires_grad=False)

    def forward(self, x):
        return self.w * x + self.b


def test_ema_update_math_and_checkpoint():
    student = Scalar(1.0)
    ema = EmaTeacher(student, decay=0.9)
    with torch.no_grad():
        student.w.fill_(2.0)
    ema.update(student)  # 0.9 * 1 + 0.1 * 2
    assert ema.model.w.item() == pytest.approx(1.1)
    with torch.no_grad():
        student.w.fill_(3.0)
    ema.update(student)  # 0.9 * 1.1 + 0.1 * 3
    assert ema.model.w.item() == pytest.approx(1.29)
    assert ema.model.b is student.b  # frozen parameters are shared, not copied
    assert not ema.model.w.requires_grad and float(ema(x=torch.tensor([2.0]))) == pytest.approx(1.29 * 2 + 0.5)
    state = ema.state_dict()
    fresh = EmaTeacher(Scalar(0.0), decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.model.w.item() == pytest.approx(1.29) and fresh.decay == 0.9 and fresh.num_updates == 2


def test_snapshot_is_frozen_and_independent():
    student = Scalar(1.0)
    snap = snapshot_teacher(student)
    with torch.no_grad():
        student.w.fill_(5.0)
    assert snap.model.w.item() == 1.0 and not snap.model.w.requires_grad and not snap.model.training
    out = snap(x=torch.tensor([1.0]))
    assert not out.requires_grad and float(out) == pytest.approx(1.5)
    other = snapshot_teacher(student)
    other.load_state_dict(snap.state_dict())
    assert other.model.w.item() == 1.0


def test_previous_epoch_targets_store_return_and_kl():
    store = PreviousEpochTargets(k=2)
    logits = torch.tensor([[[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, -100]])
    store.record(["clip-a"], logits, labels)
    dense, valid = store.logits_for(["clip-a"], labels)
    assert not valid.any()  # nothing from a previous epoch yet
    store.next_epoch()
    dense, valid = store.logits_for(["clip-a", "clip-b"], torch.tensor([[0, -100], [1, -100]]))
    assert valid.tolist() == [[True, False], [False, False]]
    q = torch.softmax(dense[0, 0] / 2.0, dim=-1)
    top2 = _softmax(np.array([3.0, 1.0]) / 2.0)
    assert q.tolist()[:2] == pytest.approx(top2.tolist(), rel=1e-6) and q[2:].tolist() == [0.0, 0.0]
    # changed label tokens -> no target
    _, valid = store.logits_for(["clip-a"], torch.tensor([[2, -100]]))
    assert not valid.any()
    # KL against the renormalised top-2, only at valid positions
    student = torch.tensor([[[0.5, 0.2, 0.1, 0.0], [1.0, 1.0, 1.0, 1.0]]], requires_grad=True)
    pair = store.logits_for(["clip-a"], labels)
    total, parts = distillation_loss(student, None, pair, labels, LossWeights(0.0, 0.0, 1.0, 0.0), 2.0)
    p_s = _softmax(np.array([0.5, 0.2, 0.1, 0.0]) / 2.0)
    hand = 4.0 * float(np.sum(top2 * (np.log(top2) - np.log(p_s[:2]))))
    assert total.item() == pytest.approx(hand, rel=1e-5) and parts["self_kd"] == pytest.approx(hand, rel=1e-5)
    restored = PreviousEpochTargets()
    restored.load_state_dict(store.state_dict())
    assert torch.equal(restored.logits_for(["clip-a"], labels)[0], pair[0])


# ---------------------------------------------------------------------------------------------
# fake quantisation


class TinyDecoderModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.decoder = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        self.model.encoder = nn.Linear(8, 8)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_levels_straight_through_and_removal(bits):
    torch.manual_seed(0)
    model = TinyDecoderModel()
    original = model.model.decoder[0].weight.detach().clone()
    names = fake_quantize_linears(model, bits)
    assert names == ["model.decoder.0", "model.decoder.2"]
    w_q = model.model.decoder[0].weight
    assert len(torch.unique(w_q)) <= 2**bits - 1
    step = original.abs().max() / (2 ** (bits - 1) - 1)
    assert torch.max(torch.abs(w_q - original)) <= step / 2 + 1e-6
    assert isinstance(model.model.encoder.weight, nn.Parameter)  # encoder untouched
    x = torch.randn(3, 8)
    model.model.decoder(x).sum().backward()
    raw = model.model.decoder[0].parametrizations.weight.original
    # straight-through: d sum(W_q x) / dW = the same as for an unquantised weight (upstream grad x input)
    h_grad = (model.model.decoder[2].weight.detach().sum(0)).expand(3, 8) * (model.model.decoder[0](x) > 0)
    assert torch.allclose(raw.grad, h_grad.T @ x, atol=1e-5)
    assert remove_fake_quant(model) == 2
    assert torch.equal(model.model.decoder[0].weight, original)


def test_on_a_real_whisper_student(tiny_whisper_dir):
    """All four terms on transformers' outputs, an EMA and a snapshot of a fake-quantised Whisper, then export."""
    from components.whisper_io import load_whisper

    student, _ = load_whisper(tiny_whisper_dir)
    teacher, _ = load_whisper(tiny_whisper_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        teacher.model.decoder.layers[0].fc2.weight.add_(torch.randn_like(teacher.model.decoder.layers[0].fc2.weight))
    student.freeze_encoder()
    student.train()
    assert len(fake_quantize_linears(student, 8)) == 10  # q/k/v/out x 2 attentions + fc1 + fc2
    ema, snap = EmaTeacher(student, decay=0.5), snapshot_teacher(student)
    assert ema.model.model.encoder.conv1.weight is student.model.encoder.conv1.weight
    enc = (torch.randn(2, 1500, student.config.d_model),)
    dec_in = torch.tensor([[50257, 50362, 400, 401], [50257, 50362, 402, 50256]])
    labels = torch.tensor([[-100, 400, 401, 50256], [-100, 402, 50256, -100]])
    with torch.no_grad():
        t_out = teacher(encoder_outputs=enc, decoder_input_ids=dec_in, output_hidden_states=True)
    s_out = student(encoder_outputs=enc, decoder_input_ids=dec_in, output_hidden_states=True)
    self_logits = ema(encoder_outputs=enc, decoder_input_ids=dec_in).logits
    total, parts = distillation_loss(s_out, t_out.logits, self_logits, labels, LossWeights(0.4, 0.3, 0.2, 0.1), 2.0,
                                     teacher_hidden=t_out.decoder_hidden_states, mapping={0: 0})
    assert torch.isfinite(total) and parts["n_tokens"] == 5 and parts["self_kd"] == pytest.approx(0.0, abs=1e-6)
    assert all(v > 0 for k, v in parts.items() if k not in ("self_kd", "self_kd_share")), parts
    total.backward()
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    ema.update(student)
    assert snap(encoder_outputs=enc, decoder_input_ids=dec_in).logits.shape == s_out.logits.shape
    name = "model.decoder.layers.0.fc1.parametrizations.weight.original"
    s_w, e_w, n_w = (dict(m.named_parameters())[name] for m in (student, ema.model, snap.model))
    assert torch.allclose(e_w, 0.5 * (n_w + s_w)) and not torch.equal(s_w, n_w)
    assert set(ema.state_dict()["params"]) == {n for n, p in student.named_parameters() if p.requires_grad}
    assert remove_fake_quant(student, keep_quantized=True) == 10
    assert len(torch.unique(student.model.decoder.layers[0].fc1.weight)) <= 255
    assert not any("parametrizations" in k for k in student.state_dict())


def test_stage_b_summary_counts_only_steps_with_a_self_teacher():
    from components.train.losses import stage_b_summary

    log = [{"beta": 0.0, "self_kd_share": 0.0, "self_kd": 0.0}] * 5 + [
        {"beta": 0.2, "self_kd_share": x, "self_kd": x / 10} for x in (0.02, 0.08, 0.12, 0.3)]
    summary = stage_b_summary(log)
    assert summary["steps"] == 4 and summary["mean_self_kd_share"] == pytest.approx(0.13)
    assert summary["steps_with_share_ge_0.1"] == 0.5 and summary["last_self_kd"] == pytest.approx(0.03)
    assert stage_b_summary(log[:5]) == {"steps": 0}
