"""Training step: cached teacher-encoder outputs vs recomputing the teacher encoder every step.

All methods run the train stage's own pieces (``components.train``): the student from ``init_student``, the
teacher from ``teacher_for_training`` (same window), label sequences from ``build_sequence``/``collate``,
batches from ``batch_indices``, features from ``features``, the loss from ``distillation_loss`` with
``loss_weights`` of the default ASKD schedule, then backward, gradient clipping and an AdamW step. They differ
only in where the encoder states and the teacher's KD targets come from:

* ``recompute``: the frozen teacher encoder's forward pass on the batch's log-mel features, then the teacher's
  decoder for its logits and the full-vocabulary KL, every step;
* ``cached``: encoder states from ``EncoderCache.rows`` (float16 memmap filled once before timing, as the loop
  does), the teacher's decoder still runs every step (``train.cache_teacher_states: false``);
* ``cached_states``: encoder states from the cache and the teacher decoder's final states at the label positions
  from ``TeacherStateCache`` (filled once before timing; ``train.cache_teacher_states``, the train stage's
  default): the step runs only the teacher's output layer on them (exact logits), not its decoder.

Every method projects only the label positions to the vocabulary (``label_logits``, as the loop does), so the
ratios measure the caches alone.

Same student weights at the start (one copy and one optimiser per method), same batches (step ``k`` of round ``r``
is global step ``r * steps + k`` for both), interleaved rounds (order reversed every other round), one untimed
warm-up step each (its FLOPs are counted: ``flop_ratio_recompute_vs_cached`` is the speed-up a machine whose
time followed matmul FLOPs would show, a load-independent cross-check); the minimum seconds per step over rounds
is reported. The self-teacher (ASKD stage B) and
EMA update are left out: they cost the same in both methods (early steps of the schedule have beta = 0).
The cache build time is reported separately (a one-off cost per teacher and window, reused across runs).

Data: the labelled train split (``--labelled``, clips and teacher tokens, clips that fit the window) when it
exists, else synthetic tones + noise with a tokenised sentence (timing only; the JSON says which).

    python benchmarks/train_step.py [--teacher models/teacher] [--batch-size 8] [--rounds 3] [--steps 3]
                                    [--[no-]freeze-embeddings]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import tiny_random_whisper, write_result_in  # noqa: E402

TARGET_RATIO = 3.0  # issue 9: the cache must make a training step at least 3x faster
SAMPLE_RATE_HZ = 16_000
SYNTH_SENTENCE = "the quick brown fox jumps over the lazy dog and keeps on running"


def _synthetic_clips(n: int, window_s: float, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        seconds = float(rng.uniform(1.5, max(2.0, window_s - 1.0)))
        t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
        tone = 0.1 * np.sin(2 * np.pi * rng.uniform(120, 400) * t)
        clips.append((tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher", help="transformers Whisper folder (missing: tiny random)")
    parser.add_argument("--labelled", default="data/labelled", help="labelled dataset (missing: synthetic clips)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    parser.add_argument("--clips", type=int, default=32, help="clip pool the batches are drawn from (and cached)")
    parser.add_argument("--window-s", type=int, default=None, help="student window (default: train.student.window_s)")
    parser.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="student token embedding = output layer frozen (default: train.student.freeze_embeddings)")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from components.audio import dataset_audio_arrays
    from components.settings import AskdSchedule, OptimSettings, StudentSettings
    from components.train.data import (
        EncoderCache,
        SpecialTokens,
        batch_indices,
        build_sequence,
        cache_key,
        collate,
        features,
        load_split,
    )
    from components.train.loop import WINDOW_MARGIN_S
    from components.train.losses import distillation_loss, loss_weights
    from components.train.student import init_student, label_logits, teacher_for_training
    from components.train.teacher_states import TeacherStateCache, teacher_label_states

    scratch = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    try:
        teacher_dir = Path(args.teacher)
        teacher_kind = "given"
        if not (teacher_dir / "config.json").is_file():
            teacher_dir = tiny_random_whisper(scratch / "tiny-teacher")
            teacher_kind = f"tiny random (no model at {args.teacher})"
        from transformers import WhisperConfig

        n_dec = int(WhisperConfig.from_pretrained(teacher_dir).decoder_layers)
        defaults = StudentSettings()
        window_s = args.window_s or defaults.window_s
        freeze_emb = defaults.freeze_embeddings if args.freeze_embeddings is None else args.freeze_embeddings
        student_cfg = defaults.model_copy(update={"window_s": window_s, "freeze_embeddings": freeze_emb,
                                                  "decoder_layers": min(defaults.decoder_layers, n_dec)})
        student, processor, report = init_student(teacher_dir, student_cfg)
        if not report["encoder_is_teacher"]:
            raise SystemExit("the student does not share the teacher's encoder: nothing to cache")
        teacher = teacher_for_training(teacher_dir, window_s)
        special = SpecialTokens.from_processor(processor, student.generation_config, "en", "transcribe")

        labelled = Path(args.labelled)
        if (labelled / "dataset_dict.json").is_file():
            ds, _ = load_split(labelled, "train", window_s - WINDOW_MARGIN_S)
            ds = ds.select(range(min(args.clips, len(ds))))
            audios, tokens = dataset_audio_arrays(ds), [list(t) for t in ds["teacher_tokens"]]
            data_kind = f"labelled train split ({labelled})"
        else:
            audios = _synthetic_clips(args.clips, window_s)
            sentence = processor.tokenizer(SYNTH_SENTENCE, add_special_tokens=False).input_ids
            tokens = [sentence[: 4 + (i % max(1, len(sentence) - 4))] for i in range(len(audios))]
            data_kind = "synthetic tones + noise, tokenised sentence (timing only)"
        n = len(audios)
        if n < args.batch_size:
            raise SystemExit(f"only {n} clips fit the {window_s} s window; need at least --batch-size {args.batch_size}")

        encoder = teacher.get_encoder()

        def encode(batch_audios):
            with torch.no_grad():
                return encoder(features(processor, batch_audios)).last_hidden_state

        key = cache_key(teacher_dir, window_s, processor)
        cache = EncoderCache(scratch / "cache" / key, "train", n, int(teacher.config.max_source_positions),
                             int(teacher.config.d_model), [str(i) for i in range(n)])
        started = time.perf_counter()
        cache.fill(encode, lambda rows: [audios[r] for r in rows])
        cache_fill_s = time.perf_counter() - started

        optim_cfg, schedule = OptimSettings(), AskdSchedule()
        temperature = schedule.temperature
        fixed = [build_sequence(t, special, np.random.default_rng(0), 0.0, None, 128) for t in tokens]
        states_store = TeacherStateCache(scratch / "teacher_states", fixed, int(teacher.config.d_model))

        def teacher_rows(rows):
            dec_in, targets = collate([fixed[r] for r in rows], special.eot)
            return teacher_label_states(teacher, cache.rows(rows), dec_in, targets != -100)

        started = time.perf_counter()
        states_store.fill(teacher_rows)
        states_fill_s = time.perf_counter() - started
        students = {"cached": student, "recompute": copy.deepcopy(student), "cached_states": copy.deepcopy(student)}
        optimizers = {}
        for name, model in students.items():
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizers[name] = (torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay), params)

        def batch(step: int):
            idx = batch_indices(step, n, args.batch_size, seed=0)
            rng = np.random.default_rng((0, step))
            pairs = [build_sequence(tokens[i], special, rng, 0.0, None, 128) for i in idx]
            dec_in, targets = collate(pairs, special.eot)
            return idx, dec_in, targets

        def loss_of(method: str, step: int):
            idx, dec_in, targets = batch(step)
            with torch.no_grad():
                if method == "recompute":
                    enc = encoder(features(processor, [audios[i] for i in idx])).last_hidden_state
                else:
                    enc = cache.rows(idx)
                labels = targets != -100
                if method == "cached_states":
                    t_logits = teacher.proj_out(states_store.rows(idx)).unsqueeze(0)
                else:
                    t_logits = label_logits(teacher, enc, dec_in, labels)
            weights = loss_weights(step, optim_cfg.max_steps, schedule)
            s_out = label_logits(students[method], enc, dec_in, labels)  # as the loop: label positions only
            return distillation_loss(s_out, t_logits, None, targets[labels].unsqueeze(0), weights, temperature,
                                     mapping=report["mapping"]["decoder"])

        def train_step(method: str, step: int) -> float:
            loss, _ = loss_of(method, step)
            optimizer, params = optimizers[method]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, optim_cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            return float(loss.detach())

        # same weights, same batch: cached and recompute differ only by the cache's float16 rounding; cached_states
        # also by float summation order (states computed in other batches)
        with torch.no_grad():
            first = {m: float(loss_of(m, 0)[0]) for m in students}
        total_steps = args.rounds * args.steps
        from torch.utils.flop_counter import FlopCounterMode

        flops = {}
        for method in students:  # warm-up (untimed) on a step outside the timed range, FLOPs counted
            with FlopCounterMode(display=False) as counter:
                train_step(method, total_steps)
            flops[method] = int(counter.get_total_flops())

        times: dict[str, list[float]] = {m: [] for m in students}
        for r in range(args.rounds):
            order = list(students) if r % 2 == 0 else list(students)[::-1]
            for method in order:
                t0 = time.perf_counter()
                for k in range(args.steps):
                    train_step(method, r * args.steps + k)
                times[method].append((time.perf_counter() - t0) / args.steps)
                print(f"round {r} {method}: {times[method][-1]:.3f} s/step", flush=True)

        best = {m: min(v) for m, v in times.items()}
        ratio = best["recompute"] / best["cached"]
        ratio_states = best["recompute"] / best["cached_states"]
        result = {
            "teacher": str(args.teacher), "teacher_kind": teacher_kind, "data": data_kind,
            "clips": n, "batch_size": args.batch_size, "rounds": args.rounds, "steps_per_round": args.steps,
            "window_s": window_s, "decoder_layers": student_cfg.decoder_layers,
            "student_trainable_params": report["student_trainable"],
            "freeze_embeddings": freeze_emb,
            "seconds_per_step": {m: round(v, 4) for m, v in best.items()},
            "rounds_s_per_step": {m: [round(x, 4) for x in v] for m, v in times.items()},
            "speedup_cached_vs_recompute": round(ratio, 3),
            "speedup_cached_states_vs_recompute": round(ratio_states, 3),
            "target_speedup": TARGET_RATIO,
            "meets_target": bool(ratio_states >= TARGET_RATIO),
            "meets_target_method": "cached_states (the train stage's default: train.cache_teacher_states)",
            "teacher_states_fill": {"seconds": round(states_fill_s, 3), "examples": n},
            "cache_fill": {"seconds": round(cache_fill_s, 3), "clips": n,
                           "clips_per_s": round(n / cache_fill_s, 3) if cache_fill_s > 0 else None,
                           "dtype": "float16"},
            "flops_per_step": flops,
            "flop_ratio_recompute_vs_cached": round(flops["recompute"] / flops["cached"], 3) if flops["cached"] else None,
            "flop_ratio_recompute_vs_cached_states": (round(flops["recompute"] / flops["cached_states"], 3)
                                                      if flops["cached_states"] else None),
            "flops_note": "torch.utils.flop_counter (matmul/conv/attention, forward + backward; not the optimiser "
                          "or element-wise ops): the speed-up if time followed FLOPs, independent of machine load",
            "first_step_loss": {m: round(v, 6) for m, v in first.items()},
            "first_step_loss_abs_diff": round(abs(first["cached"] - first["recompute"]), 6),
            "first_step_loss_states_minus_cached": round(first["cached_states"] - first["cached"], 6),
            "statistic": "min over interleaved rounds of (round seconds / steps)",
            "excluded": "self-teacher (ASKD stage B) forward and EMA update: same cost for both methods",
        }
        path = write_result_in("train_step", result, args.results_dir)
        print(f"recompute {best['recompute']:.3f} s/step, cached encoder {best['cached']:.3f} s/step ({ratio:.2f}x), "
              f"cached encoder + teacher states {best['cached_states']:.3f} s/step ({ratio_states:.2f}x; "
              f"target {TARGET_RATIO}x) -> {path}")
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
