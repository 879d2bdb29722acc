"""Self-teachers of ASKD stage B (the ASKD / FastWhisper papers): what the student learns from once the teacher weight decays.

``ema`` (:class:`EmaTeacher`, an exponential moving average of the student), ``snapshot`` (:func:`snapshot_teacher`,
a frozen copy taken at the phase change) or ``previous_epoch`` (:class:`PreviousEpochTargets`, the student's own
top-k logits of the previous epoch). The loss they feed is ``beta(t) * KD(p_S~ || p_S)`` in
:func:`components.train.losses.distillation_loss`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from components.train.losses import IGNORE_INDEX

DEFAULT_TOP_K = 32
DENSE_FILL_GAP_LOGITS = 1e4  # PreviousEpochTargets: non-top-k logits sit this far below the k-th (prob -> 0)


def _frozen_copy(student: nn.Module) -> nn.Module:
    """Deep copy of ``student`` whose frozen parameters are *shared* (not copied); all grads off, eval mode."""
    memo = {id(p): p for p in student.parameters() if not p.requires_grad}
    twin = copy.deepcopy(student, memo)
    twin.requires_grad_(False)
    return twin.eval()


class FrozenTeacher:
    """A self-teacher: a frozen copy (``.model``) of the student; ``teacher(**inputs)`` runs it without a graph.

    Parameters the student does not train (a frozen encoder) are shared with the student, not copied.
    ``state_dict()`` holds only the copies of the student's trainable tensors (checkpoint it; restore with
    ``load_state_dict`` on a teacher rebuilt from the same student).
    """

    def __init__(self, student: nn.Module):
        self.names = [n for n, p in student.named_parameters() if p.requires_grad]
        self.model = _frozen_copy(student)

    def _params(self) -> dict[str, torch.Tensor]:
        own = dict(self.model.named_parameters())
        return {n: own[n] for n in self.names}

    @torch.no_grad()
    def __call__(self, **model_inputs):
        """``self.model(**model_inputs)`` under no_grad (pass ``encoder_outputs=`` when encoder outputs are cached)."""
        return self.model(**model_inputs)

    def state_dict(self) -> dict[str, Any]:
        return {"params": {n: p.detach().clone() for n, p in self._params().items()}}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        params = self._params()
        if strict and set(state["params"]) != set(params):
            raise ValueError("self-teacher state does not match the student's trainable parameters")
        with torch.no_grad():
            for n, value in state["params"].items():
                if n in params:
                    params[n].copy_(value)


def snapshot_teacher(student: nn.Module) -> FrozenTeacher:
    """Born-again self-teacher: a frozen copy of the student as it is now (take it at the phase change).

    Later student updates do not reach it (its trainable tensors are copies).
    """
    return FrozenTeacher(student)


class EmaTeacher(FrozenTeacher):
    """Mean-teacher self-teacher: theta_ema <- d * theta_ema + (1 - d) * theta_student on every ``update``."""

    def __init__(self, student: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        super().__init__(student)
        self.decay = float(decay)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        live = dict(student.named_parameters())
        for n, p in self._params().items():
            p.mul_(self.decay).add_(live[n].detach().to(p.dtype), alpha=1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        super().load_state_dict(state, strict=strict)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])


class PreviousEpochTargets:
    """PS-KD-style self-teacher: the student's own top-k predictions for each clip from the previous epoch.

    ``record`` keeps, per clip id, the label tokens at the label positions and the top-k raw student logits there
    (with their vocabulary ids; detached, float32, CPU). ``next_epoch`` turns this epoch's records into the
    targets. ``logits_for`` returns dense logits that approximate the recorded distribution by its top-k:
    every other vocabulary entry gets ``min(top-k) - DENSE_FILL_GAP_LOGITS``, so after ``softmax(z / T)``
    (T <= 50, so gap / T >= 200) its probability underflows to exactly 0 in float32 and

        q~_i(v) = exp(z_v / T) / sum_{u in topk_i} exp(z_u / T)  for v in topk_i, else 0,

    i.e. the top-k renormalised; the tail mass outside the top-k (small for a trained model) is dropped.
    Positions of clips without a record, or whose label tokens changed since (random timestamps / prompts),
    are marked invalid in the returned mask and are left out of the self-KD term.
    """

    def __init__(self, k: int = DEFAULT_TOP_K):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.vocab_size: int | None = None
        self.previous: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.current: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def record(self, clip_ids: list[str], student_logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Remember this batch's predictions (call with the training forward's logits, [B, L, V])."""
        self.vocab_size = int(student_logits.shape[-1])
        k = min(self.k, self.vocab_size)
        for row, clip in enumerate(clip_ids):
            mask = labels[row] != IGNORE_INDEX
            values, ids = student_logits[row][mask].detach().float().topk(k, dim=-1)
            self.current[str(clip)] = (labels[row][mask].detach().cpu(), ids.cpu(), values.cpu())

    def next_epoch(self) -> None:
        """This epoch's records become the targets; the older ones are dropped."""
        self.previous, self.current = self.current, {}

    @torch.no_grad()
    def logits_for(self, clip_ids: list[str], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dense_logits [B, L, V] float32, valid [B, L] bool)`` aligned with ``labels`` (see class doc).

        Pass the pair as ``self_logits`` to :func:`distillation_loss`. Before any ``record`` it raises
        ``ValueError`` (the vocabulary size is unknown).
        """
        if self.vocab_size is None:
            raise ValueError("PreviousEpochTargets.logits_for before any record(): nothing to distil from")
        b, length = labels.shape
        dense = torch.zeros(b, length, self.vocab_size)
        valid = torch.zeros(b, length, dtype=torch.bool)
        for row, clip in enumerate(clip_ids):
            entry = self.previous.get(str(clip))
            mask = (labels[row] != IGNORE_INDEX).cpu()
            if entry is None or not torch.equal(entry[0], labels[row][mask].cpu()):
                continue
            _, ids, values = entry
            fill = (values.min(dim=-1, keepdim=True).values - DENSE_FILL_GAP_LOGITS).expand(-1, self.vocab_size)
            dense[row, mask] = fill.scatter(-1, ids, values)
            valid[row, mask] = True
        return dense.to(labels.device), valid.to(labels.device)

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "vocab_size": self.vocab_size, "previous": dict(self.previous),
                "current": dict(self.current)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = int(state["k"])
        self.vocab_size = state["vocab_size"]
        self.previous = dict(state["previous"])
        self.current = dict(state["current"])
