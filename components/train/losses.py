"""ASKD losses and schedules (ASKD, Distil-Whisper and Whisper-KDQ losses). Pure torch.

Self-teachers of stage B: :mod:`components.train.self_teacher`; KDQ fake quantisation: :mod:`components.train.fake_quant`.

Total loss for one batch (``AskdSchedule``)::

    L = w_ce * CE  +  alpha(t) * KD(p_T || p_S)  +  beta(t) * KD(p_S~ || p_S)  +  w_f * MSE(h_S, h_T)
    w_ce = ce_weight, or 1 - alpha(t) - beta(t) when ce_weight is None

    CE            = -(1/N) sum_i log p_S,i(y_i)                                 (N = non-pad label tokens)
    KD(q || p)    = T^2 (1/N) sum_i sum_v q_i^T(v) (log q_i^T(v) - log p_i^T(v)),   x^T = softmax(logits / T)
    MSE(h_S, h_T) = (1/|M|) sum_{(s,t) in M} (1/(N d)) sum_i ||h_S,s,i - h_T,t,i||^2

KD is Distil-Whisper's form (temperature on both sides, summed over the vocabulary, token mean, times T^2).
Logits at position i predict ``labels[:, i]`` (transformers' Whisper layout); ``labels == -100`` is padding.

All-padding batch (N = 0): every term returns an exact 0 that is still connected to the student's graph
(``backward`` works and gives zero gradients), and ``distillation_loss`` reports ``n_tokens = 0`` so the loop can
skip the step. Nothing divides by zero, so no NaN is produced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from components.settings import AskdSchedule

IGNORE_INDEX = -100
EXP_SCHEDULE_FLOOR = 1e-4  # geometric interpolation needs > 0 ends; 0 is replaced by this (reached exactly at the end)
SCHEDULE_EPS_STEPS = 1e-9  # tolerance when comparing a step with a fractional boundary (in steps)


# ---------------------------------------------------------------------------------------------
# schedules


@dataclass(frozen=True)
class LossWeights:
    ce: float
    kd: float
    self_kd: float
    feature: float


def _progress(step: int, max_steps: int, fraction: float) -> float:
    """Share of the decay phase done at ``step``: min(step / (fraction * max_steps), 1)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(step / (fraction * max_steps), 1.0)


def alpha_at(step: int, max_steps: int, sched: AskdSchedule) -> float:
    """Teacher weight alpha at optimiser ``step`` (a0 = alpha_start, a1 = alpha_end, p = progress in [0, 1]).

    p = min(step / (decay_fraction * max_steps), 1); after the decay phase alpha stays at a1.
      constant:     a0
      linear:       a0 + (a1 - a0) p
      cosine:       a1 + (a0 - a1) (1 + cos(pi p)) / 2
      exponential:  a0' (a1' / a0')^p with x' = max(x, 1e-4); p = 0 gives a0 and p = 1 gives a1 exactly
      step:         K = ceil(decay_fraction / step_every_fraction) equal drops of (a0 - a1) / K, at
                    k * step_every_fraction * max_steps (k < K) and the last at decay_fraction * max_steps
    """
    a0, a1 = sched.alpha_start, sched.alpha_end
    p = _progress(step, max_steps, sched.decay_fraction)
    kind = sched.alpha_schedule
    if kind == "constant":
        return float(a0)
    if p >= 1.0:
        return float(a1)
    if kind == "linear":
        return a0 + (a1 - a0) * p
    if kind == "cosine":
        return a1 + (a0 - a1) * 0.5 * (1.0 + math.cos(math.pi * p))
    if kind == "exponential":
        if p <= 0.0:
            return float(a0)
        lo, hi = max(a0, EXP_SCHEDULE_FLOOR), max(a1, EXP_SCHEDULE_FLOOR)
        return lo * (hi / lo) ** p
    if kind == "step":
        n_drops = max(1, math.ceil(sched.decay_fraction / sched.step_every_fraction - 1e-9))
        every, last = sched.step_every_fraction, sched.decay_fraction
        boundaries = [min(k * every, last) * max_steps for k in range(1, n_drops + 1)]
        done = sum(step + SCHEDULE_EPS_STEPS >= b for b in boundaries)
        return a0 - (a0 - a1) * done / n_drops
    raise ValueError(f"unknown alpha_schedule {kind!r}")


def beta_at(step: int, max_steps: int, sched: AskdSchedule) -> float:
    """Self-teacher weight: 0 before ``self_kd_start_fraction * max_steps`` (or with no self-teacher), else
    ``self_kd_weight`` (stage B)."""
    _progress(step, max_steps, 1.0)  # argument checks
    if sched.self_teacher == "none":
        return 0.0
    if step + SCHEDULE_EPS_STEPS < sched.self_kd_start_fraction * max_steps:
        return 0.0
    return float(sched.self_kd_weight)


def loss_weights(step: int, max_steps: int, sched: AskdSchedule) -> LossWeights:
    """All four weights at ``step``; ``ce = ce_weight`` or ``max(0, 1 - alpha - beta)``."""
    alpha, beta = alpha_at(step, max_steps, sched), beta_at(step, max_steps, sched)
    ce = sched.ce_weight if sched.ce_weight is not None else max(0.0, 1.0 - alpha - beta)
    return LossWeights(ce=float(ce), kd=float(alpha), self_kd=float(beta), feature=float(sched.feature_weight))


# ---------------------------------------------------------------------------------------------
# loss terms


def _zero_like(t: torch.Tensor) -> torch.Tensor:
    """An exact 0 that keeps ``t``'s graph (for all-padding batches)."""
    return t.sum() * 0.0


def _label_rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t[mask]`` ([N, V]); a view, not a copy, when every position is a label (``label_logits`` batches)."""
    return t.reshape(-1, t.shape[-1]) if bool(mask.all()) else t[mask]


def cross_entropy(
    student_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Token-mean CE over ``labels != ignore_index``; logits [B, L, V], labels [B, L]. All padding -> 0."""
    mask = labels != ignore_index
    if not bool(mask.any()):
        return _zero_like(student_logits)
    return F.cross_entropy(_label_rows(student_logits, mask).float(), labels[mask], reduction="mean")


def kl_divergence(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * mean over ``labels_mask`` positions of sum_v p_T^T (log p_T^T - log p_S^T) (teacher detached).

    Computed in float32 with ``log_target`` (exact where p_T underflows to 0). All padding -> 0.
    """
    mask = labels_mask.bool()
    if not bool(mask.any()):
        return _zero_like(student_logits)
    log_p_s = F.log_softmax(_label_rows(student_logits, mask).float() / temperature, dim=-1)
    log_p_t = F.log_softmax(_label_rows(teacher_logits, mask).detach().float() / temperature, dim=-1)
    per_token = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    return per_token.mean() * temperature**2


def feature_loss(
    student_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    mapping: dict[int, int],
    labels_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over mapped layer pairs of the MSE between decoder hidden states at label positions.

    ``*_hidden`` are transformers' ``decoder_hidden_states``: entry 0 is the embedding output, entry ``i + 1``
    the output of layer ``i`` (the last entry has the final layer norm applied). ``mapping`` is
    ``{student_layer: teacher_layer}`` (0-based, as in ``init_student``'s report), compared as
    ``student_hidden[s + 1]`` vs ``teacher_hidden[t + 1]`` (teacher detached); widths must match.
    """
    if not mapping:
        raise ValueError("feature_loss needs a non-empty {student_layer: teacher_layer} mapping")
    terms = []
    for s, t in sorted((int(a), int(b)) for a, b in mapping.items()):
        hs, ht = student_hidden[s + 1], teacher_hidden[t + 1].detach()
        if hs.shape[-1] != ht.shape[-1]:
            raise ValueError(f"hidden widths differ (student {hs.shape[-1]}, teacher {ht.shape[-1]}): add an adapter")
        if labels_mask is not None:
            mask = labels_mask.bool()
            if not bool(mask.any()):
                return _zero_like(hs)
            hs, ht = hs[mask], ht[mask]
        terms.append(F.mse_loss(hs.float(), ht.float(), reduction="mean"))
    return torch.stack(terms).mean()


def distillation_loss(
    student_out: Any,
    teacher_logits: torch.Tensor | None,
    self_logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
    labels: torch.Tensor,
    weights: LossWeights,
    temperature: float,
    teacher_hidden: tuple[torch.Tensor, ...] | None = None,
    mapping: dict[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``total = w.ce CE + w.kd KD(T) + w.self_kd KD(self) + w.feature MSE`` and the parts as floats.

    ``student_out`` is a model output (``.logits``, and ``.decoder_hidden_states`` for the feature term: run the
    student with ``output_hidden_states=True``) or a logits tensor. Terms with weight 0 are not computed (their
    part is 0.0); CE is always computed and reported. A term with weight > 0 and no input raises ``ValueError``.
    ``self_logits`` may be a ``(logits, valid_mask)`` pair (``PreviousEpochTargets.logits_for``): the self-KD
    term then averages over label positions that are also valid (0 if there are none).
    ``parts`` = ``{"ce", "kl", "self_kd", "feature", "total", "self_kd_share", "n_tokens"}``; ``self_kd_share`` is
    the weighted self-teacher term's share of the total, ``w.self_kd * KD(self) / total`` (0 outside stage B).
    """
    logits = student_out if isinstance(student_out, torch.Tensor) else student_out.logits
    mask = labels != IGNORE_INDEX
    parts = {"ce": 0.0, "kl": 0.0, "self_kd": 0.0, "feature": 0.0}
    ce = cross_entropy(logits, labels)
    total = weights.ce * ce
    parts["ce"] = float(ce.detach())
    if weights.kd > 0:
        if teacher_logits is None:
            raise ValueError("kd weight > 0 but no teacher_logits were given")
        kl = kl_divergence(teacher_logits, logits, mask, temperature)
        total = total + weights.kd * kl
        parts["kl"] = float(kl.detach())
    if weights.self_kd > 0:
        if self_logits is None:
            raise ValueError("self_kd weight > 0 but no self-teacher logits were given")
        self_mask = mask
        if isinstance(self_logits, tuple):  # (logits, valid) from PreviousEpochTargets.logits_for
            self_logits, valid = self_logits
            self_mask = mask & valid.bool()
        skd = kl_divergence(self_logits, logits, self_mask, temperature)
        total = total + weights.self_kd * skd
        parts["self_kd"] = float(skd.detach())
    if weights.feature > 0:
        student_hidden = getattr(student_out, "decoder_hidden_states", None)
        if student_hidden is None or teacher_hidden is None or not mapping:
            raise ValueError("feature weight > 0 needs student and teacher decoder_hidden_states and a mapping")
        feat = feature_loss(student_hidden, teacher_hidden, mapping, mask)
        total = total + weights.feature * feat
        parts["feature"] = float(feat.detach())
    parts["total"] = float(total.detach())
    parts["self_kd_share"] = weights.self_kd * parts["self_kd"] / parts["total"] if parts["total"] > 0 else 0.0
    parts["n_tokens"] = int(mask.sum())
    return total, parts


def stage_b_summary(step_log: list[dict[str, Any]], share_floor: float = 0.1) -> dict[str, Any]:
    """How much the self-teacher's term weighed in stage B (the logged steps with beta > 0): its mean and median
    share of the loss, the share of those steps where it was at least ``share_floor``, and its last KL value."""
    rows = [r for r in step_log if (r.get("beta") or 0) > 0 and r.get("self_kd_share") is not None]
    if not rows:
        return {"steps": 0}
    shares = sorted(float(r["self_kd_share"]) for r in rows)
    return {"steps": len(rows), "mean_self_kd_share": round(sum(shares) / len(shares), 4),
            "median_self_kd_share": round(shares[len(shares) // 2], 4),
            f"steps_with_share_ge_{share_floor:g}": round(sum(x >= share_floor for x in shares) / len(shares), 4),
            "last_self_kd": round(float(rows[-1]["self_kd"]), 6)}
