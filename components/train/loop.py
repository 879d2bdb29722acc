"""Stage `train`: ASKD distillation of the student from the teacher (``distill``).

One Accelerate loop for CPU (default) and GPUs (``accelerate launch`` unchanged; mixed precision on GPU).
Each optimiser step:

1. the batch is a pure function of (seed, step) (see ``components.train.data``);
2. encoder states come from the teacher-encoder cache when the student shares the frozen teacher encoder,
   else from a forward pass;
3. teacher logits (no grad) and, in ASKD stage B, self-teacher logits (EMA / snapshot / previous epoch);
4. loss = w_ce CE + alpha(t) T^2 KL(teacher||student) + beta(t) T^2 KL(self||student) [+ feature MSE];
5. NaN/inf guard, gradient clipping, AdamW, warmup + decay, EMA update; every term logged per step.

Every ``eval_every_steps`` the student decodes the validation clips with real ``generate`` and the WER
(Whisper normaliser) decides the best checkpoint and early stopping. Checkpoints every ``save_every_steps``
make a killed run resume to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.artifacts import atomic_dir, write_json_atomic, write_metrics
from components.audio import dataset_audio_arrays
from components.settings import TrainSettings
from components.text import wer
from components.train import checkpoint as ckpt
from components.train.data import (
    IGNORE_INDEX,
    EncoderCache,
    SpecialTokens,
    batch_indices,
    build_sequence,
    cache_key,
    collate,
    features,
    load_split,
    pack_audio,
    pack_tokens,
    plan_packs,
)
from components.train.fake_quant import fake_quantize_linears, remove_fake_quant
from components.train.losses import distillation_loss, loss_weights, stage_b_summary
from components.train.plots import plot_training
from components.train.self_teacher import EmaTeacher, PreviousEpochTargets, snapshot_teacher
from components.train.student import init_student, label_logits, shorten_window, teacher_for_training
from components.train.teacher_states import filled_teacher_states
from components.vocab import aligned_rows, kept_columns, pruned_head, training_vocabulary, write_vocab_file
from components.whisper_io import generate_tokens, load_whisper

STEP_LOG = Path("metrics/train_steps.csv")
EVAL_LOG = Path("metrics/train_eval.csv")
STEP_FIELDS = ["step", "loss", "ce", "kl", "self_kd", "feature", "self_kd_share", "alpha", "beta", "w_ce", "lr",
               "grad_norm"]
EVAL_FIELDS = ["step", "val_wer", "teacher_val_wer"]
WINDOW_MARGIN_S = 0.2  # clips must fit the encoder window with this margin


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf; the message names the step and the loss terms."""


def _eval_wer(model, processor, audios, refs, batch_size: int, max_new_tokens: int,
              keep: list[int] | None = None) -> tuple[float, list[str]]:
    model.eval()
    with torch.no_grad(), pruned_head(model, keep):  # keep: a student trained on a kept vocabulary scores only it
        hyps = [t for _, t in generate_tokens(model, processor, audios, batch_size=batch_size,
                                                max_new_tokens=max_new_tokens)]
    model.train()
    return wer(refs, hyps), hyps


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """(Re)write a log from the rows a checkpoint carries: a resumed run's logs equal an uninterrupted run's,
    even when the file was deleted meanwhile (``dvc repro`` removes a stage's outputs before running it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(_csv_row({k: r.get(k) for k in fields}) for r in rows)


def _append_csv(path: Path, fields: list[str], row: dict[str, Any]) -> None:
    with path.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=fields).writerow(_csv_row({k: row.get(k) for k in fields}))


def _filled_cache(cfg: TrainSettings, teacher_dir: Path, window_s: float, model, processor, audios, ids,
                  desc: str) -> EncoderCache:
    """The on-disk cache of ``model``'s encoder outputs for ``audios`` at ``window_s``, filled (resumably) if needed."""
    from tqdm import tqdm

    key = cache_key(teacher_dir, window_s, processor)
    cache = EncoderCache(Path(cfg.cache_dir) / key, "train", len(audios), int(model.config.max_source_positions),
                         model.config.d_model, ids)
    if not cache.complete:
        encoder = model.get_encoder()

        def encode(batch):
            with torch.no_grad():
                return encoder(features(processor, batch)).last_hidden_state

        with tqdm(total=len(audios), initial=cache.done_rows(), desc=desc, unit="clip", dynamic_ncols=True) as bar:
            cache.fill(encode, lambda rows: [audios[r] for r in rows], bar)
    return cache


def _scatter_rows(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` label-position rows back into a ``[B, L, V]`` tensor (zeros elsewhere: masked out of the loss)."""
    out = rows.new_zeros((*mask.shape, rows.shape[-1]))
    out[mask] = rows
    return out


def _kd_ever(cfg: TrainSettings) -> bool:
    """Whether the teacher's logits weigh in at any step (alpha moves monotonically from start to end)."""
    a = cfg.askd
    return a.alpha_start > 0 or (a.alpha_schedule != "constant" and a.alpha_end > 0)


def distill(cfg: TrainSettings, teacher_dir: Path, labelled_dir: Path) -> dict[str, Any]:
    """Train the student; write it to ``cfg.out_dir`` and ``metrics/train.json``; return the metrics."""
    from accelerate import Accelerator
    from tqdm import tqdm
    from transformers import get_scheduler

    teacher_dir, labelled_dir = Path(teacher_dir), Path(labelled_dir)
    if not (labelled_dir / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"no labelled dataset at '{labelled_dir}' (run the label stage first)")
    started = time.perf_counter()
    use_cuda = torch.cuda.is_available()
    acc = Accelerator(mixed_precision=cfg.optim.mixed_precision if use_cuda else "no", cpu=not use_cuda,
                      gradient_accumulation_steps=cfg.optim.grad_accum_steps)
    torch.manual_seed(cfg.seed)

    student, processor, report = init_student(teacher_dir, cfg.student)
    teacher = teacher_for_training(teacher_dir, cfg.student.window_s)
    # teacher_window full / N s: the KD targets come from the teacher at its own window or cut to N s (not to the
    # student's): a shorter-window student keeps good targets; N s caches its encoder outputs faster than 30 s
    kd_teacher, kd_processor = teacher, processor
    if cfg.teacher_window != "student":
        kd_teacher, kd_processor = load_whisper(teacher_dir)
        if cfg.teacher_window != "full":
            kd_teacher, kd_processor = shorten_window(kd_teacher, kd_processor, cfg.teacher_window)
        kd_teacher.requires_grad_(False).eval()
        if int(kd_teacher.config.max_source_positions) == int(teacher.config.max_source_positions):
            kd_teacher, kd_processor = teacher, processor  # the student already has the teacher's window
    if cfg.askd.fake_quant_bits:
        fake_quantize_linears(student, cfg.askd.fake_quant_bits)
    window = cfg.student.window_s - WINDOW_MARGIN_S
    train_ds, train_stats = load_split(labelled_dir, "train", window)
    val_ds, val_stats = load_split(labelled_dir, "validation", window)
    if len(train_ds) == 0:
        raise ValueError(f"no training clips fit the {cfg.student.window_s} s window (train.student.window_s)")
    val_ds = val_ds.select(range(min(cfg.eval_max_clips, len(val_ds))))
    train_audio, val_audio = dataset_audio_arrays(train_ds), dataset_audio_arrays(val_ds)
    train_tokens, train_ids = list(train_ds["teacher_tokens"]), list(train_ds["id"])
    val_refs = [r if h else t for r, h, t in zip(val_ds["text"], val_ds["has_text"], val_ds["teacher_text"], strict=True)]
    special = SpecialTokens.from_processor(processor, student.generation_config, "en", "transcribe")
    pad_id = special.eot
    # train.student.vocab_top_ranks: the student's labels spelled with the kept tokens only (None: off)
    kv = training_vocabulary(cfg, processor.tokenizer, int(student.config.vocab_size), _kd_ever(cfg))
    keep = None if kv is None else kv.keep
    # packed examples: several clips in one window (long-form robustness), in training and in validation
    train_packs = plan_packs(train_ds["duration_s"], window, cfg.pack_gap_s,
                             round(cfg.pack_fraction * len(train_ds)), cfg.pack_max_clips, cfg.seed)
    train_audio += [pack_audio(train_audio, p, cfg.pack_gap_s) for p in train_packs]
    train_tokens += [pack_tokens(train_tokens, p, special.timestamp_begin) for p in train_packs]
    train_ids += ["+".join(train_ids[i] for i in p) for p in train_packs]
    teacher_tokens = train_tokens  # the teacher's own tokens: its decoder states are computed on these
    if kv is not None:
        train_tokens = [kv.spell(t) for t in teacher_tokens]
    val_packs = plan_packs(val_ds["duration_s"], window, cfg.pack_gap_s,
                           round(cfg.pack_fraction * len(val_ds)), cfg.pack_max_clips, cfg.seed + 1)
    val_audio += [pack_audio(val_audio, p, cfg.pack_gap_s) for p in val_packs]
    val_refs += [" ".join(val_refs[i] for i in p) for p in val_packs]
    train_stats["packed"], val_stats["packed"] = len(train_packs), len(val_packs)
    n_train = len(train_audio)

    shared_encoder = bool(report["encoder_is_teacher"] and cfg.student.freeze_encoder)
    cache = kd_cache = None
    if shared_encoder and cfg.student.cache_encoder_outputs:
        cache = _filled_cache(cfg, teacher_dir, cfg.student.window_s, teacher, processor, train_audio, train_ids,
                              "encoder cache")
        if kd_teacher is not teacher:
            kd_cache = _filled_cache(cfg, teacher_dir, kd_processor.feature_extractor.chunk_length, kd_teacher,
                                     kd_processor, train_audio, train_ids,
                                     f"teacher encoder cache ({kd_processor.feature_extractor.chunk_length} s)")

    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = get_scheduler(cfg.optim.lr_schedule, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                              num_training_steps=cfg.optim.max_steps)
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    device = acc.device
    keep_t = fold = None
    if kv is not None:
        keep_t = torch.as_tensor(kv.keep, dtype=torch.long, device=device)
        fold = tuple(torch.as_tensor(x, dtype=torch.long, device=device) for x in kv.fold_index())
    teacher.to(device)  # frozen: not wrapped (DDP refuses modules without trainable parameters)
    kd_teacher.to(device)
    kd_states = align = n_teacher = None  # train.cache_teacher_states: the teacher's decoder runs once per example, not every step
    fixed_sequences = cfg.timestamp_probability == 0 and cfg.condition_on_prev_probability == 0
    if cfg.cache_teacher_states and fixed_sequences and cfg.askd.feature_weight == 0 and _kd_ever(cfg):
        fixed = [build_sequence(t, special, np.random.default_rng(0), 0.0, None, cfg.max_label_tokens)
                 for t in teacher_tokens]  # exactly what every step builds when no sequence varies
        kd_states = filled_teacher_states(cfg.cache_dir, cache_key(teacher_dir, cfg.student.window_s, processor),
                                          kd_teacher, kd_processor, kd_cache if kd_teacher is not teacher else cache,
                                          train_audio, fixed, pad_id, device)
        if kv is not None:  # each student label position -> the teacher label position its token begins (or -1)
            align, n_teacher = kv.alignment([f[1] for f in fixed], [build_sequence(
                t, special, np.random.default_rng(0), 0.0, None, cfg.max_label_tokens)[1] for t in train_tokens])

    run_dir = Path(cfg.checkpoint_dir) / ckpt.run_key(
        {"train": cfg.model_dump(mode="json", exclude={"out_dir", "checkpoint_dir", "cache_dir", "eval_batch_size"}),
         "teacher": cache_key(teacher_dir, cfg.student.window_s, processor), "data": train_ids,
         **({"init_from": report["init_from_sha256"]} if report["init_from_sha256"] else {})})
    ema: EmaTeacher | None = None
    snapshot = None
    prev_targets = PreviousEpochTargets() if cfg.askd.self_teacher == "previous_epoch" else None
    if cfg.askd.self_teacher == "ema":
        ema = EmaTeacher(acc.unwrap_model(student), decay=cfg.askd.ema_decay)
    history: list[dict[str, Any]] = []
    best = {"wer": math.inf, "step": 0, "state": ckpt.trainable_state(acc.unwrap_model(student))}
    top: list[dict[str, Any]] = []  # the average_best lowest-WER evaluation points (with average_best > 1)
    step_log: list[dict[str, Any]] = []  # the rows of STEP_LOG, carried by every checkpoint
    step, prior_s = 0, 0.0  # prior_s: training seconds of the run before this process resumed it
    state = ckpt.latest_checkpoint(run_dir)
    if state is not None:
        acc.unwrap_model(student).load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if state.get("snapshot") is not None:
            snapshot = snapshot_teacher(acc.unwrap_model(student))
            snapshot.load_state_dict(state["snapshot"])
        if prev_targets is not None and state.get("prev_targets") is not None:
            prev_targets.load_state_dict(state["prev_targets"])
        history, best, step = state["history"], state["best"], state["step"]
        top, step_log = state.get("top") or [], state.get("step_log") or []
        prior_s = float(state.get("elapsed_s") or 0.0)
        ckpt.set_rng_state(state["rng"])
    _write_csv(STEP_LOG, STEP_FIELDS, step_log)
    _write_csv(EVAL_LOG, EVAL_FIELDS, history)

    teacher_val_wer = None
    if history and "teacher_val_wer" in history[0]:
        teacher_val_wer = history[0]["teacher_val_wer"]
    else:
        teacher_val_wer, _ = _eval_wer(teacher, processor, val_audio, val_refs,
                                       cfg.eval_batch_size, cfg.max_label_tokens)

    max_steps, bs = cfg.optim.max_steps, cfg.optim.batch_size
    per_epoch = max(1, n_train // bs)
    stopped_early = False
    resumed_from_step = step
    student.train()
    with tqdm(total=max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True) as bar:
        while step < max_steps:
            weights = loss_weights(step, max_steps, cfg.askd)
            if weights.self_kd > 0 and cfg.askd.self_teacher == "snapshot" and snapshot is None:
                snapshot = snapshot_teacher(acc.unwrap_model(student))
            idx = batch_indices(step, n_train, bs, cfg.seed)
            rng = np.random.default_rng((cfg.seed, step))
            pairs = []
            for i in idx:
                prev = None
                if rng.random() < cfg.condition_on_prev_probability:
                    prev = train_tokens[int(rng.integers(n_train))]
                pairs.append(build_sequence(train_tokens[i], special, rng, cfg.timestamp_probability, prev,
                                            cfg.max_label_tokens))
            dec_in, targets = (t.to(device) for t in collate(pairs, pad_id))
            labels = targets != IGNORE_INDEX
            # logits only at label positions (half of a batch): not with hidden-state or per-position self-targets,
            # nor under DDP (see label_logits)
            label_only = shared_encoder and weights.feature == 0 and prev_targets is None and acc.num_processes == 1

            def logits_of(model, states):
                if label_only:
                    return label_logits(model, states, dec_in, labels)
                return model(encoder_outputs=(states,), decoder_input_ids=dec_in).logits

            with torch.no_grad():
                if cache is not None:
                    enc = cache.rows(idx).to(device)
                else:
                    enc = teacher.get_encoder()(features(processor, [train_audio[i] for i in idx]).to(device)).last_hidden_state
                t_enc = enc
                if kd_teacher is not teacher and kd_states is None:
                    t_enc = kd_cache.rows(idx).to(device) if kd_cache is not None else kd_teacher.get_encoder()(
                        features(kd_processor, [train_audio[i] for i in idx]).to(device)).last_hidden_state
                t_out, kd_in = None, None
                kd_valid = None  # kept vocabulary: student label positions that have a teacher target
                if kd_states is not None:
                    if weights.kd > 0:  # the teacher's logits at the label positions: its output layer only
                        kd_rows = kd_teacher.proj_out(kd_states.rows(idx).to(device))
                        if align is not None:  # kept vocabulary: at the student's label positions
                            kd_rows, kd_valid = aligned_rows(kd_rows, idx, align, n_teacher)
                            kd_valid = kd_valid[None] if label_only else _scatter_rows(kd_valid[:, None], labels)[..., 0]
                        kd_in = kd_rows.unsqueeze(0) if label_only else _scatter_rows(kd_rows, labels)
                elif weights.feature > 0:
                    t_out = kd_teacher(encoder_outputs=(t_enc,), decoder_input_ids=dec_in, output_hidden_states=True)
                    kd_in = t_out.logits
                elif weights.kd > 0:
                    kd_in = logits_of(kd_teacher, t_enc)
                self_logits = None
                if weights.self_kd > 0:
                    if cfg.askd.self_teacher == "ema" and ema is not None:
                        self_logits = logits_of(ema.model, enc)
                    elif cfg.askd.self_teacher == "snapshot" and snapshot is not None:
                        self_logits = logits_of(snapshot, enc)
                    elif prev_targets is not None:
                        self_logits = prev_targets.logits_for([train_ids[i] for i in idx], targets)
            with acc.accumulate(student):
                s_enc = (enc,) if shared_encoder else None
                s_kwargs = {"encoder_outputs": s_enc} if s_enc is not None else {
                    "input_features": features(processor, [train_audio[i] for i in idx]).to(device)}
                if label_only:
                    with acc.autocast():
                        s_out = label_logits(acc.unwrap_model(student), enc, dec_in, labels)
                else:
                    s_out = student(**s_kwargs, decoder_input_ids=dec_in, output_hidden_states=weights.feature > 0)
                loss_targets = targets[labels].unsqueeze(0) if label_only else targets
                if keep_t is not None:
                    s_out, kd_in, self_logits, loss_targets = kept_columns(
                        keep_t, s_out, kd_in, self_logits, loss_targets, fold, cfg.askd.temperature, kd_valid)
                loss, parts = distillation_loss(
                    s_out, kd_in, self_logits, loss_targets, weights,
                    cfg.askd.temperature,
                    teacher_hidden=getattr(t_out, "decoder_hidden_states", None),
                    mapping=report["mapping"]["decoder"],
                )
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step}: {parts}; lower train.optim.lr or check the labels"
                    )
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(params, cfg.optim.max_grad_norm) if acc.sync_gradients else None
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if ema is not None:
                ema.update(acc.unwrap_model(student))
            if prev_targets is not None:
                prev_targets.record([train_ids[i] for i in idx], s_out.logits.detach(), targets)
            step += 1
            if prev_targets is not None and step % per_epoch == 0:
                prev_targets.next_epoch()
            row = {"step": step, "loss": loss.item(), **parts, "alpha": weights.kd, "beta": weights.self_kd,
                   "w_ce": weights.ce, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm) if grad_norm is not None else float("nan")}
            if step % cfg.log_every_steps == 0:
                step_log.append({k: row.get(k) for k in STEP_FIELDS})
                _append_csv(STEP_LOG, STEP_FIELDS, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", ce=f"{parts['ce']:.3f}", alpha=f"{weights.kd:.2f}")
            bar.update(1)

            if step % cfg.eval_every_steps == 0 or step == max_steps:
                val_wer, _ = _eval_wer(acc.unwrap_model(student), processor, val_audio, val_refs,
                                       cfg.eval_batch_size, cfg.max_label_tokens, keep)
                entry = {"step": step, "val_wer": round(val_wer, 3), "teacher_val_wer": round(teacher_val_wer, 3)}
                history.append(entry)
                _append_csv(EVAL_LOG, EVAL_FIELDS, entry)
                if val_wer < best["wer"]:
                    best = {"wer": val_wer, "step": step, "state": ckpt.trainable_state(acc.unwrap_model(student))}
                if cfg.average_best > 1:
                    here = best["state"] if best["step"] == step else ckpt.trainable_state(acc.unwrap_model(student))
                    top = ckpt.keep_top(top, {"wer": val_wer, "step": step, "state": here}, cfg.average_best)
                bar.write(f"step {step}: validation WER {val_wer:.2f} % (teacher at the {cfg.student.window_s} s window {teacher_val_wer:.2f} %, best {best['wer']:.2f} % @ {best['step']})")
                evals_since_best = sum(1 for h in history if h["step"] > best["step"])
                patience = cfg.early_stopping_patience
                if patience and evals_since_best >= patience and step < max_steps:
                    stopped_early = True
            if step % cfg.save_every_steps == 0 or step == max_steps or stopped_early:
                ckpt.save_checkpoint(run_dir, step, {
                    "model": ckpt.trainable_state(acc.unwrap_model(student)),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "snapshot": snapshot.state_dict() if snapshot is not None else None,
                    "prev_targets": prev_targets.state_dict() if prev_targets is not None else None,
                    "history": history, "best": best, "top": top, "step_log": step_log,
                    "elapsed_s": prior_s + time.perf_counter() - started,
                }, cfg.keep_checkpoints)
            if stopped_early:
                bar.write(f"early stopping at step {step}: no improvement in {cfg.early_stopping_patience} evaluations")
                break

    final = acc.unwrap_model(student)
    averaged_steps, final_wer = [best["step"]], best["wer"]
    if len(top) <= 1:
        final.load_state_dict(best["state"], strict=False)
    else:  # checkpoint averaging: the mean of the lowest-WER evaluation points, then re-scored
        final.load_state_dict(ckpt.average_states([e["state"] for e in top]), strict=False)
        averaged_steps = sorted(e["step"] for e in top)
        final_wer, _ = _eval_wer(final, processor, val_audio, val_refs, cfg.eval_batch_size, cfg.max_label_tokens,
                                 keep)
        tqdm.write(f"averaged the weights of steps {averaged_steps}: validation WER {final_wer:.2f} % "
                   f"(best single step {best['wer']:.2f} % @ {best['step']})")
    if cfg.askd.fake_quant_bits:
        remove_fake_quant(final, keep_quantized=True)
    seconds = time.perf_counter() - started  # this process (load, cache, steps, evaluations, averaging)
    metrics = {
        "steps": step,
        "best_step": best["step"],
        "best_val_wer_percent": round(best["wer"], 3),
        "averaged_steps": averaged_steps,  # the saved weights: this one step, or the mean of these (average_best)
        "final_val_wer_percent": round(final_wer, 3),
        "teacher_val_wer_percent": round(teacher_val_wer, 3),  # the teacher cut to the student's window
        "teacher_val_window_s": cfg.student.window_s,
        "stopped_early": stopped_early,
        "preset_loss": cfg.askd.model_dump(mode="json"),
        "stage_b": stage_b_summary(step_log),  # the self-teacher term's share of the loss in stage B
        "student": {k: v for k, v in report.items() if k != "mapping"},
        "vocab": None if kv is None else kv.stats(teacher_tokens, train_tokens, align),  # null: the whole vocabulary
        "data": {"train": train_stats, "validation": val_stats, "eval_clips": len(val_audio)},
        "encoder_cache": bool(cache is not None),
        "teacher_states_cached": kd_states is not None,  # false: the teacher's decoder ran every step
        "seconds": round(prior_s + seconds, 1),  # the whole run, summed over resumes (steps redone after a kill not counted)
        "seconds_this_process": round(seconds, 1),
        "resumed_from_step": resumed_from_step,  # 0: trained from scratch in this process
        "device": str(device),
        "history": history,
    }
    out = Path(cfg.out_dir)
    with atomic_dir(out) as tmp:
        final.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if keep is not None:  # every loader and export of the folder scores only the kept tokens
            write_vocab_file(tmp, keep, int(final.config.vocab_size), f"train.student.vocab_top_ranks="
                             f"{cfg.student.vocab_top_ranks}")
        write_json_atomic(tmp / "training_report.json", metrics)
    plot_training(step_log, history)
    write_metrics("train", {k: v for k, v in metrics.items() if k != "history"})
    return metrics
