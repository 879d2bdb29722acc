"""Where batch-1 decoding time goes, teacher vs student (transformers fp32): what limits the same-runtime speed-up.

For each model, on the evaluate stage's speed sample (``speed_sample`` of ``--speed-set``), at batch 1, the
minimum over ``--rounds`` interleaved rounds of:

* ``features_s``: the feature extractor (log-mel of the model's window: 30 s for the teacher, 10 s for the student);
* ``encoder_s``: the encoder on those features;
* ``generate_s``: the whole ``model.generate`` call on the features (natural length, greedy), which the
  evaluate stage's ``natural_b1`` figure also pays (plus features and token decoding);
* ``decoder_layers_s`` and ``output_layer_s``: the same generated tokens replayed through a bare KV-cached loop
  (``model.model.decoder`` then ``proj_out``, one token per step), timed apart: the decoder body (embedding, layers,
  final norm) and the 51,865-way output layer;
* ``generate_overhead_s`` = ``generate_s - encoder_s - decoder_layers_s - output_layer_s``: what ``generate`` adds per
  step (logits processors, stopping criteria, cache bookkeeping, Python), which both models pay per step.

The ratios then say what a change could buy: ``ratio_generate`` is the measured same-runtime speed-up of the
generate call; ``ratio_without_overhead`` the ceiling if per-step overhead were zero (same models, a leaner
runtime); ``ratio_encoder`` the encoder alone. Written to ``decode_breakdown.json``.

    python benchmarks/decode_breakdown.py [--clips 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_model_and_sample_args, write_result_in  # noqa: E402

PARTS = ("features_s", "encoder_s", "generate_s", "decoder_layers_s", "output_layer_s")


def time_clip(model, processor, audio, max_new_tokens: int) -> dict:
    """Seconds of each part for one clip at batch 1, and the number of decoder steps."""
    import numpy as np
    import torch

    from components.speed import _prompt_ids
    from components.whisper_io import SAMPLE_RATE_HZ

    out: dict = {}
    with torch.inference_mode():
        t = time.perf_counter()
        feats = processor.feature_extractor([np.asarray(audio, dtype=np.float32)], sampling_rate=SAMPLE_RATE_HZ,
                                            return_tensors="pt").input_features
        out["features_s"] = time.perf_counter() - t
        t = time.perf_counter()
        enc = model.model.encoder(feats).last_hidden_state
        out["encoder_s"] = time.perf_counter() - t
        t = time.perf_counter()
        seq = model.generate(feats, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)
        out["generate_s"] = time.perf_counter() - t
        ids = (seq["sequences"] if isinstance(seq, dict) else seq)[0].tolist()
        forced, n_prompt = _prompt_ids(model.generation_config), 0
        while n_prompt < len(ids) and ids[n_prompt] in forced:
            n_prompt += 1
        n_prompt = max(n_prompt, 1)  # at least the start token
        # replay: the prompt in one step, then one generated token per step (the last one is never fed back)
        steps = [ids[:n_prompt]] + [[tok] for tok in ids[n_prompt:-1]]
        cache, body, head = None, 0.0, 0.0
        for step in steps:
            t = time.perf_counter()
            dec = model.model.decoder(input_ids=torch.tensor([step]), encoder_hidden_states=enc,
                                      past_key_values=cache, use_cache=True)
            t2 = time.perf_counter()
            model.proj_out(dec.last_hidden_state[:, -1:])
            t3 = time.perf_counter()
            cache, body, head = dec.past_key_values, body + t2 - t, head + t3 - t2
        out["decoder_layers_s"], out["output_layer_s"] = body, head
        out["steps"] = len(steps)
    return out


def summarise(per_round: list[list[dict]]) -> dict:
    """Per part: the minimum over rounds of the sample's total; per-step figures from the minima."""
    totals = {p: min(sum(c[p] for c in clips) for clips in per_round) for p in PARTS}
    steps = sum(c["steps"] for c in per_round[0])
    overhead = totals["generate_s"] - totals["encoder_s"] - totals["decoder_layers_s"] - totals["output_layer_s"]
    return {**{k: round(v, 6) for k, v in totals.items()}, "generate_overhead_s": round(overhead, 6),
            "steps": steps, "ms_per_step": {
                "decoder_layers": round(1000 * totals["decoder_layers_s"] / steps, 3),
                "output_layer": round(1000 * totals["output_layer_s"] / steps, 3),
                "generate_overhead": round(1000 * overhead / steps, 3)}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_sample_args(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: evaluate.max_new_tokens")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    from components.evaluate import load_prepared_sets
    from components.export import load_form
    from components.settings import load_settings
    from components.speed import speed_sample
    from components.whisper_io import SAMPLE_RATE_HZ, _quiet_generate_logs

    _quiet_generate_logs()  # transformers warns on every generate call about max_length vs max_new_tokens

    cfg = load_settings(args.params).evaluate
    speed_set = args.speed_set or cfg.speed_set
    n_clips = cfg.speed_clips if args.clips is None else args.clips  # an explicit 0 is rejected, not replaced
    max_new = cfg.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    if n_clips < 1 or args.rounds < 1 or max_new < 1:
        raise SystemExit("--clips, --rounds and --max-new-tokens must be >= 1")
    forms = {name: load_form(path, name) for name, path in (("teacher", args.teacher), ("student", args.student))}
    for name, form in forms.items():
        if form.model is None:
            raise SystemExit(f"{name}: {form.path} is not a transformers model folder")
    sets, _ = load_prepared_sets(Path(args.prepared), [speed_set])
    if not sets:
        raise SystemExit(f"no clips with text in split {speed_set!r} of {args.prepared}")
    audios = speed_sample(sets[0].audios, n_clips, min(f.window_samples for f in forms.values()))
    runs: dict[str, list[list[dict]]] = {name: [] for name in forms}
    for form in forms.values():  # warm-up, not kept
        time_clip(form.model, form.processor, audios[0], max_new)
    for r in range(args.rounds):
        order = list(forms) if r % 2 == 0 else list(forms)[::-1]  # interleaved, alternating order
        for name in order:
            runs[name].append([time_clip(forms[name].model, forms[name].processor, a, max_new)
                               for a in audios])
    models = {name: summarise(per_round) for name, per_round in runs.items()}
    t, s = models["teacher"], models["student"]

    def ratio(*parts: str) -> float:
        return round(sum(t[p] for p in parts) / sum(s[p] for p in parts), 3)

    ratios = {
        "ratio_generate": ratio("generate_s"),
        "ratio_features_plus_generate": ratio("features_s", "generate_s"),
        "ratio_without_overhead": ratio("features_s", "encoder_s", "decoder_layers_s", "output_layer_s"),
        "ratio_encoder": ratio("encoder_s"),
        "ratio_decoder_per_step": round(
            (t["decoder_layers_s"] + t["output_layer_s"]) / t["steps"]
            / ((s["decoder_layers_s"] + s["output_layer_s"]) / s["steps"]), 3),
    }
    result = {"teacher": args.teacher, "student": args.student, "prepared": args.prepared,
              "sample": {"set": speed_set, "clips": len(audios),
                         "audio_s": round(sum(len(a) for a in audios) / SAMPLE_RATE_HZ, 2)},
              "protocol": {"batch_size": 1, "rounds": args.rounds, "statistic": "min over interleaved rounds",
                           "max_new_tokens": max_new, "precision": "float32", "runtime": "transformers"},
              "models": models, "ratios": ratios}
    path = write_result_in("decode_breakdown", result, args.results_dir)
    for name, m in models.items():
        print(f"{name}: features {m['features_s']:.3f} s, encoder {m['encoder_s']:.3f} s, generate "
              f"{m['generate_s']:.3f} s over {m['steps']} steps; per step (ms): {m['ms_per_step']}")
    print(ratios)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
