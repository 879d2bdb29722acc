"""CTranslate2 export of a Whisper folder: convert once with CTranslate2's own converter, cache by content.

* :func:`export_ct2` converts a local transformers Whisper folder with CTranslate2's own
  ``TransformersConverter`` (offline: a local path never touches the hub) and copies the processor files and
  ``generation_config.json`` next to ``model.bin``, so the CT2 folder is self-contained.
* :func:`ensure_ct2` converts once into a cache folder keyed by a hash of the model files (weights, configs,
  tokenizer), the stored quantisation and the ctranslate2 version, written atomically, and reuses it. The cache
  lives outside the model folder (default ``data/interim/ct2``): model folders are DVC outputs/dependencies
  and must not change.

Decoding an exported folder: :class:`components.ct2_runtime.Ct2Whisper`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from components.artifacts import atomic_dir, sha256_files

DEFAULT_CACHE_ROOT = Path("data/interim/ct2")
COMPUTE_TYPES = ("float32", "int8", "int8_float32")
MANIFEST_FILE = "askd_ct2.json"
FORMAT_VERSION = 1  # bump when the layout of an exported folder changes (invalidates the cache)
WHISPER_SOURCE_POSITIONS = 1500  # 30 s of encoder positions
# Files the runtime needs besides model.bin: the processor (feature extractor + tokenizer) and the
# generation config (prompt ids, suppress lists). Copied when present.
SIDECAR_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "chat_template.jinja",
)
_HASHED_SUFFIXES = {".safetensors", ".json", ".bin", ".txt"}


def _ctranslate2():
    """Import ctranslate2 with its OpenMP threads sleeping between parallel regions (OMP_WAIT_POLICY=PASSIVE).

    CTranslate2 bundles its own libgomp, which reads the environment once, when the module is first imported
    (torch's OpenMP runtime is separate and already initialised by then, so it is unaffected). With the default
    spinning, CT2's threads busy-wait between the decoder's many small parallel regions: on 2 shared cores
    with another job running, a decode took 2-8.5 s instead of 0.65 s, and two CT2 models in one process
    (e.g. teacher + student) slowed each other 4x. A value set by the user is kept.
    """
    if "ctranslate2" in sys.modules:
        return sys.modules["ctranslate2"]
    unset = "OMP_WAIT_POLICY" not in os.environ
    if unset:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import ctranslate2
    finally:
        if unset:
            os.environ.pop("OMP_WAIT_POLICY", None)
    return ctranslate2


def ctranslate2_version() -> str | None:
    try:
        return _ctranslate2().__version__
    except ImportError:
        return None


def _whisper_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{model_dir} is not a Whisper model folder: config.json is missing")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") != "whisper":
        raise ValueError(f"{model_dir} is not a Whisper model folder: model_type={config.get('model_type')!r}")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("pytorch_model*.bin")):
        raise ValueError(f"{model_dir} is not a Whisper model folder: no weights (*.safetensors)")
    return config


def _check_quantization(quantization: str | None) -> None:
    if quantization is not None and quantization not in COMPUTE_TYPES:
        raise ValueError(f"quantization {quantization!r} not supported here (use None or one of {COMPUTE_TYPES})")


def export_ct2(model_dir: str | Path, out_dir: str | Path, quantization: str | None = None,
               vocabulary: list[str] | None = None) -> Path:
    """Convert a local transformers Whisper folder into a CTranslate2 folder ``out_dir`` (replaced if present).

    ``quantization`` None keeps the weights' float32 (exact); ``int8`` / ``int8_float32`` store int8 weights.
    ``vocabulary`` (one token string per embedding row) replaces the tokenizer's list in the converted spec, for a
    model whose vocabulary was pruned (:func:`components.vocab.export_ct2_vocab`); None keeps the tokenizer's.
    The processor files and ``generation_config.json`` are copied, plus a manifest (``askd_ct2.json``).
    Shortened-window models (``max_source_positions < 1500``) are supported: CTranslate2 takes the window from
    the position-embedding table, and the copied feature extractor pads to that window.
    """
    ctranslate2 = _ctranslate2()
    from ctranslate2.converters import TransformersConverter

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_quantization(quantization)
    config = _whisper_config(model_dir)
    if model_dir.resolve() == out_dir.resolve() or model_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"the CT2 output folder {out_dir} must not contain the source model {model_dir}")
    has = {name for name in SIDECAR_FILES if (model_dir / name).is_file()}
    if not has & {"preprocessor_config.json", "processor_config.json"} or not has & {"tokenizer.json", "vocab.json"}:
        raise ValueError(f"{model_dir} has no processor / tokenizer files: save the WhisperProcessor too")
    # A local folder: AutoConfig / AutoTokenizer / from_pretrained read files only. low_cpu_mem_usage stays off
    # (transformers 5 loads lazily anyway); dtype comes from config.json (float32 for our folders).
    if vocabulary is None:
        converter = TransformersConverter(str(model_dir))
    else:
        tokens = list(vocabulary)

        class _KeptVocabularyConverter(TransformersConverter):  # per call: no patch of the loader for the process
            def _load(self):
                spec = super()._load()
                spec.register_vocabulary(tokens)
                return spec

        converter = _KeptVocabularyConverter(str(model_dir))
    converter.convert(str(out_dir), quantization=quantization, force=True)
    copied = []
    for name in SIDECAR_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
            copied.append(name)
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": str(model_dir.resolve()),
        "quantization": quantization or "float32",
        "ctranslate2": ctranslate2.__version__,
        "max_source_positions": int(config.get("max_source_positions", WHISPER_SOURCE_POSITIONS)),
        "num_mel_bins": int(config.get("num_mel_bins", 80)),
        "copied_files": copied,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over a model folder's weights, configs and tokenizer files (names and contents)."""
    return sha256_files([p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in _HASHED_SUFFIXES])


def ensure_ct2(
    model_dir: str | Path, compute_type: str = "float32", cache_root: str | Path | None = None
) -> Path:
    """The CT2 folder of ``model_dir`` for ``compute_type``, converting it once into the cache.

    float32 stores float32 weights; int8 / int8_float32 store int8 weights. The folder is
    ``<cache_root>/<model name>-<hash>-<quantization>``, keyed by :func:`model_fingerprint`, the
    quantisation, the ctranslate2 version and this module's format version; it appears atomically.
    Not safe against two processes converting the same model at the same moment.
    """
    model_dir = Path(model_dir)
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type {compute_type!r} not supported (use one of {COMPUTE_TYPES})")
    _whisper_config(model_dir)
    quantization = None if compute_type == "float32" else compute_type
    key_blob = json.dumps(
        {
            "model": model_fingerprint(model_dir),
            "quantization": compute_type,
            "ctranslate2": ctranslate2_version(),
            "format": FORMAT_VERSION,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_blob.encode()).hexdigest()[:16]
    root = Path(cache_root) if cache_root is not None else DEFAULT_CACHE_ROOT
    final = root / f"{model_dir.resolve().name}-{key}-{compute_type}"
    if (final / "model.bin").is_file() and (final / MANIFEST_FILE).is_file():
        return final
    with atomic_dir(final) as tmp:
        export_ct2(model_dir, tmp, quantization=quantization)
    return final
