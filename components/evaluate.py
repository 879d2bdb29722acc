"""Stage `evaluate`: teacher, student and their exports on every test set, in one run, same decode settings.

Forms (:class:`components.speed.Form`): a transformers Whisper folder, a torch dynamic-int8 export of one (``torch_int8``:
``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``, ``proj_out`` included), or a CTranslate2
export (``ct2_float32`` / ``ct2_int8``, :mod:`components.ct2_runtime`; works for the 10 s student too), or a
float32 folder whose output layer only scores the tokens of the training labels (``torch_vocab``, :mod:`components.vocab`).
Exports (:mod:`components.export`) are written under ``exports_dir/<model>-<export>/`` and load back with
:func:`components.export.load_form`.

Decoding: greedy (``num_beams``), ``max_new_tokens``, ``batch_size``, no timestamps, the same for every form.
Long-form (``longform``, clips longer than a form's window): **silence** (default) cuts the clip at pauses into
consecutive segments of at most the window (:func:`components.speed.silence_spans`: energy minimum in the second
half of each window, the idea of the VAD segmentation of faster-whisper / WhisperX), decodes every segment
short-form (batched with the other clips) and joins their tokens. **chunked** is the algorithm of transformers' ASR
pipeline with ``chunk_length_s`` = the form's window and ``stride_length_s`` = window / 6 on each side: overlapping
windows whose tokens are merged by the longest common sequence. Measured on the quick student, windows cut
mid-word make a 2-layer decoder loop, so pauses are the default. Both beat sequential long-form here because the
student was trained without timestamp tokens, which sequential decoding needs, and both run on every backend.
The 30 s teacher decodes the 20-28 s clips in one window; the 10 s student in 3-4 windows.

Metrics per set (corpus level, percent, text normalised by Whisper's English normaliser, components.text):
``wer``, ``cer``, ``insertion_rate`` (inserted words / reference words), ``empty_rate`` (clips whose normalised
output has no word), ``repeated_ngram_rate`` (clips whose output repeats more than ``repetition_threshold`` of
its word 3-grams, components.label_filter), ``hallucination_rate`` (clips that loop by that measure or emit more
than ``max_tokens_per_s`` tokens per second of audio).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from components.export import build_forms, load_form
from components.label_filter import repeated_ngram_fraction
from components.speed import Form, chunk_spans, merge_chunk_tokens  # noqa: F401  (re-exported)
from components.text import cer, normalize, wer
from components.whisper_io import SAMPLE_RATE_HZ

NORMALISER = "transformers EnglishTextNormalizer (Whisper), empty spelling table (components.text)"
LONGFORM = {
    "silence": "cut at pauses: segments <= the form's encoder window, each cut at the quietest 0.1 s of the window's "
               "second half; segment tokens joined",
    "chunked": "chunked: window = the form's encoder window, stride = window/6 each side, LCS token merge (ASR pipeline)",
}
PERCENT = 100.0


class ManifestError(ValueError):
    """A manifest with missing or undecodable audio; the message lists every bad row."""


# ---------------------------------------------------------------------------------------------------------------
# metrics


def insertion_rate(references: list[str], hypotheses: list[str]) -> float:
    """Inserted words per reference word, in percent (normalised text; empty references: all words inserted)."""
    import jiwer

    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    total = sum(len(r.split()) for r in refs)
    inserted = sum(len(h.split()) for r, h in zip(refs, hyps, strict=True) if not r)
    kept = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if kept:
        inserted += jiwer.process_words([r for r, _ in kept], [h for _, h in kept]).insertions
    if total == 0:
        return 0.0 if inserted == 0 else float("inf")
    return PERCENT * inserted / total


def has_words(text: str) -> bool:
    """True when the normalised text holds a letter or digit (the normaliser may leave a lone '.')."""
    return any(ch.isalnum() for ch in normalize(text))


def empty_rate(hypotheses: list[str]) -> float:
    """Share of outputs (percent) with no word after normalisation."""
    if not hypotheses:
        return 0.0
    return PERCENT * sum(not has_words(h) for h in hypotheses) / len(hypotheses)


def repeated_ngram_rate(hypotheses: list[str], threshold: float = 0.3) -> float:
    """Share of outputs (percent) whose repeated word 3-gram fraction exceeds ``threshold``."""
    if not hypotheses:
        return 0.0
    return PERCENT * sum(repeated_ngram_fraction(normalize(h)) > threshold for h in hypotheses) / len(hypotheses)


def hallucination_flags(
    hypotheses: list[str], token_counts: list[int], durations_s: list[float], *,
    repetition_threshold: float = 0.3, max_tokens_per_s: float = 12.0,
) -> list[bool]:
    """Per clip: the output loops (repeated 3-grams) or has an implausible token rate."""
    return [
        repeated_ngram_fraction(normalize(h)) > repetition_threshold or (d > 0 and n / d > max_tokens_per_s)
        for h, n, d in zip(hypotheses, token_counts, durations_s, strict=True)
    ]


def set_metrics(
    references: list[str], hypotheses: list[str], token_counts: list[int], durations_s: list[float], *,
    repetition_threshold: float = 0.3, max_tokens_per_s: float = 12.0,
) -> dict[str, Any]:
    """Every metric of one (form, set) pair; rates in percent, rounded to 3 decimals."""
    flags = hallucination_flags(hypotheses, token_counts, durations_s, repetition_threshold=repetition_threshold,
                                max_tokens_per_s=max_tokens_per_s)
    n = len(hypotheses)
    out = {
        "wer": wer(references, hypotheses),
        "cer": cer(references, hypotheses),
        "insertion_rate": insertion_rate(references, hypotheses),
        "empty_rate": empty_rate(hypotheses),
        "repeated_ngram_rate": repeated_ngram_rate(hypotheses, repetition_threshold),
        "hallucination_rate": PERCENT * sum(flags) / n if n else 0.0,
        "clips": n,
        "audio_s": float(sum(durations_s)),
        "tokens": int(sum(token_counts)),
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# data


@dataclass
class EvalSet:
    name: str
    ids: list[str]
    audios: list[np.ndarray]
    references: list[str]

    @property
    def durations_s(self) -> list[float]:
        return [len(a) / SAMPLE_RATE_HZ for a in self.audios]


def load_prepared_sets(prepared_dir: Path, names, max_clips: int | None = None) -> tuple[list[EvalSet], list[str]]:
    """The test sets of a prepared dataset (clips with a transcript); also the names it lacks (or has empty)."""
    import datasets

    from components.audio import dataset_audio_arrays

    prepared_dir = Path(prepared_dir)
    if not (prepared_dir / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"no prepared dataset at '{prepared_dir}' (run the prepare stage first)")
    dd = datasets.load_from_disk(str(prepared_dir))
    sets, missing = [], []
    for name in names:
        if name not in dd:
            missing.append(name)
            continue
        ds = dd[name].filter(lambda has: bool(has), input_columns="has_text", keep_in_memory=True)
        if len(ds) == 0:  # prepare saves every split name, some empty; audio-only clips cannot be scored
            missing.append(name)
            continue
        if max_clips is not None:
            ds = ds.select(range(min(max_clips, len(ds))))
        sets.append(EvalSet(name, list(ds["id"]), dataset_audio_arrays(ds), list(ds["text"])))
    return sets, missing


def load_test_sets(dataset_dirs: list[Path], names, max_clips: int | None = None) -> tuple[list[EvalSet], list[str]]:
    """Each named set from the first of ``dataset_dirs`` that has it (the prepared data, then real_speech's);
    also the names none of them has. The first folder must exist; a later one that does not is skipped."""
    if not (Path(dataset_dirs[0]) / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"no prepared dataset at '{dataset_dirs[0]}' (run the prepare stage first)")
    found: dict[str, EvalSet] = {}
    for folder in dataset_dirs:
        wanted = [n for n in names if n not in found]
        if wanted and (Path(folder) / "dataset_dict.json").is_file():
            found.update({s.name: s for s in load_prepared_sets(folder, wanted, max_clips)[0]})
    return [found[n] for n in names if n in found], [n for n in names if n not in found]


def drop_training_overlap(eval_set: EvalSet, training_texts: set[str]) -> tuple[EvalSet, int]:
    """``eval_set`` without the clips whose normalised text is a normalised training transcript; and how many."""
    keep = [i for i, ref in enumerate(eval_set.references) if normalize(ref) not in training_texts]
    kept = EvalSet(eval_set.name, [eval_set.ids[i] for i in keep], [eval_set.audios[i] for i in keep],
                   [eval_set.references[i] for i in keep])
    return kept, len(eval_set.ids) - len(keep)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_manifest(path: str | Path) -> EvalSet:
    """A CSV with ``audio`` and ``text`` columns (audio paths relative to the CSV) as one :class:`EvalSet`.

    Every missing, empty, corrupt or zero-length file is collected; if any, one :class:`ManifestError`
    lists them all (row number, path, reason).
    """
    from components.audio import AudioDecodeError, decode_audio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if "audio" not in columns or "text" not in columns:
                raise ManifestError(f"manifest {path} needs 'audio' and 'text' columns (has: {', '.join(columns)})")
            rows = list(reader)
    except UnicodeDecodeError:
        line = next(n for n, raw in enumerate(path.read_bytes().splitlines(), start=1) if not _is_utf8(raw))
        raise ManifestError(f"manifest {path} is not UTF-8 (first bad byte on line {line}): re-save it as UTF-8") from None
    if not rows:
        raise ManifestError(f"manifest {path} has no rows")
    ids, audios, refs, bad = [], [], [], []
    for line, row in enumerate(rows, start=2):
        audio_path = path.parent / (row["audio"] or "").strip()
        try:
            audio, _ = decode_audio(audio_path)
            if audio.size == 0:
                raise AudioDecodeError("zero_length", "no samples")
        except FileNotFoundError:
            bad.append(f"line {line}: {row['audio']}: missing ({audio_path})")
            continue
        except AudioDecodeError as err:
            bad.append(f"line {line}: {row['audio']}: {err}")
            continue
        ids.append(row.get("id") or row["audio"])
        audios.append(audio)
        refs.append(row["text"] or "")
    if bad:
        raise ManifestError(f"manifest {path}: {len(bad)} of {len(rows)} audio files are missing or corrupt:\n"
                            + "\n".join(bad))
    return EvalSet(path.stem, ids, audios, refs)


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def evaluate_form(form: Form, sets: list[EvalSet], cfg, progress=None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics per set for one form, plus per-clip prediction rows (``progress``: a tqdm bar, one tick per set)."""
    metrics, rows = {}, []
    for s in sets:
        if progress is not None:
            progress.set_postfix_str(f"{form.name} on {s.name} ({len(s.audios)} clips)")
        started = time.perf_counter()
        outs = form.decode(s.audios, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                           num_beams=cfg.num_beams, stride_fraction=cfg.longform_stride_fraction,
                           longform=cfg.longform)
        seconds = time.perf_counter() - started
        hyps, counts = [o[1] for o in outs], [len(o[0]) for o in outs]
        m = set_metrics(s.references, hyps, counts, s.durations_s, repetition_threshold=cfg.repetition_threshold,
                        max_tokens_per_s=cfg.max_tokens_per_s)
        m["decode_seconds"] = round(seconds, 2)
        m["chunked_clips"] = sum(o[2] > 1 for o in outs)
        metrics[s.name] = m
        for clip_id, ref, (ids, hyp, windows) in zip(s.ids, s.references, outs, strict=True):
            rows.append({"form": form.name, "set": s.name, "id": clip_id, "reference": ref, "hypothesis": hyp,
                         "wer": round(wer([ref], [hyp]), 2) if has_words(ref) else "", "tokens": len(ids),
                         "windows": windows})
        if progress is not None:
            progress.update(1)
    return metrics, rows


def form_summary(form: Form) -> dict[str, Any]:
    return {"kind": form.kind, "path": str(form.path) if form.path else None, "params": form.params,
            "bytes": form.bytes, "window_s": round(form.window_samples / SAMPLE_RATE_HZ, 2), **form.info}


def protocol(cfg, forms: list[Form]) -> dict[str, Any]:
    from components.speed import hardware, package_versions

    return {
        "normaliser": NORMALISER,
        "decode": {"num_beams": cfg.num_beams, "do_sample": False, "max_new_tokens": cfg.max_new_tokens,
                   "batch_size": cfg.batch_size, "return_timestamps": False, "length_sorted": True},
        "longform": LONGFORM[cfg.longform],
        "longform_stride_fraction": cfg.longform_stride_fraction,
        "hallucination": {"repetition_threshold": cfg.repetition_threshold, "ngram": 3,
                          "max_tokens_per_s": cfg.max_tokens_per_s},
        "windows_s": {f.name: round(f.window_samples / SAMPLE_RATE_HZ, 2) for f in forms},
        "hardware": hardware(),
        "packages": package_versions(),
    }


def training_label_texts(labels_dir: Path | None, split: str = "train") -> list[str] | None:
    """The teacher's pseudo-labels of ``split`` in the label stage's output (None when it is not there)."""
    if labels_dir is None or not Path(labels_dir).is_dir():
        return None
    from datasets import load_from_disk

    labelled = load_from_disk(str(labels_dir))
    if split not in labelled or "teacher_text" not in labelled[split].column_names:
        return None
    return [str(t) for t in labelled[split]["teacher_text"]]


def training_texts(labels_dir: Path | None, split: str = "train") -> set[str]:
    """Normalised transcripts the student trains on: references and teacher labels of the label stage's ``split``."""
    if labels_dir is None or not (Path(labels_dir) / "dataset_dict.json").is_file():
        return set()
    from datasets import load_from_disk

    labelled = load_from_disk(str(labels_dir))
    if split not in labelled:
        return set()
    columns = [c for c in ("text", "teacher_text") if c in labelled[split].column_names]
    return {normalize(str(t)) for c in columns for t in labelled[split][c]} - {""}


def disjoint_sets(sets: list[EvalSet], labels_dir: Path | None) -> tuple[list[EvalSet], dict[str, int]]:
    """Every set without clips whose text the student trained on; the number dropped per set."""
    texts = training_texts(labels_dir)
    out, dropped = [], {}
    for s in sets:
        kept, dropped[s.name] = drop_training_overlap(s, texts)
        if kept.ids:
            out.append(kept)
    return out, dropped


def write_model_cards(results: dict[str, Any], forms: list[Form], teacher_dir: Path, exports_dir: Path,
                      reports_dir: Path) -> None:
    """A model card (Hugging Face front matter + this run's WERs) in each student export folder (``README.md``)
    and for the transformers student in ``reports/model_card.md``."""
    import json

    from components.artifacts import atomic_file
    from components.model_card import export_card

    try:
        teacher_model = json.loads((teacher_dir / "teacher_info.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError):
        teacher_model = None
    for form in forms:
        if not form.name.startswith("student") or form.path is None:
            continue
        inside_exports = Path(exports_dir).resolve() in Path(form.path).resolve().parents
        target = Path(form.path) / "README.md" if inside_exports else reports_dir / "model_card.md"
        with atomic_file(target) as tmp:
            tmp.write_text(export_card(form.name, results, teacher_model), encoding="utf-8")


def run_evaluate(cfg, teacher_dir: Path, student_dir: Path, prepared_dir: Path,
                 labels_dir: Path | None = None, real_dir: Path | None = None) -> dict[str, Any]:
    """The DVC stage: evaluate, measure speed, write metrics/eval.json, the report and the plots.

    Sets come from the prepared data, then from ``real_dir`` (the real_speech stage's ``test_real``); clips whose
    text is a training transcript of ``labels_dir`` (the label stage's output) are dropped and counted. The labels
    also give the pruned-vocabulary exports (``torch_vocab``, ``ct2_int8_vocab``) the tokens they keep.
    """
    from components.artifacts import write_metrics
    from components.report import clip_lengths, write_predictions, write_report
    from components.speed import measure_speed, speed_sample

    started = time.perf_counter()
    sets, missing = load_test_sets([Path(prepared_dir), *([Path(real_dir)] if real_dir else [])], cfg.sets,
                                   cfg.max_clips)
    sets, overlap = disjoint_sets(sets, labels_dir)
    missing += [name for name, n in overlap.items() if n and name not in {s.name for s in sets}]
    if not sets:
        raise ValueError(f"none of the evaluate.sets {list(cfg.sets)} is in the prepared dataset '{prepared_dir}'"
                         + (f" or in '{real_dir}'" if real_dir else ""))
    wants_vocab = any(k.endswith("_vocab") for k in (*cfg.exports, *cfg.teacher_exports))
    forms, export_status = build_forms(cfg, {"teacher": Path(teacher_dir), "student": Path(student_dir)},
                                       training_label_texts(labels_dir) if wants_vocab else None)
    windows_s = [f.window_samples / SAMPLE_RATE_HZ for f in forms]
    results: dict[str, Any] = {"forms": {}, "missing_sets": missing, "exports": export_status,
                               "training_overlap_dropped": overlap,
                               "set_lengths": {s.name: clip_lengths(s.durations_s, windows_s) for s in sets}}
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(forms) * len(sets), desc="evaluate", unit="set", dynamic_ncols=True) as bar:
        for form in forms:
            per_set, form_rows = evaluate_form(form, sets, cfg, bar)
            results["forms"][form.name] = {**form_summary(form), "sets": per_set}
            rows += form_rows
    teacher_sets = results["forms"]["teacher"]["sets"]
    results["wer_delta_points"] = {
        name: {s: round(f["sets"][s]["wer"] - teacher_sets[s]["wer"], 3) for s in teacher_sets}
        for name, f in results["forms"].items() if name != "teacher"
    }
    by_name = {s.name: s for s in sets}
    if cfg.speed_clips > 0 and cfg.speed_set in by_name:
        audios = speed_sample(by_name[cfg.speed_set].audios, cfg.speed_clips, min(f.window_samples for f in forms))
        tqdm.write(f"speed: {len(forms)} forms x {len(audios)} clips, {cfg.speed_rounds} interleaved rounds")
        results["speed"] = measure_speed(forms, audios, cfg, reference="teacher")
    results["protocol"] = protocol(cfg, forms)
    results["seconds"] = round(time.perf_counter() - started, 1)
    reports_dir = Path(cfg.reports_dir)
    write_predictions(reports_dir / "eval_predictions.csv", rows)
    write_report(results, reports_dir)
    write_metrics("eval", results)
    write_model_cards(results, forms, Path(teacher_dir), Path(cfg.exports_dir), reports_dir)
    return {"wer": {n: {s: m["wer"] for s, m in f["sets"].items()} for n, f in results["forms"].items()},
            "speedup": results.get("speed", {}).get("speedup"), "exports": export_status,
            "missing_sets": missing, "seconds": results["seconds"]}


def evaluate_manifest(cfg, manifest: Path, model_paths: list[Path], out: Path) -> dict[str, Any]:
    """``askd evaluate``: every model on one CSV manifest, same decode settings; writes ``out`` (JSON)."""
    from components.artifacts import write_json_atomic

    eval_set = load_manifest(manifest)
    forms = [load_form(p, p.name if list(model_paths).count(p) == 1 else f"{p.name}_{i}",
                       ct2_decode_threads=cfg.ct2_decode_threads) for i, p in enumerate(model_paths)]
    result: dict[str, Any] = {"manifest": str(manifest), "forms": {}}
    with tqdm(total=len(forms), desc="evaluate", unit="model", dynamic_ncols=True) as bar:
        for form in forms:
            per_set, rows = evaluate_form(form, [eval_set], cfg, progress=bar)
            result["forms"][form.name] = {**form_summary(form), "metrics": per_set[eval_set.name],
                                          "predictions": [{k: r[k] for k in ("id", "reference", "hypothesis")}
                                                          for r in rows]}
    result["protocol"] = protocol(cfg, forms)
    write_json_atomic(out, result)
    return {name: f["metrics"] for name, f in result["forms"].items()}
