"""A vocabulary-pruned output layer: the student only scores the tokens it was trained to emit.

Why: at batch 1 on CPU, Whisper's output layer (``proj_out``: 51,864 x 384 for tiny.en, 80 MB of float32 read
per decoding step) costs about as much as the student's three decoder layers (3.5 vs 3.9 ms per step, measured
2026-12-02 on a 2-core Xeon: docs/results/full-run5/benchmarks/decode_breakdown.json). Restricting the output
layer to a subset of its rows leaves the kept tokens' logits unchanged (the same dot products); greedy decoding
only differs where the unrestricted model would have picked a pruned token.

Kept set (:func:`kept_token_ids`): every token of the training labels (the teacher's pseudo-labels the student
learned from), every single-byte token (so any text can still be spelled) and every special and timestamp token.
:class:`PrunedHead` computes logits for the kept rows only and writes them into a full-size logits tensor that
holds ``-inf`` elsewhere, so ``model.generate`` and its logits processors see ordinary token ids. The export kind
``torch_vocab`` (:mod:`components.export`) saves the model as a plain transformers folder plus :data:`VOCAB_FILE`;
plain ``WhisperForConditionalGeneration.from_pretrained`` still loads it (unpruned); our loader applies the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

VOCAB_FILE = "askd_vocab.json"
BYTE_TOKENS = 256  # byte-level BPE: ids 0-255 are the single bytes (GPT-2 / Whisper tokenizers)


class PrunedHead(nn.Module):
    """``proj_out`` restricted to ``keep`` rows; returns full-vocabulary logits (``-inf`` for pruned tokens)."""

    def __init__(self, weight: torch.Tensor, keep: Iterable[int]):
        super().__init__()
        keep_t = torch.as_tensor(sorted(set(int(i) for i in keep)), dtype=torch.long)
        self.vocab_size = int(weight.shape[0])
        if keep_t.numel() == 0 or int(keep_t[0]) < 0 or int(keep_t[-1]) >= self.vocab_size:
            raise ValueError(f"kept token ids must lie in [0, {self.vocab_size}), got {keep_t.numel()} ids")
        self.register_buffer("keep", keep_t, persistent=False)
        self.kept = nn.Linear(weight.shape[1], keep_t.numel(), bias=False)
        with torch.no_grad():
            self.kept.weight.copy_(weight.detach()[keep_t])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = self.kept(hidden)
        logits = scores.new_full((*scores.shape[:-1], self.vocab_size), float("-inf"))
        return logits.index_copy_(-1, self.keep, scores)


def kept_token_ids(tokenizer, texts: Iterable[str], vocab_size: int) -> list[int]:
    """Token ids of ``texts`` (as Whisper decodes them: a leading space) + single bytes + every special token."""
    keep = set(range(BYTE_TOKENS))
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    keep |= set(range(eot, vocab_size))  # <|endoftext|>, <|startoftranscript|>, ..., the timestamp tokens
    for text in texts:
        text = str(text).strip()
        if text:
            keep.update(tokenizer.encode(" " + text, add_special_tokens=False))
    return sorted(i for i in keep if 0 <= i < vocab_size)


def apply_pruned_head(model, keep: Iterable[int]):
    """Replace ``model.proj_out`` by a :class:`PrunedHead` over ``keep`` (in place; returns the model)."""
    model.proj_out = PrunedHead(model.proj_out.weight, keep).to(model.proj_out.weight.device)
    return model


def write_vocab_file(out_dir: Path, keep: list[int], vocab_size: int, source: str) -> dict:
    info = {"kept": len(keep), "vocab_size": int(vocab_size), "source": source, "keep": [int(i) for i in keep]}
    (Path(out_dir) / VOCAB_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")
    return info


def read_vocab_file(path: Path) -> list[int] | None:
    """The kept ids of a folder's :data:`VOCAB_FILE`, or None when the folder has none."""
    file = Path(path) / VOCAB_FILE
    if not file.is_file():
        return None
    info = json.loads(file.read_text(encoding="utf-8"))
    keep = info.get("keep") if isinstance(info, dict) else None
    if not isinstance(keep, list) or not keep:
        raise ValueError(f"{file} has no 'keep' list of token ids")
    return [int(i) for i in keep]
