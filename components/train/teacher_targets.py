"""Cached teacher KD targets: the teacher's k most probable tokens per label position, computed once.

With ``timestamp_probability = 0`` and ``condition_on_prev_probability = 0`` every training sequence is a fixed
function of its example, and the frozen teacher's logits at each predicted position never change during
training; recomputing them every step runs the teacher's decoder (its 51,865-way output layer included) once per
example per epoch for nothing. ``train.kd_top_k = k`` stores, once per example, the teacher's temperature-``T``
log-probabilities of its ``k`` most probable tokens and the log of the remaining mass (one tail bucket), and the
loss uses the sparse KL of Sparse-KD / "top-k logit caching" (``kl_divergence_topk``)::

    K_i    = the teacher's k most probable tokens at position i,  p = softmax(teacher / T),  q = softmax(student / T)
    p_tail = sum_{v not in K_i} p(v),  q_tail = sum_{v not in K_i} q(v)
    KD_k   = T^2 (1/N) sum_i [ sum_{v in K_i} p(v) (log p(v) - log q(v))  +  p_tail (log p_tail - log q_tail) ]

``KD_k`` is the KL between the two distributions with the tail tokens merged into one outcome, so
``KD_k <= KD`` (merging outcomes never increases a KL divergence) and ``KD_k == KD`` when ``k`` is the vocabulary
size. Its gradient matches the teacher on the top-k tokens and on the tail's total mass; inside the tail the
student keeps its own relative probabilities.

Storage (``cache_dir/kd_targets/<key>/``): ragged float32/int32 memmaps with one row per predicted token,
``offsets.npy`` giving each example's first row, filled in chunks with a progress file so an interrupted fill
resumes. ``key`` hashes the teacher (encoder-cache key and window), the exact label sequences, ``T`` and ``k``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from components.train.data import collate, features

IGNORE_INDEX = -100
FILL_CHUNK_EXAMPLES = 16  # examples per teacher forward pass (and between two progress saves)
Q_TAIL_FLOOR = 1e-12  # the student's tail mass 1 - sum_k q(v) is clamped here (k = V, or float cancellation)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SparseTargets:
    """The cached targets of one batch, flattened in the order of ``logits[labels != -100]`` (row-major)."""

    indices: torch.Tensor  # [N, k] int64 token ids
    log_probs: torch.Tensor  # [N, k] float32 teacher log p(v) at temperature T
    tail_log_prob: torch.Tensor  # [N] float32 log of the teacher's mass outside the top k (-inf: none)


def sparse_targets_from_logits(teacher_logits: torch.Tensor, temperature: float, k: int) -> SparseTargets:
    """Top-``k`` temperature log-probabilities and the tail's log-mass of ``teacher_logits`` [N, V]."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    top = log_p.topk(min(k, log_p.shape[-1]), dim=-1)
    tail = log_p.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return SparseTargets(top.indices, top.values, tail)


def kl_divergence_topk(targets: SparseTargets, student_logits: torch.Tensor, labels_mask: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """``KD_k`` of the module docstring: T^2 * token mean of the top-k + tail-bucket KL (teacher side fixed).

    ``student_logits`` [B, L, V] and ``labels_mask`` [B, L]; ``targets`` holds one row per True of the mask.
    All padding -> an exact 0 that keeps the student's graph.
    """
    mask = labels_mask.bool()
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    rows = student_logits[mask] if not bool(mask.all()) else student_logits.reshape(-1, student_logits.shape[-1])
    if rows.shape[0] != targets.indices.shape[0]:
        raise ValueError(f"cached KD targets have {targets.indices.shape[0]} rows for {rows.shape[0]} label tokens "
                         "(the label sequences changed: delete the kd_targets cache)")
    scaled = rows.float() / temperature
    idx = targets.indices.to(rows.device)
    log_p = targets.log_probs.to(rows.device).float()
    # log q on the top k only: x_v / T - logsumexp(x / T); no [N, V] log-softmax is materialised
    log_q_k = scaled.gather(-1, idx) - scaled.logsumexp(-1, keepdim=True)
    q_tail = (1.0 - log_q_k.exp().sum(-1)).clamp_min(Q_TAIL_FLOOR)
    tail = targets.tail_log_prob.to(rows.device).float()
    p_tail = tail.exp()
    safe_tail = torch.where(p_tail > 0, tail, torch.zeros_like(tail))  # p_tail = 0: the term is exactly 0
    per_token = (log_p.exp() * (log_p - log_q_k)).sum(-1) + p_tail * (safe_tail - q_tail.log())
    return per_token.mean() * temperature**2


def targets_key(teacher_key: str, window_s: float, sequences: list[tuple[list[int], list[int]]],
                temperature: float, k: int) -> str:
    digest = hashlib.sha256(json.dumps({"teacher": teacher_key, "window_s": window_s, "T": temperature, "k": k,
                                        "format": FORMAT_VERSION}).encode())
    for inputs, targets in sequences:
        digest.update(np.asarray(inputs, dtype=np.int64).tobytes())
        digest.update(np.asarray(targets, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


class TeacherTargetCache:
    """Ragged on-disk top-k teacher targets, one block of rows per example, filled resumably."""

    def __init__(self, root: Path, sequences: list[tuple[list[int], list[int]]], k: int):
        self.root, self.k = Path(root), int(k)
        counts = [sum(1 for t in tgt if t != IGNORE_INDEX) for _, tgt in sequences]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_examples, self.n_rows = len(sequences), int(self.offsets[-1])
        self.progress_path = self.root / "progress.json"

    def _paths(self) -> dict[str, Path]:
        return {"indices": self.root / "indices.i32", "log_probs": self.root / "log_probs.f32",
                "tail": self.root / "tail.f32"}

    def _maps(self, mode: str) -> dict[str, np.memmap]:
        rows, k = max(1, self.n_rows), self.k
        p = self._paths()
        return {"indices": np.memmap(p["indices"], dtype=np.int32, mode=mode, shape=(rows, k)),
                "log_probs": np.memmap(p["log_probs"], dtype=np.float32, mode=mode, shape=(rows, k)),
                "tail": np.memmap(p["tail"], dtype=np.float32, mode=mode, shape=(rows,))}

    def done_examples(self) -> int:
        if not self.progress_path.is_file() or not all(p.is_file() for p in self._paths().values()):
            return 0
        state = json.loads(self.progress_path.read_text())
        if state.get("rows") != self.n_rows or state.get("k") != self.k:
            return 0
        return int(state["done"])

    @property
    def complete(self) -> bool:
        return self.done_examples() >= self.n_examples

    def fill(self, teacher_logits: Callable[[list[int]], torch.Tensor], temperature: float, progress=None) -> int:
        """Compute missing examples with ``teacher_logits(rows) -> [n_label_tokens_of_rows, V]`` (row-major)."""
        self.root.mkdir(parents=True, exist_ok=True)
        done = self.done_examples()
        maps = self._maps("r+" if done else "w+")
        start = done
        for lo in range(done, self.n_examples, FILL_CHUNK_EXAMPLES):
            rows = list(range(lo, min(lo + FILL_CHUNK_EXAMPLES, self.n_examples)))
            a, b = int(self.offsets[rows[0]]), int(self.offsets[rows[-1] + 1])
            with torch.no_grad():
                sparse = sparse_targets_from_logits(teacher_logits(rows), temperature, self.k)
            if sparse.indices.shape[0] != b - a:
                raise ValueError(f"teacher gave {sparse.indices.shape[0]} label positions for examples "
                                 f"{rows[0]}..{rows[-1]}, expected {b - a}")
            maps["indices"][a:b] = sparse.indices.numpy().astype(np.int32)
            maps["log_probs"][a:b] = sparse.log_probs.numpy()
            maps["tail"][a:b] = sparse.tail_log_prob.numpy()
            for m in maps.values():
                m.flush()
            tmp = self.progress_path.with_name(f".{self.progress_path.name}.tmp")
            tmp.write_text(json.dumps({"done": rows[-1] + 1, "rows": self.n_rows, "k": self.k}))
            os.replace(tmp, self.progress_path)
            if progress is not None:
                progress.update(len(rows))
        del maps
        return self.n_examples - start

    def rows(self, examples: np.ndarray | list[int]) -> SparseTargets:
        """The targets of ``examples`` in that order (the order of ``logits[mask]`` for a collated batch)."""
        maps = self._maps("r")
        spans = [np.arange(self.offsets[e], self.offsets[e + 1]) for e in np.asarray(examples)]
        sel = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        return SparseTargets(torch.from_numpy(np.asarray(maps["indices"][sel], dtype=np.int64)),
                             torch.from_numpy(np.asarray(maps["log_probs"][sel])),
                             torch.from_numpy(np.asarray(maps["tail"][sel])))


def filled_kd_targets(cfg, teacher_key: str, kd_teacher, kd_processor, kd_cache, audios,
                      sequences, pad_id: int, device="cpu") -> TeacherTargetCache:
    """The teacher's top-k KD targets of every training example (``train.kd_top_k``), computed once, resumably."""
    from tqdm import tqdm

    window_s = kd_processor.feature_extractor.chunk_length
    key = targets_key(teacher_key, window_s, sequences, cfg.askd.temperature, cfg.kd_top_k)
    store = TeacherTargetCache(Path(cfg.cache_dir) / "kd_targets" / key, sequences, cfg.kd_top_k)
    if not store.complete:
        def teacher_logits(rows):
            dec_in, targets = collate([sequences[r] for r in rows], pad_id)
            enc = kd_cache.rows(rows) if kd_cache is not None else kd_teacher.get_encoder()(
                features(kd_processor, [audios[r] for r in rows]).to(device)).last_hidden_state
            logits = kd_teacher(encoder_outputs=(enc.to(device),), decoder_input_ids=dec_in.to(device)).logits
            return logits[targets.to(device) != IGNORE_INDEX].cpu()

        with tqdm(total=store.n_examples, initial=store.done_examples(), desc=f"teacher top-{cfg.kd_top_k} targets",
                  unit="example", dynamic_ncols=True) as bar:
            store.fill(teacher_logits, cfg.askd.temperature, bar)
    return store
