"""Prefect UI artifacts from the stages' metrics files (``metrics/*.json``, ``reports/*.png``).

The ``*_rows`` / ``*_markdown`` builders are pure (dict in, rows or text out); :func:`publish` reads a stage's
files after it ran and creates the artifacts (keys are stable, so the UI keeps one versioned artifact per key).
A metrics file that is absent is skipped with a log line, not an error: a stage may not exist in a given DAG.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

EMBED_MAX_BYTES = 512 * 1024  # plots larger than this are linked by path only
PLOTS = ("eval_wer.png", "eval_wer_vs_speed.png")
TRAIN_PLOTS = ("train_curves.png",)
METRICS_FILES = {"evaluate": "eval"}  # stage -> metrics/<name>.json where the names differ


def _num(value: Any, digits: int = 2) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def prepare_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per split (clips, hours) plus one row per skip reason."""
    rows = [{"split": split, "clips": n, "hours": _num((m.get("hours_by_split") or {}).get(split), 4)}
            for split, n in sorted((m.get("split_sizes") or {}).items())]
    rows.append({"split": "total kept", "clips": m.get("n_kept"), "hours": _num(m.get("hours_total"), 4)})
    rows.append({"split": "skipped", "clips": m.get("n_skipped"), "hours": None})
    rows += [{"split": f"skipped: {reason}", "clips": n, "hours": None}
             for reason, n in sorted((m.get("skipped_by_reason") or {}).items())]
    return rows


def real_speech_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """test_real: clips kept and skipped by reason, and the clip-length distribution."""
    d = m.get("durations") or {}
    rows = [{"figure": "kept", "value": m.get("kept")}, {"figure": "skipped", "value": m.get("skipped")}]
    rows += [{"figure": f"skipped: {r}", "value": n} for r, n in sorted((m.get("skipped_by_reason") or {}).items())]
    rows += [{"figure": k, "value": d.get(k)} for k in ("hours", "mean_s", "p50_s", "p90_s", "max_s")]
    rows += [{"figure": f"share longer than {w} s", "value": v}
             for w, v in sorted((d.get("share_longer_than_window") or {}).items(), key=lambda kv: float(kv[0]))]
    return rows


def label_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Per split: clips, labelled, kept, each drop reason, the teacher's WER vs the references."""
    rows = []
    for split, s in sorted((m.get("splits") or {}).items()):
        row = {"split": split, "clips": s.get("clips"), "labelled": s.get("labelled"), "kept": s.get("kept"),
               "kept_audio_only": s.get("kept_audio_only")}
        row.update({f"dropped_{r}": n for r, n in sorted((s.get("dropped_by_reason") or {}).items())})
        row["teacher_wer_percent"] = s.get("teacher_wer_percent")
        rows.append(row)
    return rows


def eval_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (form, set): WER, CER, hallucination rate, WER delta vs the reference, decode seconds."""
    deltas = m.get("wer_delta_points") or {}
    rows = []
    for form, f in sorted((m.get("forms") or {}).items()):
        for set_name, s in sorted((f.get("sets") or {}).items()):
            rows.append({"form": form, "set": set_name, "clips": s.get("clips"), "wer": _num(s.get("wer")),
                         "cer": _num(s.get("cer")), "hallucination_rate": _num(s.get("hallucination_rate")),
                         "wer_delta_points": _num((deltas.get(form) or {}).get(set_name)),
                         "decode_seconds": _num(s.get("decode_seconds"))})
    return rows


def speed_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (form, measure): seconds, real-time factor, tokens/s and the speed-up vs the reference."""
    speed = m.get("speed") or {}
    speedup = speed.get("speedup") or {}
    rows = []
    for form, measures in sorted((speed.get("forms") or {}).items()):
        for measure, v in sorted(measures.items()):
            rows.append({"form": form, "measure": measure, "seconds": _num(v.get("seconds"), 4),
                         "rtf": _num(v.get("rtf"), 4), "tokens_per_s": _num(v.get("tokens_per_s")),
                         "speedup": _num((speedup.get(form) or {}).get(measure), 3)})
    return rows


def train_rows(m: dict[str, Any], evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation WER at every evaluation step (``metrics/train_eval.csv``), then the run's summary rows."""
    rows = [{"step": e.get("step"), "val_wer": _num(e.get("val_wer")), "teacher_val_wer": _num(e.get("teacher_val_wer"))}
            for e in evals]
    stage_b = m.get("stage_b") or {}
    rows.append({"step": f"best @ {m.get('best_step')}", "val_wer": _num(m.get("best_val_wer_percent")),
                 "teacher_val_wer": _num(m.get("teacher_val_wer_percent"))})
    rows.append({"step": f"saved (steps {m.get('averaged_steps')})", "val_wer": _num(m.get("final_val_wer_percent")),
                 "teacher_val_wer": None})
    if stage_b.get("steps"):
        rows.append({"step": f"stage B: self-teacher share of the loss, mean over {stage_b['steps']} steps",
                     "val_wer": _num(stage_b.get("mean_self_kd_share"), 4), "teacher_val_wer": None})
    return rows


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, ValueError):
        return []


def gate_markdown(m: dict[str, Any]) -> str:
    verdict = "PASSED: the candidate may be registered" if m.get("passed") else "BLOCKED: the register stage is skipped"
    lines = [f"# Gate: {verdict}", "", f"candidate `{m.get('candidate')}` vs reference `{m.get('reference')}`", ""]
    lines += [f"- {'✅' if c.startswith('PASS') else '❌'} {c}" for c in m.get("checks") or []]
    return "\n".join(lines) + "\n"


def register_markdown(m: dict[str, Any]) -> str:
    """The registered version (whatever scalar fields ``metrics/register.json`` holds, version key first)."""
    first = [k for k in ("version_key", "key", "version", "uri", "alias", "aliases") if k in m]
    rest = sorted(k for k in m if k not in first and not isinstance(m[k], (dict, list)))
    lines = ["# Registered model", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | `{m[k]}` |" for k in (*first, *rest)]
    return "\n".join(lines) + "\n"


def plots_markdown(reports_dir: Path, embed: bool = True, names=PLOTS, title: str = "Evaluation plots") -> str | None:
    """Plots of ``reports_dir``: path on the worker, and the PNG embedded as a data URI when small enough."""
    parts = [f"# {title}", ""]
    found = False
    for name in names:
        path = reports_dir / name
        if not path.is_file():
            continue
        found = True
        parts.append(f"**{name}**: `{path.resolve()}`")
        if embed and path.stat().st_size <= EMBED_MAX_BYTES:
            data = base64.b64encode(path.read_bytes()).decode()
            parts += ["", f"![{name}](data:image/png;base64,{data})"]
        parts.append("")
    return "\n".join(parts) if found else None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def publish(stage: str, project_dir: str | Path, log=print) -> list[str]:
    """Create the UI artifacts of ``stage`` from its files in ``project_dir``; returns the artifact keys."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    root = Path(project_dir)
    metrics_file = root / "metrics" / f"{METRICS_FILES.get(stage, stage)}.json"
    metrics = _load(metrics_file)
    keys: list[str] = []
    if metrics is None:
        if stage in ("real_speech", "prepare", "label", "train", "evaluate", "gate", "register"):
            log(f"no {metrics_file} : no artifact for stage {stage}")
        return keys
    if stage == "prepare":
        create_table_artifact(prepare_rows(metrics), key="askd-prepare-counts",
                              description=f"prepare: clips and hours per split, skipped clips by reason ({root})")
        keys.append("askd-prepare-counts")
    elif stage == "real_speech":
        create_table_artifact(real_speech_rows(metrics), key="askd-real-speech",
                              description="real_speech: test_real clips kept, skipped by reason, clip lengths")
        keys.append("askd-real-speech")
    elif stage == "label":
        create_table_artifact(label_rows(metrics), key="askd-label-counts",
                              description="label: clips kept and dropped by the WER / hallucination filter")
        keys.append("askd-label-counts")
    elif stage == "train":
        create_table_artifact(train_rows(metrics, _csv_rows(root / "metrics" / "train_eval.csv")),
                              key="askd-train-validation",
                              description="train: validation WER per evaluation step, the saved weights, stage B")
        keys.append("askd-train-validation")
        curves = plots_markdown(root / "reports", names=TRAIN_PLOTS, title="Training curves")
        if curves:
            create_markdown_artifact(curves, key="askd-train-curves",
                                     description="train: loss terms, ASKD weights, validation WER")
            keys.append("askd-train-curves")
    elif stage == "evaluate":
        create_table_artifact(eval_rows(metrics), key="askd-eval-wer",
                              description="evaluate: WER / CER / hallucination rate per form and test set (percent)")
        keys.append("askd-eval-wer")
        speed = speed_rows(metrics)
        if speed:
            create_table_artifact(speed, key="askd-eval-speed",
                                  description="evaluate: interleaved speed per form; speedup vs the reference")
            keys.append("askd-eval-speed")
        plots = plots_markdown(root / "reports")
        if plots:
            create_markdown_artifact(plots, key="askd-eval-plots", description="evaluation plots (reports/*.png)")
            keys.append("askd-eval-plots")
    elif stage == "gate":
        create_markdown_artifact(gate_markdown(metrics), key="askd-gate",
                                 description=f"gate: {'passed' if metrics.get('passed') else 'blocked'}")
        keys.append("askd-gate")
    elif stage == "register":
        create_markdown_artifact(register_markdown(metrics), key="askd-register",
                                 description="register: the version written to the model registry")
        keys.append("askd-register")
    return keys
