"""Student vs teacher speed-up, in the same runtime and against the teacher as users run it.

Forms, loaded and exported with the evaluate stage's own code (``components.export.load_form`` /
``make_export``; exports go to a temporary folder, never to ``models/exports``):

* ``teacher`` and ``student``: transformers, float32;
* ``teacher_ct2_int8`` and ``student_ct2_int8``: CTranslate2 int8 (the teacher's is the faster-whisper
  equivalent; the student's is the shipped export), CT2 end to end (``evaluate.ct2_encoder``);
* optionally more student exports (``--student-exports torch_int8,ct2_int8,torch_vocab``; ``torch_vocab`` keeps
  the tokens of the training labels in ``--labels``, the label stage's output).

Each form is timed in its own worker process unless ``--isolation`` says otherwise (``evaluate.speed_isolation``).

``--init-student decoder_layers=3 --init-student window_s=10`` times a student of that shape cut from the teacher
(``init_student`` with ``train.student`` + these overrides) instead of ``--student``: the speed of an architecture
before training it. It is untrained, so only the ``fixed`` protocol (every form decodes the teacher's token count)
means anything; ``natural`` is dropped.

Speed: ``components.speed.measure_speed`` (the evaluate stage's protocol: interleaved rounds with a rotating
form order, minimum per form, batch 1 and the serving batch, ``natural`` and ``fixed`` length protocols) on a
sample of the prepared ``--speed-set`` (``speed_sample``: clips that fit every window). Decode settings come
from ``params.yaml``'s ``evaluate`` section, overridable here.

Headline comparisons (teacher seconds / student seconds, same run):

* same runtime, transformers fp32: ``student`` vs ``teacher``;
* same runtime, transformers fp32 with the output layer pruned to the training labels' tokens:
  ``student_torch_vocab`` vs ``teacher`` (and vs ``teacher_torch_vocab`` when the teacher is pruned too);
* same runtime, CTranslate2 float32 / int8: ``student_ct2_float32`` vs ``teacher_ct2_float32`` (when both are
  exported) and ``student_ct2_int8`` vs ``teacher_ct2_int8``;
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
    ("same runtime: transformers fp32, student output layer pruned", "student_torch_vocab", "teacher"),
    ("same runtime: transformers fp32, both output layers pruned", "student_torch_vocab", "teacher_torch_vocab"),
    ("same runtime: CTranslate2 float32", "student_ct2_float32", "teacher_ct2_float32"),
    ("same runtime: CTranslate2 int8", "student_ct2_int8", "teacher_ct2_int8"),
    ("same runtime: CTranslate2 int8, student vocabulary pruned", "student_ct2_int8_vocab", "teacher_ct2_int8"),
    ("shipped-candidate student CT2 int8 pruned vs teacher transformers fp32", "student_ct2_int8_vocab", "teacher"),
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


def cut_student(teacher_dir: Path, student_cfg, overrides: list[str], out_dir: Path) -> tuple[Path, dict]:
    """Save an untrained student (``init_student``: ``student_cfg`` + ``key=value`` overrides) into ``out_dir``."""
    from components.settings import parse_overrides
    from components.train.student import init_student

    values = parse_overrides(overrides)
    cfg = type(student_cfg).model_validate({**student_cfg.model_dump(), **values})
    model, processor, report = init_student(teacher_dir, cfg)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir, {k: report[k] for k in ("encoder_layer_indices", "decoder_layer_indices", "window_s",
                                            "student_params")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_sample_args(parser)
    parser.add_argument("--rounds", type=int, default=None, help="default: evaluate.speed_rounds")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.speed_batch_size")
    parser.add_argument("--protocols", default=None, help="comma list of natural,fixed (default: evaluate's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: evaluate.max_new_tokens")
    parser.add_argument("--student-exports", default="ct2_int8",
                        help="comma list of torch_int8,ct2_float32,ct2_int8,torch_vocab,ct2_int8_vocab")
    parser.add_argument("--teacher-exports", default="ct2_int8", help="comma list (the same-runtime peers)")
    parser.add_argument("--labels", default=None, help="label stage output for the *_vocab exports (default: label.out_dir)")
    parser.add_argument("--isolation", default=None, choices=("form", "runtime", "none"),
                        help="default: evaluate.speed_isolation")
    parser.add_argument("--init-student", action="append", default=None, metavar="KEY=VALUE",
                        help="time an untrained student cut from the teacher (a train.student override; repeatable)")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    from components.evaluate import load_prepared_sets
    from components.export import load_form, make_export
    from components.settings import load_settings
    from components.speed import measure_speed, speed_sample

    settings = load_settings(args.params)
    base = settings.evaluate
    update = {k: v for k, v in {
        "speed_isolation": args.isolation,
        "speed_set": args.speed_set, "speed_clips": args.clips, "speed_rounds": args.rounds,
        "speed_batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "speed_protocols": tuple(p.strip() for p in args.protocols.split(",")) if args.protocols else None,
    }.items() if v is not None}
    if args.init_student:
        update["speed_protocols"] = ("fixed",)
    cfg = type(base).model_validate({**base.model_dump(), **update})  # validated like params.yaml values
    if cfg.speed_clips < 1:
        raise SystemExit("--clips must be >= 1")

    wanted = {k.strip() for k in f"{args.teacher_exports},{args.student_exports}".split(",")}
    vocab_texts = None
    if any(k.endswith("_vocab") for k in wanted):
        from components.evaluate import training_label_texts

        labels = Path(args.labels or settings.label.out_dir)
        vocab_texts = training_label_texts(labels)
        if not vocab_texts:
            raise SystemExit(f"pruned-vocabulary exports need the label stage's output with a train split: none at {labels}")
    exports_dir = Path(tempfile.mkdtemp(prefix="bench-speed-exports-"))
    student_dir, student_report = Path(args.student), None
    try:
        if args.init_student:
            student_dir, student_report = cut_student(Path(args.teacher), settings.train.student, args.init_student,
                                                      exports_dir / "init_student")
        teacher = load_form(args.teacher, "teacher")
        student = load_form(student_dir, "student")
        forms, exported = [teacher, student], {}
        for base_form, kinds in ((teacher, args.teacher_exports), (student, args.student_exports)):
            for kind in [k.strip() for k in kinds.split(",") if k.strip()]:
                form = make_export(base_form, kind, exports_dir, cfg.ct2_encoder, vocab_texts,
                                   cfg.ct2_decode_threads)
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
        "teacher": str(args.teacher), "prepared": str(args.prepared),
        "student": f"init_student({', '.join(args.init_student)})" if args.init_student else str(args.student),
        "init_student": student_report,
        "speedup_table": rows,
        "speedup_table_markdown": table,
        "exports": exported,
        "speed": speed,
        "settings": {k: getattr(cfg, k) for k in ("speed_set", "speed_clips", "speed_rounds", "speed_batch_size",
                                                  "speed_protocols", "max_new_tokens", "num_beams", "ct2_encoder",
                                                  "ct2_decode_threads", "speed_isolation")},
    }
    path = write_result_in("speed", result, args.results_dir)
    print(table)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
