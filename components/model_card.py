"""The generated model card (``MODEL_CARD.md``) of a registry version: a pure function of what was measured.

Sections: intended use, data, training recipe, metrics vs the teacher (from ``metrics/eval.json``), gate
decision and reasons (and a forced registration's reason), limitations, lineage. Figures are copied from the
metrics files, never re-computed or rounded into something else.
"""

from __future__ import annotations

from typing import Any

from components.report import _fmt  # one number format for the report and the card

SPEED_KEYS = ("natural_b1", "natural_b8", "fixed_b1", "fixed_b8")




def metrics_table(eval_metrics: dict[str, Any] | None, reference: str = "teacher") -> list[str]:
    """Markdown rows: one per (form, set) with WER, CER, hallucination rate and delta vs the reference."""
    forms = (eval_metrics or {}).get("forms") or {}
    if not forms:
        return ["No evaluation metrics were found (metrics/eval.json missing or empty)."]
    ref_sets = (forms.get(reference) or {}).get("sets") or {}
    rows = ["| form | set | clips | WER % | Δ WER vs " + reference + " (points) | CER % | hallucination % |",
            "|---|---|---|---|---|---|---|"]
    order = [reference] + sorted(f for f in forms if f != reference)
    for form in order:
        for set_name, m in sorted(((forms.get(form) or {}).get("sets") or {}).items()):
            ref_wer = (ref_sets.get(set_name) or {}).get("wer")
            delta = None if form == reference or ref_wer is None or m.get("wer") is None else m["wer"] - ref_wer
            rows.append(f"| {form} | {set_name} | {_fmt(m.get('clips'))} | {_fmt(m.get('wer'))} | {_fmt(delta)} | "
                        f"{_fmt(m.get('cer'))} | {_fmt(m.get('hallucination_rate'))} |")
    speedup = ((eval_metrics or {}).get("speed") or {}).get("speedup") or {}
    if speedup:
        keys = [k for k in SPEED_KEYS if any(k in v for v in speedup.values())]
        rows += ["", f"Speed-up vs {reference} (reference seconds / form seconds, interleaved runs):", "",
                 "| form | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for form, values in sorted(speedup.items()):
            rows.append(f"| {form} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    return rows


def _kd_window(teacher_window: Any) -> str:
    if teacher_window == "full":
        return "its own window"
    return "the student window" if teacher_window in (None, "student") else f"a {teacher_window} s window"


def _recipe(settings: dict[str, Any]) -> list[str]:
    train = settings.get("train") or {}
    optim, askd, student = train.get("optim") or {}, train.get("askd") or {}, train.get("student") or {}
    ce = askd.get("ce_weight") if askd.get("ce_weight") is not None else "1 - alpha - beta"
    n_avg = train.get("average_best") or 1
    weights = (f"mean of the {n_avg} evaluation points" if n_avg > 1 else "the evaluation point") + \
        " with the lowest validation WER"
    optional = []
    if student.get("vocab_top_ranks"):
        optional = [f"- vocabulary: trained to spell with the token ids below {student['vocab_top_ranks']} and the "
                    "special tokens only (kept ids in `askd_vocab.json`; askd's loaders and exports score only those; "
                    "plain `from_pretrained` loads the whole output layer: pass the other ids as `suppress_tokens`)"]
    if student.get("init_from"):
        optional.append(f"- initialised from the trained student `{student['init_from']}` (its layers, not the "
                        "teacher's; its weights' SHA-256 is `student.init_from_sha256` in `metrics/train.json`)")
    return [
        f"- preset: `{train.get('preset')}`, profile: `{settings.get('profile')}`",
        f"- student: decoder layers {student.get('decoder_layers')}, encoder window {student.get('window_s')} s, "
        f"frozen encoder: {student.get('freeze_encoder')}, frozen token embedding / output layer: "
        f"{student.get('freeze_embeddings')}",
        f"- optimiser: lr {optim.get('lr')}, batch {optim.get('batch_size')}, max steps {optim.get('max_steps')}, "
        f"schedule {optim.get('lr_schedule')}",
        f"- loss: alpha {askd.get('alpha_schedule')} {askd.get('alpha_start')} → {askd.get('alpha_end')}, "
        f"self-teacher {askd.get('self_teacher')} (weight {askd.get('self_kd_weight')}), "
        f"temperature {askd.get('temperature')}, CE weight {ce}, KD targets from the teacher at "
        f"{_kd_window(train.get('teacher_window'))}",
        f"- saved weights: {weights}",
        *optional,
    ]


def _lineage(lineage: dict[str, Any]) -> list[str]:
    git = lineage.get("git") or {}
    dvc = lineage.get("dvc") or {}
    pk = lineage.get("packages") or {}
    lines = [f"- git commit: `{git.get('commit') or 'unknown'}`"
             + (" (uncommitted changes)" if git.get("dirty") else "")
             + (f" – {git['note']}" if git.get("note") else "")]
    if dvc.get("data"):
        lines += [f"- data `{path}`: `{digest}`" for path, digest in dvc["data"].items()]
    else:
        lines.append(f"- data hashes: {dvc.get('note') or 'none recorded'}")
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    return lines


def render(info: dict[str, Any]) -> str:
    """Markdown card from ``info``: model_name, version, created_at, intended_use, settings (dict),
    eval (eval.json dict or None), gate (gate.json dict or None), forced/force_reason, lineage, files."""
    settings = info.get("settings") or {}
    gate = info.get("gate") or {}
    lineage = info.get("lineage") or {}
    teacher = lineage.get("teacher") or {}
    reference = gate.get("reference") or "teacher"
    prepare = settings.get("prepare") or {}
    synth = settings.get("synth") or {}
    out = [
        f"# {info.get('model_name')} – version {info.get('version')}",
        "",
        f"Registered {info.get('created_at')}. Generated from the pipeline's metrics; do not edit.",
        "",
        "## Intended use",
        "",
        str(info.get("intended_use") or ""),
        "",
        "## Data",
        "",
        f"- prepare source: `{prepare.get('source')}` (`{prepare.get('input')}`)",
    ]
    if prepare.get("source") == "synth":
        out.append(f"- synthetic English speech: {synth.get('n_train')} train / {synth.get('n_validation')} validation "
                   f"/ {synth.get('n_test')} test clips (Piper), {synth.get('n_test_ood')} out-of-domain (espeak-ng), "
                   f"{synth.get('n_test_longform')} long-form")
    if "test_real" in ((settings.get("evaluate") or {}).get("sets") or ()):
        out.append("- test_real: real human speech, the Asterisk English prompts (one professional voice, 16 kHz "
                   "G.722; CC-BY-SA 3.0, Digium), never trained on")
    out.append(f"- labels: pseudo-labels by the teacher `{teacher.get('model', 'unknown')}` "
               f"({_fmt(teacher.get('params'))} parameters)")
    out += ["", "## Training recipe", "", *_recipe(settings), "",
            "## Metrics (same run, same decode settings)", "", *metrics_table(info.get("eval"), reference), ""]
    out += ["## Gate decision", ""]
    if not gate:
        out.append("No gate result was found.")
    else:
        out.append(f"**{'PASSED' if gate.get('passed') else 'BLOCKED'}** (candidate `{gate.get('candidate')}` vs "
                   f"`{reference}`).")
        out += [""] + [f"- {line}" for line in gate.get("checks") or []]
    if info.get("forced"):
        out += ["", f"**Registered despite the gate (--force).** Reason given: {info.get('force_reason')}"]
    out += ["", "## Limitations", "",
            "- Quality is measured only on the pipeline's own test sets (listed above); other accents, domains, "
            "noise levels and languages are untested.",
            "- Speed figures are from the evaluation machine "
            f"({((lineage.get('eval_protocol') or {}).get('hardware') or {}).get('cpu', 'unknown CPU')}) and do "
            "not transfer to other hardware.",
            "- The student inherits the teacher's errors and biases (it learns from pseudo-labels).",
            "", "## Lineage", "", *_lineage(lineage), "",
            "## Files", "", f"{len(info.get('files') or [])} files, "
            f"{sum(f.get('size', 0) for f in info.get('files') or [])} bytes; sha256 of each in manifest.json.", ""]
    return "\n".join(out)
