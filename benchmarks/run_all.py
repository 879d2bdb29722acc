"""Run every benchmark, write ``<results-dir>/*.json`` and ``<results-dir>/SUMMARY.md``.

Benchmarks (one script per figure, each also runnable alone; see their docstrings):

| script | headline figure |
|---|---|
| ``label_throughput.py`` | labelling clips/s: batched and CTranslate2 vs a naive one-clip loop |
| ``train_step.py`` | training s/step: cached teacher-encoder outputs (+ cached teacher decoder states) vs recomputing (target >= 3x) |
| ``speed.py`` | student vs teacher speed-up: same runtime (fp32, CT2 int8) and shipped int8 vs teacher fp32 |
| ``decode_breakdown.py`` | batch-1 time per part (features, encoder, decoder layers, output layer, generate overhead) |
| ``dvc_noop.py`` | seconds of a no-op ``dvc repro`` |
| ``pipeline_e2e.py`` | end-to-end pipeline seconds (from the last run's metrics; ``--e2e run``: a real run + peak RSS) |

The scripts run in this process, one after the other (nothing in parallel: timings stay clean). A failing
benchmark is recorded in SUMMARY.md and makes the exit status 1; the others still run. With ``--e2e run`` the
pipeline runs first, so the command works on a fresh clone: it builds the teacher, data and student the other
benchmarks measure.

    python benchmarks/run_all.py                 # everything, each script's defaults (~10 min on 2 cores)
    python benchmarks/run_all.py --smoke         # minimal clips/rounds, into benchmarks/results/tmp/smoke
    python benchmarks/run_all.py --e2e run       # also re-runs the whole pipeline (`dvc repro`, ~30 min)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hardware, results_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ORDER = ("label_throughput", "train_step", "speed", "decode_breakdown", "dvc_noop", "pipeline_e2e")


def plan(args) -> dict[str, list[str]]:
    """argv per benchmark script."""
    out = ["--results-dir", str(args.results_dir)]
    smoke = args.smoke
    label = ["--teacher", args.teacher, "--prepared", args.prepared, *out]
    train = ["--teacher", args.teacher, "--labelled", args.labelled, *out]
    speed = ["--teacher", args.teacher, "--student", args.student, "--prepared", args.prepared, *out]
    if args.speed_set:
        speed += ["--speed-set", args.speed_set]
    breakdown = list(speed)  # the same models, data, speed set and results folder
    if args.label_split:
        label += ["--split", args.label_split]
    dvc = ["--repo", args.repo, *out]
    e2e = ["--repo", args.repo, *out]
    if smoke:
        label += ["--clips", "4", "--batch-size", "2", "--rounds", "1", "--max-new-tokens", "8"]
        train += ["--batch-size", "2", "--rounds", "1", "--steps", "1", "--clips", "4"]
        speed += ["--clips", "2", "--rounds", "1", "--batch-size", "2", "--protocols", "natural",
                  "--max-new-tokens", "8"]
        breakdown += ["--clips", "2", "--rounds", "1", "--max-new-tokens", "8"]
        dvc += ["--where", "tmp", "--runs", "1"]
    e2e += {"from-metrics": ["--from-metrics"], "run": ["--run"], "trivial": ["--trivial"]}[args.e2e]
    return {"label_throughput": label, "train_step": train, "speed": speed, "decode_breakdown": breakdown,
            "dvc_noop": dvc, "pipeline_e2e": e2e}


def run_order(e2e: str) -> tuple[str, ...]:
    """``ORDER``, except that a real pipeline run (``--e2e run``) goes first: it makes the models and data the
    other benchmarks read, so ``run_all.py --e2e run`` works on a fresh clone."""
    if e2e != "run":
        return ORDER
    return ("pipeline_e2e", *(name for name in ORDER if name != "pipeline_e2e"))


def _fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{unit}"
    return str(value)


def headlines(name: str, r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, how) rows of one benchmark's result."""
    if name == "label_throughput":
        rows = [(f"labelling speed-up {k} vs naive", _fmt(v, "x"),
                 f"{r['clips']} clips, batch {r['batch_size']}, min of {r['rounds']} interleaved rounds")
                for k, v in r["speedup_vs_naive"].items()]
        rows += [(f"labelling {k} clips/s", _fmt(v), f"{r['audio_seconds']} s of audio")
                 for k, v in r["clips_per_s"].items()]
        return rows
    if name == "train_step":
        how = (f"batch {r['batch_size']}, {r['rounds']} rounds x {r['steps_per_round']} steps, "
               f"teacher: {r['teacher_kind']}")
        return [
            ("train step, cached encoder (s/step)", _fmt(r["seconds_per_step"]["cached"], digits=3), how),
            ("train step, recompute encoder (s/step)", _fmt(r["seconds_per_step"]["recompute"], digits=3), how),
            ("train step, cached encoder + teacher states (s/step)",
             _fmt(r["seconds_per_step"]["cached_states"], digits=3), how),
            ("train step speed-up cached encoder vs recompute", _fmt(r["speedup_cached_vs_recompute"], "x"),
             "the teacher's decoder still runs every step (train.cache_teacher_states: false)"),
            ("train step speed-up cached encoder + teacher states vs recompute",
             _fmt(r["speedup_cached_states_vs_recompute"], "x"),
             f"the train default; target >= {r['target_speedup']}x: {'met' if r['meets_target'] else 'NOT met'}"),
            ("train step FLOP ratio recompute / cached", _fmt(r["flop_ratio_recompute_vs_cached"], "x"),
             "counted matmul/conv/attention FLOPs (forward + backward), load-independent"),
        ]
    if name == "speed":
        s = r["settings"]
        how = f"{s['speed_clips']} clips of '{s['speed_set']}', min of {s['speed_rounds']} interleaved rounds"
        return [(f"speed-up {row['comparison']} ({key})", _fmt(row[key], "x"), how)
                for row in r["speedup_table"] for key in row if key not in ("comparison", "form", "versus")]
    if name == "decode_breakdown":
        how = (f"batch 1, {r['sample']['clips']} clips of '{r['sample']['set']}', transformers fp32, "
               f"min of {r['protocol']['rounds']} interleaved rounds")
        rows = [(f"b1 {k.replace('_', ' ')} teacher / student", _fmt(v, "x"), how) for k, v in r["ratios"].items()]
        for model, m in r["models"].items():
            rows += [(f"b1 {model} ms per decoder step: {part.replace('_', ' ')}", _fmt(ms), how)
                     for part, ms in m["ms_per_step"].items()]
        return rows
    if name == "dvc_noop":
        return [("no-op dvc repro, min (s)", _fmt(r["min_s"]), f"mode {r['mode']}, {r['runs']} runs"),
                ("no-op dvc repro, median (s)", _fmt(r["median_s"]), f"mode {r['mode']}, {r['runs']} runs")]
    if name == "pipeline_e2e":
        rows = [("pipeline end to end (s)", _fmt(r["wall_s"], digits=1), f"mode {r['mode']}")]
        rows.append(("pipeline peak RSS, whole process tree (MiB)", _fmt(r.get("peak_tree_rss_mib"), digits=1),
                     f"mode {r['mode']}" + ("" if r.get("peak_tree_rss_mib") is not None else ": not measured")))
        for stage, seconds in r["per_stage"]["seconds"].items():
            note = r["per_stage"]["notes"].get(stage, "")
            rows.append((f"stage {stage} (s)", _fmt(seconds, digits=1), note))
        return rows
    return []


def earlier_results(results_dir: Path, skip: set[str]) -> dict[str, dict]:
    """The ``<benchmark>.json`` already in ``results_dir`` for benchmarks not in ``skip`` (kept in SUMMARY.md by
    ``--only`` runs, marked with their own date)."""
    out = {}
    for name in ORDER:
        path = results_dir / f"{name}.json"
        if name not in skip and path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
    return out


def summary_markdown(results: dict[str, dict], errors: dict[str, str], durations: dict[str, float], args,
                     earlier: dict[str, dict] | None = None) -> str:
    earlier = earlier or {}
    hw = hardware()
    lines = [
        "# Benchmark summary",
        "",
        f"- date: {hw['date']}",
        f"- hardware: {hw['cpu']}, {hw['cpu_count']} cores, torch {hw['torch']} ({hw['torch_threads']} threads), "
        f"CUDA {'yes' if hw['cuda'] else 'no'}, Python {hw['python']}",
        f"- mode: {'smoke (minimal clips/rounds: checks the scripts, the figures mean little)' if args.smoke else 'full (each script defaults)'}"
        f"; pipeline_e2e: {args.e2e}",
        f"- command: `python benchmarks/run_all.py {' '.join(args.argv)}`".rstrip(),
        f"- models: teacher `{args.teacher}`, student `{args.student}`",
        "",
        "| benchmark | figure | value | how |",
        "|---|---|---|---|",
    ]
    for name in ORDER:
        if name in results:
            for figure, value, how in headlines(name, results[name]):
                lines.append(f"| {name} | {figure} | {value} | {how} |")
        elif name in errors:
            lines.append(f"| {name} | FAILED | – | {errors[name]} |")
        elif name in earlier:
            when = (earlier[name].get("hardware") or {}).get("date", "an earlier run")
            for figure, value, how in headlines(name, earlier[name]):
                lines.append(f"| {name} | {figure} | {value} | {how}; not rerun: from {when} |")
    lines += ["", "Seconds per benchmark script: "
              + ", ".join(f"{k} {v:.1f}" for k, v in durations.items()), ""]
    lines.append("Each figure comes from `<benchmark>.json` next to this file (full detail: rounds, settings).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="minimal clips/rounds; dvc_noop in a tmp repo only")
    parser.add_argument("--only", default=None, help=f"comma list of: {', '.join(ORDER)}")
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--student", default="models/student")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--labelled", default="data/labelled")
    parser.add_argument("--speed-set", default=None, help="prepared split for speed.py (default: evaluate.speed_set)")
    parser.add_argument("--label-split", default=None, help="prepared split for label_throughput.py (default: validation)")
    parser.add_argument("--repo", default=str(REPO))
    parser.add_argument("--e2e", choices=("from-metrics", "run", "trivial"), default="from-metrics",
                        help="pipeline_e2e mode (run: really runs `dvc repro`, ~30 min)")
    parser.add_argument("--results-dir", default=None,
                        help="default: benchmarks/results (--smoke: benchmarks/results/tmp/smoke, git-ignored)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke and args.results_dir is None:  # smoke figures must never overwrite the real results
        args.results_dir = str(results_dir() / "tmp" / "smoke")
    args.results_dir = results_dir(args.results_dir)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    wanted = [n.strip() for n in args.only.split(",")] if args.only else list(ORDER)
    unknown = set(wanted) - set(ORDER)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    argvs = plan(args)
    results, errors, durations = {}, {}, {}
    for name in run_order(args.e2e):
        if name not in wanted:
            continue
        print(f"== {name} {' '.join(argvs[name])}", flush=True)
        started = time.perf_counter()
        try:
            results[name] = importlib.import_module(f"benchmarks.{name}").main(argvs[name])
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one failing benchmark must not hide the others
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            traceback.print_exc()
        durations[name] = time.perf_counter() - started
    summary = args.results_dir / "SUMMARY.md"
    earlier = earlier_results(args.results_dir, set(wanted)) if args.only else {}
    summary.write_text(summary_markdown(results, errors, durations, args, earlier))
    (args.results_dir / "run_all.json").write_text(json.dumps(
        {"smoke": args.smoke, "e2e": args.e2e, "ran": list(results), "failed": errors,
         "seconds": {k: round(v, 2) for k, v in durations.items()}}, indent=2) + "\n")
    print(summary.read_text())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
