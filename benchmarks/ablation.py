"""The loss ablation from the labelled data: each recipe x seed trained by the `train` stage, all scored in one run.

    python -m benchmarks.ablation [--recipes askd,askd_no_stage_b,distil_whisper,ce_only] [--seeds 0,1]
                                  [--set key=value ...] [--work-dir data/ablation] [--results-dir benchmarks/results]

Each (recipe, seed) runs ``askd stage train`` in a subprocess, exactly as DVC runs it, in its own folder under
``--work-dir`` (the student, checkpoints and ``metrics/train*.{json,csv}`` land there, so the pipeline's own
outputs are untouched) with the project's teacher, labelled data and caches (``train.cache_dir``: the encoder and
teacher-state caches are shared, built once). A finished run is not trained again (its ``metrics/train.json``
exists). Then one process scores the teacher and every student, in fp32 and as its shipped CTranslate2 int8 export,
on ``evaluate.sets`` (prepared data and ``test_real``) with the `evaluate` stage's decode settings and its
text-disjointness guard. Result: WER per run and set, and per recipe the mean and spread (min, max) over seeds,
plus each run's stage-B summary (the self-teacher term's share of the loss), written to ``ablation.json``.

``--set`` values apply to every run (e.g. ``profile=full``); a recipe's own overrides are :data:`RECIPES`. Run it
from the project root after ``dvc repro label`` (and ``real_speech``) of the profile to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, write_result_in

RECIPES: dict[str, list[str]] = {
    "askd": ["train.preset=askd"],
    "askd_no_stage_b": ["train.preset=askd", "train.askd.self_teacher=none", "train.askd.self_kd_weight=0.0"],
    "askd_snapshot": ["train.preset=askd", "train.askd.self_teacher=snapshot"],
    "askd_previous_epoch": ["train.preset=askd", "train.askd.self_teacher=previous_epoch"],
    "askd_ema_0.999": ["train.preset=askd", "train.askd.ema_decay=0.999"],
    "distil_whisper": ["train.preset=distil_whisper"],
    "ce_only": ["train.preset=ce_only"],
}
DEFAULT_RECIPES = ("askd", "askd_no_stage_b", "distil_whisper", "ce_only")
SHIPPED_EXPORT = "ct2_int8"


def run_dir(work_dir: Path, recipe: str, seed: int) -> Path:
    return work_dir / f"{recipe}-s{seed}"


def train_command(recipe: str, seed: int, folder: Path, overrides: list[str], cfg) -> list[str]:
    """``askd stage train`` for one run: the project's params, absolute data paths, this run's outputs."""
    shared = {"teacher.out_dir": cfg.teacher.out_dir, "label.out_dir": cfg.label.out_dir,
              "train.cache_dir": cfg.train.cache_dir}
    sets = [*overrides, *(f"{k}={Path(v).resolve()}" for k, v in shared.items()), *RECIPES[recipe],
            f"train.seed={seed}", f"train.out_dir={folder / 'student'}",
            f"train.checkpoint_dir={folder / 'checkpoints'}"]
    return [sys.executable, "-m", "components", "--params", str(REPO / "params.yaml"),
            *[arg for value in sets for arg in ("--set", value)], "stage", "train"]


def train_all(recipes: list[str], seeds: list[int], work_dir: Path, overrides: list[str], cfg
              ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Train every run not finished yet; returns each run's train metrics and student folder, by run name."""
    runs, students = {}, {}
    for recipe in recipes:
        for seed in seeds:
            folder = run_dir(work_dir, recipe, seed)
            done = folder / "metrics" / "train.json"
            if not done.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                subprocess.run(train_command(recipe, seed, folder, overrides, cfg), cwd=folder, check=True)
                print(f"ablation: {recipe} seed {seed} trained in {time.perf_counter() - started:.0f} s", flush=True)
            runs[folder.name] = json.loads(done.read_text(encoding="utf-8"))
            students[folder.name] = folder / "student"
    return runs, students


def score_all(cfg, students: dict[str, Path]) -> dict[str, dict[str, float]]:
    """WER per form and set: the teacher, each student and its shipped export, one process, same settings."""
    from components.evaluate import disjoint_sets, evaluate_form, load_test_sets
    from components.export import load_form, make_export

    ev = cfg.evaluate
    sets, missing = load_test_sets([Path(cfg.prepare.out_dir), Path(cfg.real_speech.out_dir)], ev.sets, ev.max_clips)
    sets, _ = disjoint_sets(sets, Path(cfg.label.out_dir))
    if missing:
        print(f"ablation: sets not found: {missing}", flush=True)
    forms = [load_form(cfg.teacher.out_dir, "teacher", ct2_decode_threads=ev.ct2_decode_threads)]
    for name, path in students.items():
        base = load_form(path, name, ct2_decode_threads=ev.ct2_decode_threads)
        forms += [base, make_export(base, SHIPPED_EXPORT, path.parent / "exports", ev.ct2_encoder,
                                    ct2_decode_threads=ev.ct2_decode_threads)]
    wer = {}
    for form in forms:
        per_set, _ = evaluate_form(form, sets, ev)
        wer[form.name] = {s: m["wer"] for s, m in per_set.items()}
        print(f"ablation: {form.name} {wer[form.name]}", flush=True)
    return wer


def summarise(wer: dict[str, dict[str, float]], recipes: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per recipe and form (fp32 / shipped int8) and set: mean, min, max over seeds, and the delta to the teacher."""
    teacher = wer["teacher"]
    table: dict[str, Any] = {}
    for recipe in recipes:
        for suffix, form in (("", "fp32"), (f"_{SHIPPED_EXPORT}", SHIPPED_EXPORT)):
            runs = [wer[f"{recipe}-s{seed}{suffix}"] for seed in seeds if f"{recipe}-s{seed}{suffix}" in wer]
            cell = {}
            for s in teacher:
                values = [r[s] for r in runs if s in r]
                if values:
                    mean = statistics.fmean(values)
                    cell[s] = {"mean": round(mean, 3), "min": min(values), "max": max(values), "n": len(values),
                               "delta_vs_teacher": round(mean - teacher[s], 3)}
            table.setdefault(recipe, {})[form] = cell
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"from {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    parser.add_argument("--work-dir", default="data/ablation")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    from components.settings import load_settings

    cfg = load_settings(REPO / "params.yaml", args.overrides)
    work_dir = Path(args.work_dir).resolve()
    started = time.perf_counter()
    runs, students = train_all(recipes, seeds, work_dir, args.overrides, cfg)
    wer = score_all(cfg, students)
    result = {
        "command": "python -m benchmarks.ablation " + " ".join(argv if argv is not None else sys.argv[1:]),
        "recipes": {r: RECIPES[r] for r in recipes}, "seeds": seeds, "overrides": args.overrides,
        "wer": wer, "table": summarise(wer, recipes, seeds),
        "runs": {name: {"best_val_wer_percent": m.get("best_val_wer_percent"), "steps": m.get("steps"),
                        "stage_b": m.get("stage_b"), "seconds": m.get("seconds")} for name, m in runs.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"wrote {write_result_in('ablation', result, args.results_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
