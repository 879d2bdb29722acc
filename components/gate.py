"""`askd gate`: decide whether the candidate (the student, or one of its exports) may be promoted.

Checks, on ``metrics/eval.json`` (written by the `evaluate` stage), each one line in ``metrics/gate.json``:

* ``wer_delta``: for every set in ``max_wer_delta_points``, candidate WER - reference (teacher) WER, in
  percentage points, must be <= the set's threshold. A set missing from the metrics (for either form) fails;
* ``speedup``: reference seconds / candidate seconds for ``speedup_measure`` (both timed interleaved in one run,
  ``speed.forms``; e.g. candidate student_ct2_int8 vs reference teacher_ct2_int8 = same runtime) must be
  >= ``min_speedup``; missing speed metrics fail;
* ``hallucination_rate``: on every evaluated set, the candidate's share of looping / implausibly long outputs
  (percent) must be <= ``max_hallucination_rate``.

``passed`` is true only when every check passes. ``askd gate`` exits 0 either way unless ``fail_on_block`` is
set (then 1 when blocked): the registry stage reads ``gate.json`` and refuses a blocked model itself, so a blocked
gate does not break ``dvc repro`` by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.artifacts import write_metrics


def _line(ok: bool, set_name: str, metric: str, value: Any, op: str, threshold: Any, note: str = "") -> dict[str, Any]:
    shown = f"{value:.3f}" if isinstance(value, float) else str(value)
    text = f"{'PASS' if ok else 'FAIL'} {set_name} {metric} = {shown} (threshold {op} {threshold})"
    return {"ok": ok, "set": set_name, "metric": metric, "value": value, "threshold": threshold,
            "line": text + (f": {note}" if note else "")}


def _missing(set_name: str, metric: str, op: str, threshold: Any, note: str) -> dict[str, Any]:
    return {"ok": False, "set": set_name, "metric": metric, "value": None, "threshold": threshold,
            "line": f"FAIL {set_name} {metric} = missing (threshold {op} {threshold}): {note}"}


def decide(metrics: dict[str, Any], cfg) -> dict[str, Any]:
    """Pure gate decision on an eval metrics dict; returns ``passed``, ``checks``, ``reasons`` (the failures)."""
    forms = metrics.get("forms") or {}
    cand, ref = forms.get(cfg.candidate), forms.get(cfg.reference)
    checks: list[dict[str, Any]] = []
    if cand is None:
        checks.append(_missing("-", "form", "in", sorted(forms), f"candidate {cfg.candidate!r} not in eval metrics"))
    if ref is None:
        checks.append(_missing("-", "form", "in", sorted(forms), f"reference {cfg.reference!r} not in eval metrics"))
    cand_sets = (cand or {}).get("sets") or {}
    ref_sets = (ref or {}).get("sets") or {}
    for set_name, limit in sorted(cfg.max_wer_delta_points.items()):
        if cand is None or ref is None:
            continue
        if set_name not in cand_sets or set_name not in ref_sets:
            who = cfg.candidate if set_name not in cand_sets else cfg.reference
            checks.append(_missing(set_name, "wer_delta_points", "<=", limit, f"set not evaluated for {who}"))
            continue
        delta = float(cand_sets[set_name]["wer"]) - float(ref_sets[set_name]["wer"])
        checks.append(_line(delta <= limit, set_name, "wer_delta_points", delta, "<=", limit,
                            f"{cfg.candidate} {cand_sets[set_name]['wer']:.2f} % vs {cfg.reference} "
                            f"{ref_sets[set_name]['wer']:.2f} %"))
    speed = metrics.get("speed") or {}
    timed = speed.get("forms") or {}
    speedup = None
    if cfg.speedup_measure in timed.get(cfg.candidate, {}) and cfg.speedup_measure in timed.get(cfg.reference, {}):
        speedup = (timed[cfg.reference][cfg.speedup_measure]["seconds"]
                   / timed[cfg.candidate][cfg.speedup_measure]["seconds"])
    elif cfg.reference == (speed.get("protocol") or {}).get("reference", "teacher"):
        speedup = (speed.get("speedup") or {}).get(cfg.candidate, {}).get(cfg.speedup_measure)
    if cand is not None:
        if speedup is None:
            checks.append(_missing("speed", f"speedup_{cfg.speedup_measure}", ">=", cfg.min_speedup,
                                   "no interleaved speed measurement for the candidate"))
        else:
            checks.append(_line(float(speedup) >= cfg.min_speedup, "speed", f"speedup_{cfg.speedup_measure}",
                                float(speedup), ">=", cfg.min_speedup, f"{cfg.candidate} vs {cfg.reference}"))
    for set_name, m in sorted(cand_sets.items()):
        rate = m.get("hallucination_rate")
        if rate is None:
            checks.append(_missing(set_name, "hallucination_rate", "<=", cfg.max_hallucination_rate, "not measured"))
        else:
            checks.append(_line(float(rate) <= cfg.max_hallucination_rate, set_name, "hallucination_rate",
                                float(rate), "<=", cfg.max_hallucination_rate, "percent of clips"))
    reasons = [c["line"] for c in checks if not c["ok"]]
    return {
        "passed": not reasons,
        "candidate": cfg.candidate,
        "reference": cfg.reference,
        "reasons": reasons,
        "checks": [c["line"] for c in checks],
        "details": checks,
        "thresholds": {"max_wer_delta_points": dict(cfg.max_wer_delta_points), "min_speedup": cfg.min_speedup,
                       "speedup_measure": cfg.speedup_measure,
                       "max_hallucination_rate": cfg.max_hallucination_rate},
        "fail_on_block": cfg.fail_on_block,
    }


def run_gate(cfg, metrics_dir: str | Path = "metrics") -> dict[str, Any]:
    """Read ``cfg.eval_metrics``, decide, write ``<metrics_dir>/gate.json``; returns the decision."""
    path = Path(cfg.eval_metrics)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation metrics at '{path}' (run `askd stage evaluate` first)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid JSON: {err}") from None
    decision = decide(metrics, cfg)
    write_metrics("gate", decision, metrics_dir)
    return decision
