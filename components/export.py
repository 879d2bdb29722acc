"""Exported forms of a Whisper model, written by the evaluate stage and loadable anywhere.

Kinds: ``torch_int8`` (``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``, ``proj_out`` included;
the int8 state dict + config + processor), ``ct2_float32`` / ``ct2_int8`` (CTranslate2's own converter,
:mod:`components.ct2_runtime`; works for shortened-window students), ``torch_vocab`` (float32, the output layer
restricted to the tokens of the training labels: :mod:`components.vocab`; a transformers folder + its kept ids),
``ct2_int8_vocab`` (CTranslate2 int8 of a copy whose vocabulary is those tokens; ids mapped back at decode time). Each export is written into a temporary
sibling folder and renamed into place (:func:`components.artifacts.atomic_dir`), so a killed run never leaves
a half-written export that a later ``askd transcribe --model`` could pick up.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from components.artifacts import atomic_dir, write_json_atomic
from components.speed import Form
from components.whisper_io import load_whisper

EXPORT_MANIFEST = "askd_export.json"
INT8_STATE_FILE = "model_int8.pt"
EXPORT_KINDS = ("torch_int8", "ct2_float32", "ct2_int8", "torch_vocab", "ct2_int8_vocab")


def folder_bytes(path: Path, patterns=("*.safetensors", "*.bin", "*.pt")) -> int:
    return int(sum(p.stat().st_size for pat in patterns for p in Path(path).glob(pat)))


def _count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def quantize_int8(model):
    """A dynamic-int8 copy of a torch Whisper (every ``nn.Linear``, ``proj_out`` included); eval mode."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13: quantize_dynamic is deprecated (migrate to torchao)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8).eval()


def export_torch_int8(model_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir``: the int8 state dict, config, generation config and processor of ``model_dir``."""
    import torch

    from components.vocab import VOCAB_FILE, apply_vocab_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, processor = load_whisper(model_dir)
    params = _count_params(model)
    keep = apply_vocab_file(model, model_dir)  # trained on a kept vocabulary: the int8 output layer is that set
    qmodel = quantize_int8(model)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    torch.save(qmodel.state_dict(), out_dir / INT8_STATE_FILE)
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if keep is not None:
        shutil.copy2(model_dir / VOCAB_FILE, out_dir / VOCAB_FILE)
    manifest = {"format": "torch_int8", "source": str(model_dir), "params": params,
                "quantization": "torch.ao.quantization.quantize_dynamic(nn.Linear, qint8)", "torch": torch.__version__}
    (out_dir / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def export_torch_vocab(model_dir: Path, out_dir: Path, texts: list[str] | None) -> Path:
    """Write ``out_dir``: a copy of the transformers folder ``model_dir`` + the kept token ids of ``texts``."""
    from components.vocab import load_with_kept_ids, write_vocab_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, _, keep = load_with_kept_ids(model_dir, texts, "torch_vocab")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(model_dir, out_dir)
    write_vocab_file(out_dir, keep, int(model.config.vocab_size), f"{len(texts)} training label texts")
    return out_dir


def _load_torch_int8(path: Path):
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    from components.vocab import apply_vocab_file

    config = WhisperConfig.from_pretrained(path, local_files_only=True)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig.from_pretrained(path, local_files_only=True)
    params = _count_params(model)
    apply_vocab_file(model, path)  # exported from a student trained on a kept vocabulary
    qmodel = quantize_int8(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage / quantized-tensor deprecation notes inside torch.load
        qmodel.load_state_dict(torch.load(path / INT8_STATE_FILE, weights_only=True))
    processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return qmodel, processor, params


def load_form(path: str | Path, name: str | None = None, *, ct2_encoder: str = "ctranslate2",
              fallback_dir: str | Path | None = None, ct2_decode_threads: int = 0) -> Form:
    """A :class:`Form` from a transformers Whisper folder, a torch_int8 export or a CTranslate2 export.

    ``ct2_decode_threads`` (CT2 exports; 0 = the encoder's thread count): threads of the decoder steps.
    """
    path = Path(path)
    name = name or path.name
    source = {"path": str(path), "name": name, "ct2_encoder": ct2_encoder,
              "fallback_dir": None if fallback_dir is None else str(fallback_dir),
              "ct2_decode_threads": int(ct2_decode_threads)}
    if (path / EXPORT_MANIFEST).is_file():
        model, processor, params = _load_torch_int8(path)
        return Form(name, "torch_int8", path, processor, model=model, params=params, bytes=folder_bytes(path),
                    source=source)
    if (path / "model.bin").is_file():
        from components.ct2_export import MANIFEST_FILE
        from components.ct2_runtime import Ct2Whisper

        manifest_file = path / MANIFEST_FILE
        manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
        compute = manifest.get("quantization", "float32")
        encoder = ct2_encoder if fallback_dir is not None else "ctranslate2"
        engine = Ct2Whisper(path, compute_type=compute, fallback_dir=fallback_dir, encoder=encoder,
                            decode_threads=ct2_decode_threads)
        params = int(manifest.get("params", 0))
        info = {"ct2_encoder": encoder, "ct2_threads": {"encoder": engine.intra_threads,
                                                        "decoder": engine.decode_threads}}
        if engine.ids is not None:
            info.update(kept_tokens=len(engine.ids.keep), vocab_size=int(manifest.get("vocab_size", 0)))
        return Form(name, f"ct2_{compute}" + ("_vocab" if engine.ids is not None else ""), path, engine.processor,
                    engine=engine, params=params, bytes=folder_bytes(path, ("model.bin",)), info=info, source=source)
    from components.vocab import apply_vocab_file

    model, processor = load_whisper(path)
    params = _count_params(model)
    keep = apply_vocab_file(model, path)
    if keep is None:
        return Form(name, "transformers", path, processor, model=model, params=params, bytes=folder_bytes(path),
                    source=source)
    return Form(name, "torch_vocab", path, processor, model=model, params=params, bytes=folder_bytes(path),
                info={"kept_tokens": len(keep), "vocab_size": int(model.config.vocab_size)}, source=source)


def make_export(base: Form, kind: str, exports_dir: Path, ct2_encoder: str = "ctranslate2",
                vocab_texts: list[str] | None = None, ct2_decode_threads: int = 0) -> Form:
    """Export ``base`` (a transformers form) as ``kind`` into ``exports_dir/<name>-<kind>`` and load it.

    ``vocab_texts``: the training label texts whose tokens a ``torch_vocab`` export keeps.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export {kind!r} (use one of {EXPORT_KINDS})")
    out = Path(exports_dir) / f"{base.name}-{kind}"
    with atomic_dir(out) as tmp:  # renamed into place only when complete
        if kind == "torch_int8":
            export_torch_int8(base.path, tmp)
        elif kind == "torch_vocab":
            export_torch_vocab(base.path, tmp, vocab_texts)
        elif kind == "ct2_int8_vocab":
            from components.vocab import export_ct2_vocab

            export_ct2_vocab(base.path, tmp, vocab_texts, quantization="int8")
        else:
            from components.ct2_export import export_ct2
            from components.vocab import export_ct2_vocab, read_vocab_file

            quantization = None if kind == "ct2_float32" else "int8"
            if read_vocab_file(base.path) is not None:  # trained on a kept vocabulary: the export keeps that set
                export_ct2_vocab(base.path, tmp, None, quantization=quantization)
            else:
                export_ct2(base.path, tmp, quantization=quantization)
    form = load_form(out, f"{base.name}_{kind}", ct2_encoder=ct2_encoder, fallback_dir=base.path,
                     ct2_decode_threads=ct2_decode_threads)
    form.params = form.params or base.params
    return form


def build_forms(cfg, models: dict[str, Path], vocab_texts: list[str] | None = None
                ) -> tuple[list[Form], dict[str, str]]:
    """Base forms, the exports of ``cfg.exports`` for ``cfg.export_models`` and the teacher's ``teacher_exports``."""
    forms = [load_form(p, name) for name, p in models.items()]
    status: dict[str, str] = {}
    exports_dir = Path(cfg.exports_dir)
    exports_dir.mkdir(parents=True, exist_ok=True)
    for stale in exports_dir.glob("*-*"):  # exports of an earlier run (another `exports` list) must not linger,
        kind = stale.name.rsplit("-", 1)[-1]  # nor the temporary folders of a killed run
        if stale.is_dir() and (kind in EXPORT_KINDS or kind.endswith((".partial", ".old"))):
            shutil.rmtree(stale)
    for base in list(forms):
        kinds = list(cfg.exports) if base.name in cfg.export_models else []
        if base.name == "teacher":
            kinds += [k for k in cfg.teacher_exports if k not in kinds]
        for kind in kinds:
            key = f"{base.name}_{kind}"
            try:
                forms.append(make_export(base, kind, exports_dir, cfg.ct2_encoder, vocab_texts,
                                         cfg.ct2_decode_threads))
                status[key] = "ok"
            except (ImportError, ValueError, RuntimeError, OSError) as err:
                status[key] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
    write_json_atomic(exports_dir / "exports.json", status)
    return forms, status
