"""The evaluation report: ``reports/evaluation.md`` (tables), two PNG plots and the per-clip predictions CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from components.artifacts import atomic_file

WER_PLOT = "eval_wer.png"
SCATTER_PLOT = "eval_wer_vs_speed.png"
REPORT = "evaluation.md"
PREDICTIONS_FIELDS = ("form", "set", "id", "reference", "hypothesis", "wer", "tokens", "windows")
MB = 1_000_000


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(PREDICTIONS_FIELDS))
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in PREDICTIONS_FIELDS} for r in rows)
    return path


def _sets(results: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for form in results["forms"].values():
        names += [s for s in form["sets"] if s not in names]
    return names


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def plot_wer(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: WER per set, one bar per form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets, forms = _sets(results), list(results["forms"])
    width = 0.8 / max(len(forms), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sets) * max(len(forms), 2) / 2), 4))
    for k, name in enumerate(forms):
        values = [results["forms"][name]["sets"].get(s, {}).get("wer", float("nan")) for s in sets]
        xs = [i + (k - (len(forms) - 1) / 2) * width for i in range(len(sets))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylabel("WER (%)")
    ax.set_title("WER per test set (greedy, same decode settings)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_wer_vs_speed(results: dict[str, Any], path: Path, measure: str = "natural_b1") -> Path:
    """One point per (form, set): x = speed-up over the teacher (interleaved), y = WER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speedup = (results.get("speed") or {}).get("speedup") or {}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^v<>"
    for j, set_name in enumerate(_sets(results)):
        xs, ys, labels = [], [], []
        for name, form in results["forms"].items():
            x = 1.0 if name == "teacher" else speedup.get(name, {}).get(measure)
            if x is None or set_name not in form["sets"]:
                continue
            xs.append(x)
            ys.append(form["sets"][set_name]["wer"])
            labels.append(name)
        ax.scatter(xs, ys, marker=markers[j % len(markers)], label=set_name)
        for x, y, label in zip(xs, ys, labels, strict=True):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"speed-up over the teacher ({measure}, interleaved min)")
    ax.set_ylabel("WER (%)")
    ax.set_yscale("symlog", linthresh=1)  # log above 1 % so single-digit WERs sit where their ticks say
    ax.set_title("WER vs speed, every form")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


_ISOLATION = {
    "form": "Each form timed in its own worker process (one command at a time), as users run one model.",
    "runtime": "One worker process per runtime (PyTorch forms together, CTranslate2 forms together).",
    "none": "Every form timed in the evaluating process (CTranslate2 having run slows PyTorch there).",
}


def _speed_lines(speed: dict[str, Any]) -> list[str]:
    proto = speed["protocol"]
    bn = max(proto["batch_sizes"])
    keys = [f"{p}_b{b}" for p in proto["protocols"] for b in proto["batch_sizes"]]
    sample = speed["sample"]
    lines = [f"Sample: {sample['clips']} clips of `{sample['set']}` ({sample['audio_s']} s of audio; the teacher "
             f"emits {sample['reference_tokens']} tokens), {proto['rounds']} interleaved rounds (rotating order), "
             f"min per form. `natural`: each form stops at its own end token; `fixed`: every form decodes exactly "
             f"the teacher's token count (min_new_tokens = max_new_tokens). Batch sizes {proto['batch_sizes']}. "
             + _ISOLATION.get(proto.get("isolation"), ""), ""]
    header = ["form", "latency b1 (s/clip)", f"latency b{bn} (s/clip)", "RTF b1", "tokens/s b1"]
    header += [f"speed-up {k}" for k in keys] + ["params (M)", "weights (MB)"]
    rows = []
    for name, per in speed["forms"].items():
        size = speed.get("size", {}).get(name, {})
        ups = speed["speedup"].get(name, {})
        rows.append([name, per.get("natural_b1", {}).get("latency_s"), per.get(f"natural_b{bn}", {}).get("latency_s"),
                     per.get("natural_b1", {}).get("rtf"), per.get("natural_b1", {}).get("tokens_per_s")]
                    + [1.0 if name == proto["reference"] else ups.get(k) for k in keys]
                    + [size.get("params", 0) / 1e6, size.get("bytes", 0) / MB])
    lines += _table(header, rows)
    same = speed.get("speedup_same_runtime") or {}
    if same:
        lines += ["Same runtime and precision (each student form vs the teacher in that form):", ""]
        lines += _table(["form", "versus"] + [f"speed-up {k}" for k in keys],
                        [[name, ups["versus"]] + [ups.get(k) for k in keys] for name, ups in same.items()])
    return lines


def _findings(results: dict[str, Any], measure: str = "natural_b1", flag_rate: float = 5.0) -> list[str]:
    """One bullet per non-teacher form: WER deltas, speed-up, sets where it hallucinates."""
    out = []
    speedup = (results.get("speed") or {}).get("speedup") or {}
    for name, deltas in (results.get("wer_delta_points") or {}).items():
        sets = results["forms"][name]["sets"]
        parts = [", ".join(f"{s} {sets[s]['wer']:.1f} % ({d:+.1f} points)" for s, d in deltas.items())]
        ups = speedup.get(name, {})
        if ups:
            parts.append("speed-up " + ", ".join(f"{k} {v:.2f}x" for k, v in ups.items()))
        twin = ((results.get("speed") or {}).get("speedup_same_runtime") or {}).get(name)
        if twin and measure in twin:
            parts.append(f"{twin[measure]:.2f}x vs {twin['versus']} ({measure}, same runtime)")
        bad = [f"{s} ({m['hallucination_rate']:.0f} % of clips)" for s, m in sets.items()
               if m["hallucination_rate"] > flag_rate]
        if bad:
            parts.append("loops / over-long outputs on " + ", ".join(bad))
        out.append(f"* **{name}** vs teacher: " + "; ".join(parts) + ".")
    failed = [k for k, v in (results.get("exports") or {}).items() if v != "ok"]
    if failed:
        out.append(f"* Exports that failed (not evaluated): {', '.join(failed)} (see Exports below).")
    return out or ["* only the teacher was evaluated."]


def clip_lengths(durations_s: list[float], windows_s: list[float]) -> dict[str, Any]:
    """Clip-length distribution of a set: quantiles, and the share of clips longer than each model window
    (those go through the long-form path for that window)."""
    import numpy as np

    d = np.asarray(durations_s, dtype=float)
    if d.size == 0:
        return {"clips": 0}
    return {"clips": int(d.size), "mean_s": round(float(d.mean()), 2),
            **{f"p{q}_s": round(float(np.percentile(d, q)), 2) for q in (50, 90)}, "max_s": round(float(d.max()), 2),
            "share_longer_than_window": {f"{w:g}": round(float((d > w).mean()), 4) for w in sorted(set(windows_s))}}


def _length_lines(lengths: dict[str, Any]) -> list[str]:
    windows = sorted({w for m in lengths.values() for w in (m.get("share_longer_than_window") or {})}, key=float)
    header = ["set", "clips", "mean (s)", "median (s)", "p90 (s)", "max (s)"] + [f"> {w} s window" for w in windows]
    rows = [[name, m.get("clips"), m.get("mean_s"), m.get("p50_s"), m.get("p90_s"), m.get("max_s")]
            + [f"{100 * (m.get('share_longer_than_window') or {}).get(w, 0):.1f} %" for w in windows]
            for name, m in lengths.items()]
    return ["## Clip lengths per set", "", "A clip longer than a form's window is cut into pieces (long-form path).",
            ""] + _table(header, rows)


def write_report(results: dict[str, Any], reports_dir: Path) -> list[Path]:
    """Write ``evaluation.md`` and the two PNGs into ``reports_dir``; returns the paths."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    sets, forms = _sets(results), results["forms"]
    proto = results["protocol"]
    dec = proto["decode"]
    lines = ["# Evaluation: teacher vs student (and exports)", "",
             "Generated by `askd stage evaluate` (components/evaluate.py); numbers in `metrics/eval.json`, "
             "per-clip outputs in `reports/eval_predictions.csv`.", "",
             f"Protocol: greedy (num_beams={dec['num_beams']}), max_new_tokens={dec['max_new_tokens']} per window, "
             f"batch {dec['batch_size']} (length-sorted), no timestamps, identical for every form. Text normaliser: "
             f"{proto['normaliser']}. Long-form: {proto['longform']}. Hardware: {proto['hardware']['cpu']}, "
             f"{proto['hardware']['torch_threads']} torch threads; packages: "
             + ", ".join(f"{k} {v}" for k, v in proto["packages"].items() if v) + ".", ""]
    if results.get("missing_sets"):
        lines += [f"**Missing test sets** (not in the prepared dataset): {', '.join(results['missing_sets'])}.", ""]
    lines += ["## Summary", ""] + _findings(results) + ["", "## WER / CER per test set (%)", ""]
    header = ["form", "kind", "window (s)"] + [f"{s} WER" for s in sets] + [f"{s} CER" for s in sets]
    rows = [[name, f["kind"], f["window_s"]] + [f["sets"].get(s, {}).get("wer") for s in sets]
            + [f["sets"].get(s, {}).get("cer") for s in sets] for name, f in forms.items()]
    lines += _table(header, rows)
    if results.get("wer_delta_points"):
        lines += ["WER difference to the teacher (percentage points):", ""]
        lines += _table(["form"] + sets, [[n] + [d.get(s) for s in sets] for n, d in results["wer_delta_points"].items()])
    if results.get("set_lengths"):
        lines += _length_lines(results["set_lengths"])
    lines += ["## Hallucination proxies per set (% )", "",
              "insertion = inserted words / reference words; empty = clips with no word; repeated = clips repeating "
              f"more than {proto['hallucination']['repetition_threshold']:.0%} of their word 3-grams; hallucination = "
              f"repeated or more than {proto['hallucination']['max_tokens_per_s']} tokens/s.", ""]
    header = ["form", "set", "clips", "chunked", "insertion", "empty", "repeated 3-grams", "hallucination"]
    rows = [[name, s, m["clips"], m.get("chunked_clips"), m["insertion_rate"], m["empty_rate"],
             m["repeated_ngram_rate"], m["hallucination_rate"]] for name, f in forms.items() for s, m in f["sets"].items()]
    lines += _table(header, rows)
    if results.get("speed"):
        lines += ["## Speed (CPU, interleaved in one run)", ""] + _speed_lines(results["speed"])
    lines += ["## Exports", ""]
    for key, status in (results.get("exports") or {}).items():
        info = forms.get(key, {})
        kept = (f" (output layer over {info['kept_tokens']:,} of {info['vocab_size']:,} tokens: those of the "
                "training labels, single bytes and special tokens)") if info.get("kept_tokens") else ""
        lines.append(f"* `{key}`: {status}{kept}")
    if not results.get("exports"):
        lines.append("* none requested (`evaluate.exports`)")
    lines += ["", "## Plots", "", f"![WER per set]({WER_PLOT})", "", f"![WER vs speed]({SCATTER_PLOT})", ""]
    paths = [plot_wer(results, reports_dir / WER_PLOT)]
    paths.append(plot_wer_vs_speed(results, reports_dir / SCATTER_PLOT))
    report = reports_dir / REPORT
    with atomic_file(report) as tmp:  # a killed run leaves the old report or the new one, never half of one
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return [report, *paths]
