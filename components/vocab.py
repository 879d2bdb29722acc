"""A vocabulary-pruned output layer: the student only scores the tokens it was trained to emit.

Why: at batch 1 on CPU, Whisper's output layer (``proj_out``: 51,864 x 384 for tiny.en, 80 MB of float32 read
per decoding step) costs about as much as the student's three decoder layers (3.5 vs 3.9 ms per step, measured
2026-12-02 on a 2-core Xeon with benchmarks/decode_breakdown.py). Restricting the output
layer to a subset of its rows leaves the kept tokens' logits unchanged (the same dot products); greedy decoding
only differs where the unrestricted model would have picked a pruned token.

Kept set (:func:`kept_token_ids`): every token of the training labels (the teacher's pseudo-labels the student
learned from), every single-byte token (so any text can still be spelled) and every special and timestamp token.
:class:`PrunedHead` computes logits for the kept rows only and writes them into a full-size logits tensor that
holds ``-inf`` elsewhere, so ``model.generate`` and its logits processors see ordinary token ids. The export kind
``torch_vocab`` (:mod:`components.export`) saves the model as a plain transformers folder plus :data:`VOCAB_FILE`;
plain ``WhisperForConditionalGeneration.from_pretrained`` still loads it (unpruned); our loader applies the file.

Training to spell with a smaller vocabulary (``train.student.vocab_top_ranks: R``): pruning a model trained on the
full vocabulary derails it wherever it would have emitted a pruned token (docs/evaluation.md, *Pruned vocabulary*). Instead the
student is trained on the kept set ``ids < R`` (+ the special and timestamp tokens): :func:`restricted_tokenizer`
is the same byte-level BPE with only the merges whose pieces and result have ids below ``R`` (byte-level BPE numbers
its tokens in merge order, so this is the canonical BPE of an ``R``-token vocabulary and spells any text), each
teacher label token is spelled with it (:class:`KeptVocabulary`), the teacher's distributions (on its own tokens)
are folded onto the kept set where a teacher token begins, and every loss term sees only the kept columns
(:func:`kept_columns`). The saved student carries :data:`VOCAB_FILE`, so every loader and export uses the kept set.
Measured (2026-12-06, `full` data): re-spelling whole text runs and teacher-forcing the teacher on the re-spelled
labels gave targets that cost validation WER (16 % at step 100 vs 4.4 % for the full-vocabulary student; folding
on top of that made the student loop: 112 %): after a piece that is not its own token the teacher restarts words.
This design: 12.8 % at step 100, 7.7 % at best; test WER 13.96 % vs 9.31 % with the whole vocabulary (docs/decisions.md, tenth
run): with 6,000 training sentences the student does not learn to spell words in pieces. Off by default.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

VOCAB_FILE = "askd_vocab.json"
ONE_HOT_LOGIT_GAP = 1e4  # a one-hot KD target as logits: 0 for the label, -1e4 elsewhere (softmax: exactly 1 / 0)
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


def kept_token_ids(tokenizer, texts: Iterable[str], vocab_size: int, top_ranks: int = 0) -> list[int]:
    """Token ids of ``texts`` (as Whisper decodes them: a leading space) + single bytes + every special token.

    ``top_ranks`` > 0 also keeps every id below it: byte-level BPE numbers its tokens in merge order, so the low
    ids are the most frequent pieces of the tokenizer's own training text, whatever words the labels hold.
    """
    if top_ranks < 0:
        raise ValueError(f"top_ranks must be >= 0, got {top_ranks}")
    keep = set(range(max(BYTE_TOKENS, top_ranks)))
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    keep |= set(range(eot, vocab_size))  # <|endoftext|>, <|startoftranscript|>, ..., the timestamp tokens
    for text in texts:
        text = str(text).strip()
        if text:
            keep.update(tokenizer.encode(" " + text, add_special_tokens=False))
    return sorted(i for i in keep if 0 <= i < vocab_size)


def top_rank_ids(tokenizer, vocab_size: int, top_ranks: int) -> list[int]:
    """Every id below ``top_ranks`` + every special and timestamp token (``<|endoftext|>`` onwards)."""
    first_special = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    if not BYTE_TOKENS <= top_ranks <= first_special:
        raise ValueError(f"train.student.vocab_top_ranks must lie in [{BYTE_TOKENS}, {first_special}] for this "
                         f"tokenizer, got {top_ranks}")
    return list(range(top_ranks)) + list(range(first_special, int(vocab_size)))


def restricted_tokenizer(tokenizer, top_ranks: int):
    """A ``tokenizers.Tokenizer``: ``tokenizer``'s byte-level BPE with only the merges whose two pieces and result
    have ids below ``top_ranks``; it adds no special tokens and its ids are the original tokenizer's."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"vocab_top_ranks needs a byte-level BPE tokenizer, this one is {model.get('type')}")
    vocab = {tok: i for tok, i in model["vocab"].items() if i < top_ranks}

    def kept(merge) -> bool:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        return a in vocab and b in vocab and a + b in vocab

    model["vocab"], model["merges"] = vocab, [m for m in model["merges"] if kept(m)]
    spec["post_processor"] = None
    return Tokenizer.from_str(json.dumps(spec))


@dataclass(frozen=True)
class KeptVocabulary:
    """The kept set of ``train.student.vocab_top_ranks`` and how every teacher token is spelled with it.

    ``pieces[t]``: the restricted BPE's spelling of token ``t``'s bytes, for the text tokens it spells otherwise
    (those not kept); every other token is spelled as itself. Labels are re-spelled token by token, so each
    teacher token ``t`` maps to a run of pieces whose first one stands where ``t`` stood: there the student gets
    the teacher's distribution (computed on the teacher's own tokens) with each pruned token's probability given
    to its first piece (:func:`fold_probabilities`); the later pieces of a run, which the teacher's token fixes,
    get a one-hot target.
    """

    keep: list[int]
    pieces: dict[int, tuple[int, ...]]
    top_ranks: int

    def spell(self, ids) -> list[int]:
        return [p for t in ids for p in self.pieces.get(int(t), (int(t),))]

    def fold_index(self) -> tuple[list[int], list[int]]:
        """``(pruned ids, positions in keep of their first pieces)`` for :func:`fold_probabilities`."""
        position = {tok: i for i, tok in enumerate(self.keep)}
        pruned = sorted(self.pieces)
        return pruned, [position[self.pieces[t][0]] for t in pruned]

    def align(self, teacher_targets: list[int], student_targets: list[int]) -> list[int]:
        """For each label position of the re-spelled sequence: the teacher's label position whose token it begins,
        or -1 (a later piece; or past a truncation). Label positions are the targets >= 0."""
        teacher = [t for t in teacher_targets if t >= 0]
        student = [t for t in student_targets if t >= 0]
        out, k = [-1] * len(student), 0
        for j, tok in enumerate(teacher[:-1]):
            run = list(self.pieces.get(tok, (tok,)))
            if student[k:k + len(run)] != run:
                return out  # truncated differently (max_label_tokens): no targets from here on
            out[k], k = j, k + len(run)
        if k == len(student) - 1 and student[k] == teacher[-1]:  # <|endoftext|>
            out[k] = len(teacher) - 1
        return out

    def alignment(self, teacher_targets: list[list[int]], student_targets: list[list[int]]):
        """``(align, n_teacher)`` per example: :meth:`align`, and the teacher's number of label positions."""
        align = [self.align(t, s) for t, s in zip(teacher_targets, student_targets, strict=True)]
        return align, [sum(1 for x in t if x >= 0) for t in teacher_targets]

    def stats(self, teacher_tokens, student_tokens, align=None) -> dict:
        out = {"top_ranks": self.top_ranks, "kept_tokens": len(self.keep),
               "vocab_size": len(self.keep) + len(self.pieces),
               "label_tokens_ratio": round(sum(map(len, student_tokens)) / max(1, sum(map(len, teacher_tokens))), 4)}
        if align is not None:  # the share of student label positions that get a teacher target
            out["teacher_target_fraction"] = round(sum(a >= 0 for al in align for a in al)
                                                   / max(1, sum(map(len, align))), 4)
        return out


def aligned_rows(rows: torch.Tensor, idx, align: list[list[int]], n_teacher: list[int]):
    """``rows`` (the teacher's label positions of examples ``idx``, in order) at the student's label positions,
    and which of those have a teacher row (:meth:`KeptVocabulary.align`)."""
    gather, valid, offset = [], [], 0
    for i in idx:
        gather += [offset + max(a, 0) for a in align[i]]
        valid += [a >= 0 for a in align[i]]
        offset += n_teacher[i]
    return rows[torch.as_tensor(gather, device=rows.device)], torch.as_tensor(valid, device=rows.device)


def training_vocabulary(cfg, tokenizer, vocab_size: int, kd_ever: bool) -> KeptVocabulary | None:
    """The :class:`KeptVocabulary` of ``cfg.student.vocab_top_ranks`` (a ``TrainSettings``), None when unset."""
    if cfg.student.vocab_top_ranks is None:
        return None
    fixed = cfg.timestamp_probability == 0 and cfg.condition_on_prev_probability == 0
    if kd_ever and not (cfg.cache_teacher_states and fixed and cfg.askd.feature_weight == 0):
        raise ValueError("train.student.vocab_top_ranks needs train.cache_teacher_states: true with "
                         "timestamp_probability 0, condition_on_prev_probability 0 and askd.feature_weight 0 "
                         "(the teacher's targets are aligned to the re-spelled labels once)")
    return kept_vocabulary(tokenizer, vocab_size, cfg.student.vocab_top_ranks)


def kept_vocabulary(tokenizer, vocab_size: int, top_ranks: int) -> KeptVocabulary:
    """The kept set ids < ``top_ranks`` + specials, and the restricted spelling of every other text token."""
    keep = top_rank_ids(tokenizer, vocab_size, top_ranks)
    cut = restricted_tokenizer(tokenizer, top_ranks)
    first_special = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    pruned = list(range(top_ranks, first_special))
    pieces = {t: tuple(tok.id for tok in cut.model.tokenize(s))
              for t, s in zip(pruned, tokenizer.convert_ids_to_tokens(pruned), strict=True)}
    return KeptVocabulary(keep, pieces, top_ranks)


def fold_probabilities(logits: torch.Tensor, keep: torch.Tensor, pruned: torch.Tensor, into: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """Logits over the kept columns whose softmax at ``temperature`` is the full softmax with the probability of
    each ``pruned`` column added to kept column ``into`` (positions in ``keep``): the teacher's belief in a token
    the student cannot emit goes to the piece the student begins it with."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    kept = probs.index_select(-1, keep).index_add_(-1, into, probs.index_select(-1, pruned))
    return temperature * torch.log(kept.clamp_min(torch.finfo(kept.dtype).tiny))


def kept_columns(keep: torch.Tensor, student, teacher, self_logits, targets: torch.Tensor, fold=None,
                 temperature: float = 1.0, teacher_valid: torch.Tensor | None = None):
    """The loss inputs restricted to the kept vocabulary columns ``keep`` (1-D, sorted); targets renumbered.

    ``student`` is a logits tensor or a model output (its ``.logits`` is replaced); ``self_logits`` may be a
    ``(logits, valid)`` pair; ``None`` inputs stay ``None``. A target outside the kept set raises ``ValueError``.
    ``fold = (pruned, into)``: the teacher's pruned columns are folded into kept ones (:func:`fold_probabilities`)
    instead of dropped; the self-teacher (a student, trained on the kept set) is cut. ``teacher_valid`` (the
    targets' shape): positions without a teacher row (the later pieces of a teacher token, which that token fixes)
    get a one-hot target on their label (finite logits: the KL stays finite).
    """
    def cut(x):  # (already-cut logits, e.g. the previous-epoch self-targets recorded from a cut student, pass)
        return x if x is None or x.shape[-1] == keep.numel() else x.index_select(-1, keep)

    if isinstance(student, torch.Tensor):
        student = cut(student)
    else:
        student.logits = cut(student.logits)
    if isinstance(self_logits, tuple):
        self_logits = (cut(self_logits[0]), self_logits[1])
    else:
        self_logits = cut(self_logits)
    position = torch.full((int(keep.max()) + 1,), -1, dtype=torch.long, device=targets.device)
    position[keep] = torch.arange(keep.numel(), device=targets.device)
    valid = targets >= 0
    if bool((targets[valid] > int(keep.max())).any()) or bool((position[targets[valid]] < 0).any()):
        raise ValueError("a label token lies outside the kept vocabulary (train.student.vocab_top_ranks)")
    renumbered = torch.where(valid, position[targets.clamp(min=0)], targets)
    if teacher is not None and fold is not None and teacher.shape[-1] != keep.numel():
        teacher = fold_probabilities(teacher, keep, fold[0], fold[1], temperature)
    teacher = cut(teacher)
    if teacher is not None and teacher_valid is not None:  # a later piece of a teacher token: certain (one-hot)
        one_hot = torch.full_like(teacher, -ONE_HOT_LOGIT_GAP).scatter_(-1, renumbered.clamp(min=0).unsqueeze(-1), 0.0)
        teacher = torch.where(teacher_valid.unsqueeze(-1), teacher, one_hot)
    return student, teacher, self_logits, renumbered


class pruned_head:  # noqa: N801 (a context manager used like a function)
    """``with pruned_head(model, keep):`` the model scores only ``keep`` (e.g. to evaluate a model in training)."""

    def __init__(self, model, keep: Iterable[int] | None):
        self.model, self.keep, self.saved = model, keep, None

    def __enter__(self):
        if self.keep is not None:
            self.saved = self.model.proj_out
            apply_pruned_head(self.model, self.keep)
        return self.model

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            self.model.proj_out = self.saved


def load_with_kept_ids(model_dir: Path, texts: list[str] | None, kind: str):
    """``(model, processor, keep)`` of a transformers folder: ``keep`` = the folder's own :data:`VOCAB_FILE` (a
    student trained on a kept set) or else :func:`kept_token_ids` of ``texts``."""
    from components.whisper_io import load_whisper

    own = read_vocab_file(model_dir)
    if own is None and not texts:
        raise ValueError(f"{kind} needs the training label texts (the label stage's output) to pick its tokens")
    model, processor = load_whisper(model_dir)
    if own is not None:
        return model, processor, own
    return model, processor, kept_token_ids(processor.tokenizer, texts, int(model.config.vocab_size))


def apply_pruned_head(model, keep: Iterable[int]):
    """Replace ``model.proj_out`` by a :class:`PrunedHead` over ``keep`` (in place; returns the model)."""
    model.proj_out = PrunedHead(model.proj_out.weight, keep).to(model.proj_out.weight.device)
    return model


def apply_vocab_file(model, folder: Path) -> list[int] | None:
    """Prune ``model``'s output layer to the kept ids of ``folder``'s :data:`VOCAB_FILE`, if it has one (a student
    trained on a kept vocabulary, or a pruned export); returns those ids, or None (the model is left as it is)."""
    keep = read_vocab_file(folder)
    if keep is not None:
        apply_pruned_head(model, keep)
    return keep


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


class IdMap:
    """Token ids between a tokenizer (full vocabulary) and a model whose vocabulary is the ``keep`` rows only."""

    def __init__(self, keep: Iterable[int]):
        self.keep = [int(i) for i in keep]
        self.position = {tok: pos for pos, tok in enumerate(self.keep)}

    def to_model(self, ids: Iterable[int]) -> list[int]:
        """Full-vocabulary ids -> model ids; ids the model does not have are dropped."""
        return [self.position[int(i)] for i in ids if int(i) in self.position]

    def from_model(self, ids: Iterable[int]) -> list[int]:
        return [self.keep[int(i)] for i in ids]


def prune_whisper(model, keep: list[int]):
    """A new transformers Whisper whose vocabulary is the ``keep`` rows (token embedding = output layer, tied).

    Token ids in its config and generation config are renumbered; ids it does not keep are dropped from the
    suppress lists. Decode its ids with :class:`IdMap` and the original tokenizer. English-only models only:
    a multilingual Whisper's language tokens are found by vocabulary size in CTranslate2.
    """
    import copy

    from transformers import WhisperForConditionalGeneration

    if getattr(model.generation_config, "is_multilingual", False):
        raise ValueError("vocabulary pruning supports English-only Whisper models (this one is multilingual)")
    ids = IdMap(keep)
    config = copy.deepcopy(model.config)
    config.vocab_size = len(keep)
    gen = copy.deepcopy(model.generation_config)
    for holder in (config, gen):
        for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "no_timestamps_token_id",
                     "prev_sot_token_id"):
            value = getattr(holder, attr, None)
            if isinstance(value, int):
                if value not in ids.position:
                    raise ValueError(f"kept ids miss the special token {attr}={value}")
                setattr(holder, attr, ids.position[value])
        for attr in ("suppress_tokens", "begin_suppress_tokens"):
            if getattr(holder, attr, None):
                setattr(holder, attr, ids.to_model(getattr(holder, attr)))
    if getattr(gen, "forced_decoder_ids", None):
        gen.forced_decoder_ids = [[pos, ids.position[tok]] for pos, tok in gen.forced_decoder_ids]
    pruned = WhisperForConditionalGeneration(config).eval()
    state = model.state_dict()
    keep_t = torch.as_tensor(keep, dtype=torch.long)
    state["model.decoder.embed_tokens.weight"] = state["model.decoder.embed_tokens.weight"][keep_t].clone()
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    pruned.load_state_dict(state, strict=True)
    pruned.tie_weights()
    pruned.generation_config = gen
    return pruned


def export_ct2_vocab(model_dir: Path, out_dir: Path, texts: list[str] | None, quantization: str | None) -> Path:
    """A CTranslate2 export of ``model_dir`` with the vocabulary pruned to :func:`kept_token_ids` of ``texts``.

    CTranslate2 converts a pruned copy (:func:`prune_whisper`) whose vocabulary lists the kept token strings, so
    it finds ``<|startoftranscript|>``, ``<|notimestamps|>`` and the timestamps by name; the folder keeps the
    original tokenizer and generation config and :data:`VOCAB_FILE`, and ``Ct2Whisper`` maps ids both ways.
    """
    import tempfile

    from components.ct2_export import MANIFEST_FILE, SIDECAR_FILES, export_ct2

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, processor, keep = load_with_kept_ids(model_dir, texts, f"ct2_{quantization or 'float32'}_vocab")
    vocab_size = int(model.config.vocab_size)
    pruned = prune_whisper(model, keep)
    tokens = processor.tokenizer.convert_ids_to_tokens(keep)  # the kept rows' token strings
    with tempfile.TemporaryDirectory(prefix="askd-pruned-") as tmp:
        pruned.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        export_ct2(tmp, out_dir, quantization=quantization, vocabulary=tokens)
    for name in SIDECAR_FILES:  # the runtime decodes with the full tokenizer and generation config
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    source = f"{len(texts)} training label texts" if read_vocab_file(model_dir) is None else f"{model_dir.name}'s own"
    write_vocab_file(out_dir, keep, vocab_size, source)
    manifest_file = out_dir / MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    manifest.update(source=str(model_dir.resolve()), kept_tokens=len(keep), vocab_size=vocab_size,
                    params=int(sum(p.numel() for p in pruned.parameters())))
    manifest_file.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir
