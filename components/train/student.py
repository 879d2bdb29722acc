"""Cut a Distil-Whisper-style student from a Whisper teacher, and shorten the encoder window.

Layer choice (Distil-Whisper, ``training/create_student_model.py``): the student's layer ``i`` is initialised
from teacher layer

    idx_i = floor(i * (L_T - 1) / (L_S - 1)),  i = 0 .. L_S - 1,   with idx_{L_S-1} forced to L_T - 1,

i.e. an integer ``linspace(0, L_T - 1, L_S)``: maximally spaced, first and last teacher layers kept (exact integer
arithmetic here, so no float-rounding surprises). ``L_S = 1`` gives ``[L_T - 1]`` (the last layer), which is what
Distil-Whisper's code does (linspace gives [0], then the last index is forced to L_T - 1).

Everything that is not a mapped layer (conv stem, positional embeddings, token embeddings with the tied output
projection, final layer norms) is copied from the teacher unchanged. ``init_from`` (a trained student folder)
takes the teacher's place as the source of layers and tensors, e.g. to cut 2 decoder layers from a trained 3.

Shorter window: the encoder has one position per 20 ms of audio after the stride-2
second convolution, i.e. ``ENCODER_POSITIONS_PER_S = 50`` positions and ``MEL_FRAMES_PER_S = 100`` log-mel frames
per second. A ``window_s`` window keeps the first ``50 * window_s`` sinusoidal position embeddings, sets
``config.max_source_positions`` to that, and uses a feature extractor with ``chunk_length = window_s`` (so it pads
or cuts audio to ``16000 * window_s`` samples = ``100 * window_s`` frames). transformers 5.23's ``WhisperEncoder``
asserts ``input_features.shape[-1] == max_source_positions * conv1.stride * conv2.stride`` and
``generate`` derives its segment length from the same config value, so short-form and sequential long-form
generation both follow the new window.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch

from components.artifacts import model_files_sha256
from components.settings import StudentSettings
from components.vocab import VOCAB_FILE
from components.whisper_io import load_whisper, whisper_from_state

ENCODER_POSITIONS_PER_S = 50  # encoder positions per second of audio (20 ms each)
MEL_FRAMES_PER_S = 100  # log-mel frames per second (10 ms hop)
BYTES_PER_FLOAT32 = 4

_LAYER_KEY_RE = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")


def layer_indices(n_teacher: int, n_student: int) -> list[int]:
    """Maximally spaced teacher layers for ``n_student`` student layers (first and last kept).

    ``n_student == 1`` returns ``[n_teacher - 1]``. Raises ``ValueError`` when a count is < 1 or
    ``n_student > n_teacher``.
    """
    if n_teacher < 1 or n_student < 1:
        raise ValueError(f"layer counts must be >= 1, got n_teacher={n_teacher}, n_student={n_student}")
    if n_student > n_teacher:
        raise ValueError(f"a student cannot have more layers than the teacher: {n_student} > {n_teacher}")
    if n_student == 1:
        return [n_teacher - 1]
    idx = [i * (n_teacher - 1) // (n_student - 1) for i in range(n_student)]
    idx[-1] = n_teacher - 1
    return idx


def _check_indices(indices: tuple[int, ...] | list[int], n_teacher: int, what: str) -> list[int]:
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError(f"{what}_layer_indices is empty")
    if any(i < 0 or i >= n_teacher for i in idx):
        raise ValueError(f"{what}_layer_indices {idx} out of range: the teacher has {n_teacher} {what} layers")
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise ValueError(f"{what}_layer_indices {idx} must be strictly increasing")
    return idx


def _window_positions(window_s: float) -> int:
    positions = window_s * ENCODER_POSITIONS_PER_S
    if window_s <= 0 or abs(window_s - round(window_s)) > 1e-9:
        # The feature extractor computes n_samples = chunk_length * sampling_rate and pads with it; a
        # fractional chunk_length gives float padding widths that numpy rejects (also after a reload).
        raise ValueError(f"window_s must be a whole number of seconds > 0, got {window_s}")
    return int(round(positions))


def shorten_window(model, processor, window_s: float):
    """Return ``(model, processor)`` for an encoder window of ``window_s`` seconds (model modified in place).

    Keeps the first ``50 * window_s`` encoder position embeddings (frozen, as in transformers), sets
    ``config.max_source_positions`` and builds a ``WhisperFeatureExtractor`` with ``chunk_length = window_s``
    (``n_samples = 16000 * window_s``, ``nb_max_frames = 100 * window_s``). The window of the model as given
    (30 s for Whisper) returns both objects unchanged. ``window_s`` must be a whole number of seconds no longer
    than the model's current window (``ValueError`` otherwise).
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    positions = _window_positions(window_s)
    encoder = model.model.encoder
    current = int(model.config.max_source_positions)
    if positions > current:
        raise ValueError(
            f"window_s={window_s} needs {positions} encoder positions but the model has only {current} "
            f"({current / ENCODER_POSITIONS_PER_S:g} s)"
        )
    fe = processor.feature_extractor
    chunk_s = int(round(window_s))
    if positions < current:
        old = encoder.embed_positions
        new = torch.nn.Embedding(positions, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:positions])
        new.weight.requires_grad_(old.weight.requires_grad)
        encoder.embed_positions = new
        encoder.max_source_positions = positions
        model.config.max_source_positions = positions
        encoder.config.max_source_positions = positions  # the same object in transformers 5; kept explicit
    if int(fe.n_samples) == chunk_s * fe.sampling_rate and fe.chunk_length == chunk_s:
        return model, processor
    new_fe = WhisperFeatureExtractor(
        feature_size=fe.feature_size,
        sampling_rate=fe.sampling_rate,
        hop_length=fe.hop_length,
        chunk_length=chunk_s,
        n_fft=fe.n_fft,
        padding_value=fe.padding_value,
        dither=getattr(fe, "dither", 0.0),
        return_attention_mask=fe.return_attention_mask,
    )
    expected_frames = positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    if new_fe.nb_max_frames != expected_frames:
        raise ValueError(
            f"feature extractor gives {new_fe.nb_max_frames} frames, the encoder expects {expected_frames}"
        )
    return model, WhisperProcessor(feature_extractor=new_fe, tokenizer=processor.tokenizer)


def _count(model) -> tuple[int, int]:
    params = list(model.parameters())  # tied weights appear once
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _student_state(teacher_sd: dict[str, torch.Tensor], enc_idx: list[int], dec_idx: list[int]) -> dict:
    """Teacher state dict with layer ``i`` of each stack taken from teacher layer ``idx[i]`` (tensors cloned)."""
    inverse = {"encoder": {t: s for s, t in enumerate(enc_idx)}, "decoder": {t: s for s, t in enumerate(dec_idx)}}
    out: dict[str, torch.Tensor] = {}
    for key, value in teacher_sd.items():
        m = _LAYER_KEY_RE.match(key)
        if m is None:
            out[key] = value.detach().clone()
            continue
        stack, layer, rest = m.group(1), int(m.group(2)), m.group(3)
        if layer in inverse[stack]:
            out[f"model.{stack}.layers.{inverse[stack][layer]}.{rest}"] = value.detach().clone()
    return out


def _remap_alignment_heads(heads: list | None, dec_idx: list[int], n_heads: int) -> list[list[int]] | None:
    """Keep alignment heads of mapped decoder layers (renumbered); none left -> every head of the last layer."""
    if heads is None:
        return None
    inverse = {t: s for s, t in enumerate(dec_idx)}
    kept = [[inverse[int(layer)], int(head)] for layer, head in heads if int(layer) in inverse]
    return kept or [[len(dec_idx) - 1, h] for h in range(n_heads)]


def _source(teacher, teacher_dir: Path, init_from: Path | None):
    """The model the student is cut from: the teacher, or the trained student folder ``init_from``."""
    if init_from is None:
        return teacher
    init_from = Path(init_from)
    if not (init_from / "config.json").is_file():
        raise FileNotFoundError(f"train.student.init_from: no model folder at '{init_from}' (config.json missing)")
    if (init_from / VOCAB_FILE).is_file():
        raise ValueError(f"train.student.init_from: '{init_from}' was trained on a pruned vocabulary "
                         f"({VOCAB_FILE}); cutting a student from it is not supported")
    source, _ = load_whisper(init_from)
    for key in ("d_model", "vocab_size", "encoder_attention_heads", "decoder_attention_heads", "num_mel_bins"):
        if getattr(source.config, key) != getattr(teacher.config, key):
            raise ValueError(f"train.student.init_from: '{init_from}' has {key}={getattr(source.config, key)} but "
                             f"the teacher '{teacher_dir}' has {getattr(teacher.config, key)}")
    return source


def _encoder_equals(student, teacher) -> bool:
    """Every student encoder tensor equals the teacher's (position table: the teacher's first rows)."""
    s_sd, t_sd = student.model.encoder.state_dict(), teacher.model.encoder.state_dict()
    if s_sd.keys() != t_sd.keys():
        return False
    for key, value in s_sd.items():
        ref = t_sd[key][: value.shape[0]] if key == "embed_positions.weight" else t_sd[key]
        if value.shape != ref.shape or not torch.equal(value, ref):
            return False
    return True


def init_student(teacher_dir: Path, cfg: StudentSettings) -> tuple[Any, Any, dict[str, Any]]:
    """Build the student from the teacher folder; returns ``(model, processor, report)``.

    Layers: ``cfg.*_layer_indices`` when given, else :func:`layer_indices` of ``cfg.*_layers``
    (``encoder_layers=None`` keeps every encoder layer). The student gets ``cfg.window_s`` (see
    :func:`shorten_window`), the encoder is frozen when ``cfg.freeze_encoder``,
    the token embedding (= output layer, tied) when ``cfg.freeze_embeddings``, and the generation config is the
    teacher's with ``alignment_heads`` renumbered to the kept decoder layers. The model is returned in eval mode.
    ``cfg.init_from`` (a trained student folder with the teacher's widths) replaces the teacher as the source of
    every copied tensor, the layer indices and the generation config; the processor stays the teacher's.

    ``report``: ``teacher_params``, ``teacher_trainable``, ``student_params``, ``student_trainable``,
    ``teacher_bytes_fp32``, ``student_bytes_fp32`` (teacher counted as loaded, i.e. with its 30 s positions),
    ``encoder_layer_indices``, ``decoder_layer_indices`` (layers of the source), ``window_s``, ``init_from`` (the
    source folder, or None for the teacher), ``init_from_sha256`` (its weights and configs), ``encoder_is_teacher``
    (the student's encoder equals the teacher's, cut to the window, so the teacher's encoder output can be shared
    or cached), and ``mapping`` =
    ``{"encoder": {student_layer: source_layer}, "decoder": {...}}`` (int keys; JSON turns them into strings).
    """
    teacher, processor = load_whisper(teacher_dir)
    source = _source(teacher, teacher_dir, cfg.init_from)
    tcfg = source.config
    n_enc_t, n_dec_t = int(tcfg.encoder_layers), int(tcfg.decoder_layers)
    if cfg.encoder_layer_indices is not None:
        enc_idx = _check_indices(cfg.encoder_layer_indices, n_enc_t, "encoder")
    elif cfg.encoder_layers is not None:
        enc_idx = layer_indices(n_enc_t, cfg.encoder_layers)
    else:
        enc_idx = list(range(n_enc_t))
    if cfg.decoder_layer_indices is not None:
        dec_idx = _check_indices(cfg.decoder_layer_indices, n_dec_t, "decoder")
    else:
        dec_idx = layer_indices(n_dec_t, cfg.decoder_layers)

    scfg = copy.deepcopy(tcfg)
    scfg.encoder_layers = len(enc_idx)
    scfg.decoder_layers = len(dec_idx)
    scfg.num_hidden_layers = len(enc_idx)
    student = whisper_from_state(scfg, _student_state(source.state_dict(), enc_idx, dec_idx), "student state")
    if any(t.is_meta for t in list(student.parameters()) + list(student.buffers())):
        raise ValueError("student has uninitialised (meta) tensors after copying the teacher")
    student.model.encoder.embed_positions.requires_grad_(False)  # as transformers builds it

    gen = copy.deepcopy(source.generation_config)
    gen.alignment_heads = _remap_alignment_heads(
        getattr(gen, "alignment_heads", None), dec_idx, int(scfg.decoder_attention_heads)
    )
    student.generation_config = gen
    student, processor = shorten_window(student, processor, cfg.window_s)
    if cfg.freeze_encoder:
        student.freeze_encoder()
    if cfg.freeze_embeddings:  # tied: the output projection stays the source's too
        student.model.decoder.embed_tokens.requires_grad_(False)
    student.eval()

    t_total, t_train = _count(teacher)
    s_total, s_train = _count(student)
    report = {
        "teacher_params": t_total,
        "teacher_trainable": t_train,
        "teacher_bytes_fp32": t_total * BYTES_PER_FLOAT32,
        "student_params": s_total,
        "student_trainable": s_train,
        "student_bytes_fp32": s_total * BYTES_PER_FLOAT32,
        "encoder_layer_indices": enc_idx,
        "decoder_layer_indices": dec_idx,
        "window_s": float(cfg.window_s),
        "init_from": None if cfg.init_from is None else str(cfg.init_from),
        "init_from_sha256": None if cfg.init_from is None else model_files_sha256(cfg.init_from),
        "encoder_is_teacher": _encoder_equals(student, teacher),
        "mapping": {
            "encoder": {s: t for s, t in enumerate(enc_idx)},
            "decoder": {s: t for s, t in enumerate(dec_idx)},
        },
    }
    del teacher, source
    return student, processor, report


def teacher_for_training(teacher_dir: Path, window_s: float):
    """The teacher model with the student's window (same encoder input), eval mode, every ``requires_grad`` False.

    Its processor would equal the student's (use the one from :func:`init_student`).
    """
    teacher, processor = load_whisper(teacher_dir)
    teacher, _ = shorten_window(teacher, processor, window_s)
    teacher.requires_grad_(False)
    return teacher.eval()


def label_logits(model, encoder_states, decoder_input_ids, labels_mask):
    """``model``'s logits at the label positions only: ``[1, N, V]``, equal to ``model(...).logits[labels_mask]``.

    A small decoder's cost is mostly its vocabulary-wide output layer (51,865 x d for tiny.en, forward and
    backward), and with padding and the forced prefix only about half of a batch's positions predict a label
    (52 % measured on the quick data: packs are long, single clips short), so projecting only those halves it.
    Call it on an unwrapped model (a DDP wrapper must see the whole forward: the loop falls back to it there).
    """
    hidden = model.model.decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoder_states).last_hidden_state
    return model.proj_out(hidden[labels_mask]).unsqueeze(0)
