"""Student vs teacher speed-up, in the same runtime and against the teacher as users run it.

Forms, loaded and exported with the evaluate stage's own code (``components.export.load_form`` /
``make_export``; exports go to a temporary folder, never to ``models/exports``):

* ``teacher`` and ``student``: transformers, float32;
* ``teacher_ct2_int8`` and ``student_ct2_int8``: CTranslate2 int8 (the teacher's is the faster-whisper
  equivalent; the student's is the shipped export), CT2 end to end (``evaluate.ct2_encoder``);
* optionally more student exports (``--student-exports torch_int8,ct2_int8``).

Speed: ``components.speed.measure_speed`` (the evaluate stage's protocol: interleaved rounds with a rotating
form order, minimum per form, batch 1 and the serving batch, ``natural`` and ``fixed`` length protocols) on a
sample of the prepared ``--speed-set`` (``speed_sample``: clips that fit every window). Decode settings come
from ``params.yaml``'s ``evaluate`` section, overridable here.

Headline comparisons (teacher seconds / student seconds, same run):

* same runtime, transformers fp32: ``student`` vs ``teacher``;
* same runtime, CTranslate2 int8: ``student_ct2_int8`` vs ``teacher_ct2_int8``;
* as shipped vs as users run the teacher: ``student_ct2_int8`` vs ``teacher`` (transformers fp32).

    python benchmarks/speed.py [--clips 8] [--rounds 2] [--batch-size 8] [--protocols natural,fixed]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_model_and_sample_args, write_result_in  # noqa: E402

COMPARISONS = (  # (label, form, versus)
    ("same runtime: transformers fp32", "student", "teacher"),
    ("same runtime: CTranslate2 int8", "student_ct2_int8", "teacher_ct2_int8"),
    ("shipped student CT2 int8 vs teacher transformers fp32", "student_ct2_int8", "teacher"),
    ("teacher CT2 int8 vs teacher transformers fp32 (runtime alone)", "teacher_ct2_int8", "teacher"),
)


def speedup_table(speed: dict) -> list[dict]:
    """One row per available comparison: ratios of the reference's seconds to the form's, per measure."""
    forms = speed["forms"]
    rows = []
    for label, name, versus in COMPARISONS:
        if name in forms and versus in forms:
            rows.append({"comparison": label, "form": name, "versus": versus,
                         **{key: round(forms[versus][key]["seconds"] / forms[name][key]["seconds"], 3)
                            for key in forms[name] if key in forms[versus]}})
    return rows


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no comparison available)"
    keys = [k for k in rows[0] if k not in ("comparison", "form", "versus")]
    lines = ["| comparison | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {r['comparison']} | " + " | ".join(f"{r[k]:.2f}x" for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_sample_args(parser)
    parser.add_argument("--rounds", type=int, default=None, help="default: evaluate.speed_rounds")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.speed_batch_size")
    parser.add_argument("--protocols", default=None, help="comma list of natural,fixed (default: evaluate's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: evaluate.max_new_tokens")
    parser.add_argument("--student-exports", default="ct2_int8", help="comma list of torch_int8,ct2_float32,ct2_int8")
    parser.add_argument("--teacher-exports", default="ct2_int8", help="comma list (the same-runtime peers)")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    from components.evaluate import load_prepared_sets
    from components.export import load_form, make_export
    from components.settings import load_settings
    from components.speed import measure_speed, speed_sample

    base = load_settings(args.params).evaluate
    update = {k: v for k, v in {
        "speed_set": args.speed_set, "speed_clips": args.clips, "speed_rounds": args.rounds,
        "speed_batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "speed_protocols": tuple(p.strip() for p in args.protocols.split(",")) if args.protocols else None,
    }.items() if v is not None}
    cfg = type(base).model_validate({**base.model_dump(), **update})  # validated like params.yaml values
    if cfg.speed_clips < 1:
        raise SystemExit("--clips must be >= 1")

    exports_dir = Path(tempfile.mkdtemp(prefix="bench-speed-exports-"))
    try:
        teacher = load_form(args.teacher, "teacher")
        student = load_form(args.student, "student")
        forms, exported = [teacher, student], {}
        for base_form, kinds in ((teacher, args.teacher_exports), (student, args.student_exports)):
            for kind in [k.strip() for k in kinds.split(",") if k.strip()]:
                form = make_export(base_form, kind, exports_dir, cfg.ct2_encoder)
                forms.append(form)
                exported[form.name] = {"kind": form.kind, "bytes": form.bytes, **form.info}
        sets, missing = load_prepared_sets(Path(args.prepared), [cfg.speed_set])
        if not sets:
            raise SystemExit(f"no clips with text in split {cfg.speed_set!r} of {args.prepared}")
        audios = speed_sample(sets[0].audios, cfg.speed_clips, min(f.window_samples for f in forms))
        speed = measure_speed(forms, audios, cfg, reference="teacher")
    finally:
        shutil.rmtree(exports_dir, ignore_errors=True)

    rows = speedup_table(speed)
    table = markdown(rows)
    result = {
        "teacher": str(args.teacher), "student": str(args.student), "prepared": str(args.prepared),
        "speedup_table": rows,
        "speedup_table_markdown": table,
        "exports": exported,
        "speed": speed,
        "settings": {k: getattr(cfg, k) for k in ("speed_set", "speed_clips", "speed_rounds", "speed_batch_size",
                                                  "speed_protocols", "max_new_tokens", "num_beams", "ct2_encoder")},
    }
    path = write_result_in("speed", result, args.results_dir)
    print(table)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
