"""Whisper in transformers: convert packaged CTranslate2 weights, load a Whisper folder, transcribe.

The conversion is the inverse of CTranslate2's ``WhisperLoader`` (notes §4): fused Q|K|V and K|V
projections are split, the zero k-bias slots are dropped, LayerNorm gamma/beta become weight/bias,
float16 is cast to float32 and ``proj_out`` is tied to the decoder embeddings. The model dimensions
come from tensor shapes (the CT2 config.json only holds token-id lists).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.ct2 import PackagedWeights, read_model_bin

SAMPLE_RATE_HZ = 16_000
HOP_LENGTH_SAMPLES = 160
N_FFT_SAMPLES = 400
CHUNK_LENGTH_S = 30
N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in 0.02 s steps
TIMESTAMP_STEP_S = 0.02
ENGLISH_ONLY_VOCAB = 51864  # multilingual Whisper vocabularies have 51865 (or more) tokens
CT2_GELU_ACTIVATION_ID = 3  # CTranslate2 ActivationType::GELU

_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/")
# transformers 5 logs these on every Whisper generate call although nothing is wrong: its own Whisper
# code passes suppress_tokens next to generation_config, the saved max_length (448) coexists with
# max_new_tokens, and Whisper's decoder prompt needs no attention mask.
_HARMLESS_GENERATE_LOGS = (
    "Passing `generation_config` together with generation-related",
    "seem to have been set. `max_new_tokens` will take precedence",
    "The attention mask is not set with a batched input",
)


class _DropHarmlessGenerateLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _HARMLESS_GENERATE_LOGS)


def _quiet_generate_logs() -> None:
    gen_logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _DropHarmlessGenerateLogs) for f in gen_logger.filters):
        gen_logger.addFilter(_DropHarmlessGenerateLogs())


def _np(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """float32 torch tensor of one CT2 variable."""
    return torch.from_numpy(np.ascontiguousarray(variables[name], dtype=np.float32))


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    indices = {int(m.group(2)) for n in variables if (m := _LAYER_RE.match(n)) and m.group(1) == stack}
    if indices != set(range(len(indices))):
        raise ValueError(f"{stack} layers are not contiguous: {sorted(indices)}")
    return len(indices)


def _linear(sd: dict, hf: str, variables: dict, ct2: str, rows: slice | None = None, bias: bool = True) -> None:
    """Copy ``<ct2>/weight`` (and bias) into ``<hf>.weight`` / ``<hf>.bias``, optionally a row slice."""
    weight = _np(variables, f"{ct2}/weight")
    sd[f"{hf}.weight"] = weight if rows is None else weight[rows].clone()
    if bias:
        b = _np(variables, f"{ct2}/bias")
        sd[f"{hf}.bias"] = b if rows is None else b[rows].clone()


def _layer_norm(sd: dict, hf: str, variables: dict, ct2: str) -> None:
    sd[f"{hf}.weight"] = _np(variables, f"{ct2}/gamma")
    sd[f"{hf}.bias"] = _np(variables, f"{ct2}/beta")


def _self_attention_and_ffn(sd: dict, v: dict[str, np.ndarray], src: str, dst: str, d: int) -> None:
    """The parts encoder and decoder layers share: fused Q||K||V self-attention (zero K bias dropped) + FFN."""
    fused = f"{src}/self_attention/linear_0"
    _linear(sd, f"{dst}.self_attn.q_proj", v, fused, slice(0, d))
    _linear(sd, f"{dst}.self_attn.k_proj", v, fused, slice(d, 2 * d), bias=False)
    _linear(sd, f"{dst}.self_attn.v_proj", v, fused, slice(2 * d, 3 * d))
    _linear(sd, f"{dst}.self_attn.out_proj", v, f"{src}/self_attention/linear_1")
    _layer_norm(sd, f"{dst}.self_attn_layer_norm", v, f"{src}/self_attention/layer_norm")
    _linear(sd, f"{dst}.fc1", v, f"{src}/ffn/linear_0")
    _linear(sd, f"{dst}.fc2", v, f"{src}/ffn/linear_1")
    _layer_norm(sd, f"{dst}.final_layer_norm", v, f"{src}/ffn/layer_norm")


def _ct2_state_dict(v: dict[str, np.ndarray], d: int, n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    """Map CT2 variable names to HF ``WhisperForConditionalGeneration`` parameter names (notes §4)."""
    sd: dict[str, torch.Tensor] = {}
    e, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        _linear(sd, f"{e}.{conv}", v, f"encoder/{conv}")
    sd[f"{e}.embed_positions.weight"] = _np(v, "encoder/position_encodings/encodings")
    for i in range(n_enc):
        _self_attention_and_ffn(sd, v, f"encoder/layer_{i}", f"{e}.layers.{i}", d)
    _layer_norm(sd, f"{e}.layer_norm", v, "encoder/layer_norm")

    sd[f"{dec}.embed_tokens.weight"] = _np(v, "decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = _np(v, "decoder/position_encodings/encodings")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _self_attention_and_ffn(sd, v, src, dst, d)
        # cross-attention: CT2 fuses K||V; the zero K bias slot is dropped
        _linear(sd, f"{dst}.encoder_attn.q_proj", v, f"{src}/attention/linear_0")
        _linear(sd, f"{dst}.encoder_attn.k_proj", v, f"{src}/attention/linear_1", slice(0, d), bias=False)
        _linear(sd, f"{dst}.encoder_attn.v_proj", v, f"{src}/attention/linear_1", slice(d, 2 * d))
        _linear(sd, f"{dst}.encoder_attn.out_proj", v, f"{src}/attention/linear_2")
        _layer_norm(sd, f"{dst}.encoder_attn_layer_norm", v, f"{src}/attention/layer_norm")
    _layer_norm(sd, f"{dec}.layer_norm", v, "decoder/layer_norm")
    return sd


def _build_tokenizer(tokenizer_json: Path, vocab_size: int):
    """WhisperTokenizer from tokenizer.json, with timestamp tokens added if missing and a pad token."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tok = WhisperTokenizer(tokenizer_file=str(tokenizer_json))
    first_ts = "<|0.00|>"
    if tok.convert_tokens_to_ids(first_ts) in (None, tok.unk_token_id):
        stamps = [f"<|{i * TIMESTAMP_STEP_S:.2f}|>" for i in range(N_TIMESTAMPS)]
        tok.add_tokens([AddedToken(s, lstrip=False, rstrip=False, normalized=True, special=False) for s in stamps])
    if len(tok) != vocab_size:
        raise ValueError(f"tokenizer {tokenizer_json} has {len(tok)} tokens but the model's vocabulary is {vocab_size}")
    tok.pad_token = tok.eos_token  # <|endoftext|>; needed for padded label batches
    return tok


def _generation_config(tok, ct2_cfg: dict[str, Any], multilingual: bool, max_length: int):
    from transformers import GenerationConfig

    ids = tok.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    gen = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        suppress_tokens=list(ct2_cfg.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_cfg.get("suppress_ids_begin", [220, eot])),
        alignment_heads=[list(h) for h in ct2_cfg.get("alignment_heads", [])],
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if multilingual:
        lang_ids = ct2_cfg.get("lang_ids", [])
        gen.lang_to_id = {t: i for t, i in zip(tok.convert_ids_to_tokens(lang_ids), lang_ids, strict=True)}
        gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return gen


def _processor(tok, n_mels: int):
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    fe = WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=SAMPLE_RATE_HZ,
        hop_length=HOP_LENGTH_SAMPLES,
        chunk_length=CHUNK_LENGTH_S,
        n_fft=N_FFT_SAMPLES,
    )
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def whisper_from_state(config, state: dict[str, torch.Tensor], what: str):
    """A ``WhisperForConditionalGeneration`` built from ``config`` and a complete ``state`` (no random init:
    built on the meta device, tensors assigned), with ``proj_out`` tied to the decoder embeddings."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(f"{what} mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ValueError(f"{what}: proj_out is not tied to the decoder embeddings")
    return model


def convert_ct2_to_hf(weights: PackagedWeights, out_dir: str | Path) -> dict[str, Any]:
    """Convert packaged CT2 Whisper weights into a transformers folder (model, processor, generation config).

    Returns a summary: parameters, vocabulary, layer counts, d_model, heads, mels, multilingual flag.
    """
    from transformers import WhisperConfig

    out_dir = Path(out_dir)
    v = read_model_bin(weights.model_bin)
    ct2_cfg = json.loads(Path(weights.config_json).read_text(encoding="utf-8"))
    vocab, d_model = v["decoder/embeddings/weight"].shape
    n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    activation = int(v.get("decoder/activation", np.int8(CT2_GELU_ACTIVATION_ID)))
    if activation != CT2_GELU_ACTIVATION_ID:
        raise ValueError(f"unexpected CT2 activation id {activation} (Whisper uses GELU = {CT2_GELU_ACTIVATION_ID})")
    multilingual = vocab > ENGLISH_ONLY_VOCAB
    tok = _build_tokenizer(weights.tokenizer_json, vocab)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        decoder_start_token_id=tok.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=None,  # these live in the generation config only (transformers 5 warns otherwise)
        begin_suppress_tokens=None,
    )
    model = whisper_from_state(config, _ct2_state_dict(v, int(d_model), n_enc, n_dec), "CT2 -> HF mapping")
    model.generation_config = _generation_config(tok, ct2_cfg, multilingual, config.max_target_positions)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    _processor(tok, config.num_mel_bins).save_pretrained(out_dir)
    return model_summary(model)


def model_summary(model) -> dict[str, Any]:
    """Sizes and flags of a Whisper model (parameters counted once, tied weights not twice)."""
    cfg = model.config
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "vocab": int(cfg.vocab_size),
        "encoder_layers": int(cfg.encoder_layers),
        "decoder_layers": int(cfg.decoder_layers),
        "d_model": int(cfg.d_model),
        "heads": int(cfg.encoder_attention_heads),
        "n_mels": int(cfg.num_mel_bins),
        "multilingual": bool(getattr(model.generation_config, "is_multilingual", cfg.vocab_size > ENGLISH_ONLY_VOCAB)),
    }


def load_whisper(path: str | Path, device: str = "cpu"):
    """Load ``(model, processor)`` from a local transformers Whisper folder (offline, eval mode).

    Raises ``ValueError("<path> is not a Whisper model folder: <reason>")`` for anything else.
    """
    path = Path(path)

    def bad(reason: str) -> ValueError:
        return ValueError(f"{path} is not a Whisper model folder: {reason}")

    if not path.is_dir():
        raise bad("no such folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise bad("config.json is missing")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise bad(f"config.json is not a JSON object ({err})") from None
    if model_type != "whisper":
        raise bad(f"config.json has model_type={model_type!r}, expected 'whisper'")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise bad("no weights (*.safetensors or pytorch_model.bin)")
    if not any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise bad("no processor_config.json / preprocessor_config.json (save the WhisperProcessor too)")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(path, local_files_only=True)
    processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model.to(device).eval(), processor


def _strip_generated(ids: list[int], eot_id: int, prompt_ids: set[int]) -> list[int]:
    """Generated ids up to (not including) the first <|endoftext|>, without forced prompt tokens."""
    if eot_id in ids:
        ids = ids[: ids.index(eot_id)]
    start = 0
    while start < len(ids) and ids[start] in prompt_ids:
        start += 1
    return ids[start:]


@torch.inference_mode()
def generate_tokens(
    model,
    processor,
    audios: list[np.ndarray],
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    language: str | None = None,
    task: str = "transcribe",
    return_timestamps: bool = False,
) -> list[tuple[list[int], str]]:
    """Decode 16 kHz mono float arrays; returns ``(token_ids, text)`` per clip, in input order.

    Batches are length-sorted (longest first). ``token_ids`` are the generated ids without the forced
    prompt and without <|endoftext|>/padding (timestamp tokens included when ``return_timestamps``);
    ``text`` is decoded without special or timestamp tokens and stripped. ``language``/``task`` are forced
    only for multilingual models (English-only models reject them). Clips longer than the feature
    extractor's window use transformers' sequential long-form decoding (which needs timestamps).
    """
    if not audios:
        return []
    _quiet_generate_logs()
    fe, tok = processor.feature_extractor, processor.tokenizer
    window_samples = int(fe.n_samples)
    gen = model.generation_config
    multilingual = bool(getattr(gen, "is_multilingual", False))
    gen_kwargs: dict[str, Any] = {"num_beams": num_beams, "do_sample": False, "max_new_tokens": max_new_tokens}
    if multilingual:
        gen_kwargs["task"] = task
        if language is not None:
            gen_kwargs["language"] = language
    eot_id = tok.convert_tokens_to_ids("<|endoftext|>")
    prompt_ids = {gen.decoder_start_token_id, getattr(gen, "no_timestamps_token_id", None)}
    prompt_ids |= set((getattr(gen, "lang_to_id", None) or {}).values())
    prompt_ids |= set((getattr(gen, "task_to_id", None) or {}).values())
    device, dtype = model.device, model.dtype
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]), reverse=True)
    results: list[tuple[list[int], str]] = [([], "")] * len(audios)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [np.asarray(audios[i], dtype=np.float32).reshape(-1) for i in idx]
        long_form = max(len(a) for a in batch) > window_samples
        extra: dict[str, Any] = {"return_timestamps": return_timestamps or long_form}
        if long_form:
            feats = fe(batch, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt", truncation=False,
                       padding="longest", return_attention_mask=True)
            extra["attention_mask"] = feats.attention_mask.to(device)
        else:
            feats = fe(batch, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt")
        out = model.generate(feats.input_features.to(device, dtype), **extra, **gen_kwargs)
        sequences = out["sequences"] if isinstance(out, dict) else out
        for i, row in zip(idx, sequences.tolist(), strict=True):
            ids = _strip_generated(row, eot_id, prompt_ids)
            results[i] = (ids, tok.decode(ids, skip_special_tokens=True).strip())
    return results


def transcribe(
    model,
    processor,
    audios: list[np.ndarray],
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    language: str | None = None,
    task: str = "transcribe",
) -> list[str]:
    """Greedy (by default) batched transcription; texts come back in input order (see :func:`generate_tokens`)."""
    outputs = generate_tokens(model, processor, audios, batch_size=batch_size, num_beams=num_beams,
                              max_new_tokens=max_new_tokens, language=language, task=task)
    return [text for _, text in outputs]
