"""Training data for distillation: label sequences, batches, and the on-disk teacher-encoder cache.

Label sequence of one clip (Whisper's decoder format)::

    [<|startofprev|> prev-text...]  <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>] text... <|endoftext|>

* ``condition_on_prev_probability``: with this probability a previous-text prompt (another clip's label) is
  prepended; its tokens are never predicted (masked out of the loss).
* ``timestamp_probability``: labels that carry timestamp tokens keep them with this probability; otherwise they
  are stripped and ``<|notimestamps|>`` is used. Labels made without timestamps always use ``<|notimestamps|>``.
* The forced prefix (start, language, task, no-timestamps) is fed to the decoder but not predicted: at
  inference it is forced, so learning it would only dilute the loss.

Per-step randomness comes from ``numpy.random.default_rng((seed, step))``, so a resumed run draws exactly
what an uninterrupted one would.

Packed examples (long-form robustness): ``plan_packs`` joins 2..``pack_max_clips`` random clips of a split,
separated by ``pack_gap_s`` of silence, into one example that still fits the encoder window; its label is the
members' labels joined. A student trained only on one-sentence clips never learns to keep transcribing when a
window holds more speech, and loops on chunked long-form audio; packs teach it that. The plan is a pure function
of the seed, so packs are cached like clips and a resumed run sees the same ones.

Encoder cache: when the student shares the teacher's frozen encoder, the encoder output of every clip is
computed once and stored (float16) in ``cache_dir/<key>/<split>.f16``. ``key`` hashes only the teacher weights
and the preprocessing (window, feature extractor), never training params, so batch size or learning-rate
changes reuse it. The cache is filled in chunks with a progress file, so an interrupted fill resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100  # label positions excluded from the loss
CACHE_CHUNK_CLIPS = 32  # clips encoded between two progress saves
SAMPLE_RATE_HZ = 16_000
PACK_SEED_STREAM = 7  # separates the packing RNG from the batch RNG of the same seed


@dataclass(frozen=True)
class SpecialTokens:
    sot: int
    eot: int
    no_timestamps: int
    start_of_prev: int | None
    prefix: tuple[int, ...]  # forced tokens after <|startoftranscript|> (language, task)
    timestamp_begin: int  # ids >= this are timestamp tokens

    @classmethod
    def from_processor(cls, processor, generation_config, language: str | None, task: str) -> SpecialTokens:
        tok = processor.tokenizer
        ids = tok.convert_tokens_to_ids
        prefix: tuple[int, ...] = ()
        if getattr(generation_config, "is_multilingual", False):
            lang = language or "en"
            lang_token = lang if lang.startswith("<|") else f"<|{lang}|>"
            prefix = (generation_config.lang_to_id[lang_token], generation_config.task_to_id[task])
        prev = ids("<|startofprev|>")
        return cls(
            sot=generation_config.decoder_start_token_id,
            eot=ids("<|endoftext|>"),
            no_timestamps=generation_config.no_timestamps_token_id,
            start_of_prev=prev if isinstance(prev, int) and prev != tok.unk_token_id else None,
            prefix=prefix,
            timestamp_begin=generation_config.no_timestamps_token_id + 1,
        )


def build_sequence(
    text_tokens: list[int],
    special: SpecialTokens,
    rng: np.random.Generator,
    timestamp_probability: float,
    prev_tokens: list[int] | None,
    max_len: int,
) -> tuple[list[int], list[int]]:
    """(decoder input ids, target ids) for one clip; targets use IGNORE_INDEX where nothing is predicted."""
    has_ts = any(t >= special.timestamp_begin for t in text_tokens)
    keep_ts = has_ts and rng.random() < timestamp_probability
    body = list(text_tokens) if keep_ts else [t for t in text_tokens if t < special.timestamp_begin]
    forced = [special.sot, *special.prefix] + ([] if keep_ts else [special.no_timestamps])
    prompt: list[int] = []
    if prev_tokens and special.start_of_prev is not None:
        prev = [t for t in prev_tokens if t < special.timestamp_begin][-(max_len // 4) :]
        prompt = [special.start_of_prev, *prev]
    body = body[: max(1, max_len - len(prompt) - len(forced) - 1)]
    seq = prompt + forced + body + [special.eot]
    inputs, targets = seq[:-1], seq[1:]
    n_unpredicted = len(prompt) + len(forced) - 1  # targets that are prompt or forced tokens
    targets = [IGNORE_INDEX] * n_unpredicted + targets[n_unpredicted:]
    return inputs, targets


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad decoder inputs with ``pad_id`` and targets with IGNORE_INDEX."""
    width = max(len(i) for i, _ in pairs)
    inputs = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (i, t) in enumerate(pairs):
        inputs[row, : len(i)] = torch.tensor(i)
        targets[row, : len(t)] = torch.tensor(t)
    return inputs, targets


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(n)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Row indices of optimiser micro-batch ``step`` (drop-last epochs of seeded permutations)."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = epoch_permutation(n, seed, epoch)
    if n < batch_size:
        return perm
    return perm[pos * batch_size : (pos + 1) * batch_size]


def features(processor, audios: list[np.ndarray]) -> torch.Tensor:
    """Log-mel features padded/truncated to the processor's window."""
    return processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features


# ---------------------------------------------------------------------------------------------
# teacher encoder cache


def cache_key(teacher_dir: Path, window_s: float, processor) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(teacher_dir).glob("*.safetensors")) + [Path(teacher_dir) / "config.json"]:
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))  # first MiB: enough to tell weights apart, cheap for large teachers
    fe = processor.feature_extractor
    digest.update(json.dumps({"window_s": window_s, "mels": fe.feature_size, "hop": fe.hop_length,
                              "n_fft": fe.n_fft, "format": 1}).encode())
    return digest.hexdigest()[:16]


class EncoderCache:
    """float16 memmap of teacher encoder outputs, one row per clip of a split, filled resumably."""

    def __init__(self, root: Path, split: str, n_clips: int, frames: int, width: int, ids: list[str]):
        self.root, self.split = Path(root), split
        self.shape = (n_clips, frames, width)
        self.data_path = self.root / f"{split}.f16"
        self.progress_path = self.root / f"{split}.progress.json"
        self.ids_digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()

    def done_rows(self) -> int:
        """Rows already encoded by an earlier (possibly interrupted) fill."""
        return self._progress()

    def _progress(self) -> int:
        if not (self.progress_path.is_file() and self.data_path.is_file()):
            return 0
        state = json.loads(self.progress_path.read_text())
        if state.get("ids") != self.ids_digest or tuple(state.get("shape", ())) != self.shape:
            return 0
        return int(state["done"])

    @property
    def complete(self) -> bool:
        return self._progress() >= self.shape[0]

    def fill(self, encode, audios_for, progress=None) -> int:
        """Encode missing rows with ``encode(rows) -> Tensor[len(rows), frames, width]``; returns rows done now."""
        self.root.mkdir(parents=True, exist_ok=True)
        done = self._progress()
        mode = "r+" if done and self.data_path.is_file() else "w+"
        mm = np.memmap(self.data_path, dtype=np.float16, mode=mode, shape=self.shape)
        start = done
        for lo in range(done, self.shape[0], CACHE_CHUNK_CLIPS):
            rows = list(range(lo, min(lo + CACHE_CHUNK_CLIPS, self.shape[0])))
            mm[rows[0] : rows[-1] + 1] = encode(audios_for(rows)).to(torch.float16).numpy()
            mm.flush()
            tmp = self.progress_path.with_name(f".{self.progress_path.name}.tmp")
            tmp.write_text(json.dumps({"done": rows[-1] + 1, "shape": self.shape, "ids": self.ids_digest}))
            os.replace(tmp, self.progress_path)
            if progress is not None:
                progress.update(len(rows))
        del mm
        return self.shape[0] - start

    def rows(self, index: np.ndarray | list[int]) -> torch.Tensor:
        mm = np.memmap(self.data_path, dtype=np.float16, mode="r", shape=self.shape)
        return torch.from_numpy(np.asarray(mm[np.asarray(index)], dtype=np.float32))


def plan_packs(durations_s: list[float], window_s: float, gap_s: float, n_packs: int, max_clips: int,
                seed: int) -> list[tuple[int, ...]]:
    """Up to ``n_packs`` tuples of 2..``max_clips`` distinct clip indices whose audio plus gaps fits ``window_s``.

    First fit over a seeded permutation per pack; packs that cannot reach two members are not made.
    ``durations_s`` is read once (a datasets ``Column`` costs ~150 us per item: indexing it in the loop took
    ~13 min for the full profile's packs at an 8 s window), and a pack's scan stops once not even the shortest
    clip fits (the same packs as scanning on).
    """
    rng = np.random.default_rng((seed, PACK_SEED_STREAM))
    packs: list[tuple[int, ...]] = []
    durations = [float(d) for d in durations_s]
    if len(durations) < 2 or max_clips < 2:
        return packs
    shortest = min(durations)
    for _ in range(n_packs):
        members: list[int] = []
        total = 0.0
        for i in rng.permutation(len(durations)):
            add = durations[i] + (gap_s if members else 0.0)
            if total + add <= window_s:
                members.append(int(i))
                total += add
                if len(members) == max_clips or total + (shortest + gap_s) > window_s:
                    break
        if len(members) >= 2:
            packs.append(tuple(members))
    return packs


def pack_audio(audios: list[np.ndarray], members: tuple[int, ...], gap_s: float) -> np.ndarray:
    """The members' audio joined with ``gap_s`` of silence between them."""
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE_HZ)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for n, i in enumerate(members):
        if n:
            parts.append(gap)
        parts.append(np.asarray(audios[i], dtype=np.float32))
    return np.concatenate(parts)


def pack_tokens(tokens: list[list[int]], members: tuple[int, ...], timestamp_begin: int) -> list[int]:
    """The members' text tokens joined (timestamps dropped: their offsets would be wrong in the pack)."""
    return [t for i in members for t in tokens[i] if t < timestamp_begin]


def load_split(labelled_dir: Path, split: str, max_window_s: float) -> tuple[Any, dict[str, int]]:
    """The kept clips of a labelled split that fit the encoder window (others are counted, not used)."""
    import datasets

    ds = datasets.load_from_disk(str(labelled_dir))[split]
    durations = ds["duration_s"]
    fits = [i for i, d in enumerate(durations) if d <= max_window_s]
    stats = {"clips": len(ds), "used": len(fits), "too_long_for_window": len(ds) - len(fits)}
    return (ds.select(fits) if len(fits) < len(ds) else ds), stats
