"""What vocabulary pruning costs in WER, per kept set, on any model (the teacher needs no training).

A pruned output layer (``components.vocab.PrunedHead``) leaves the kept tokens' logits unchanged, so greedy
decoding with it equals the full model's on every clip whose full-model output holds only kept tokens. This
script decodes every clip of the test sets once with the full model, then, per kept set, re-decodes only the clips
whose output uses a pruned token (and, as a check of that claim, a few clips that do not: they must come out
the same). Kept sets (``components.vocab.kept_token_ids``):

* ``texts``: the tokens of the training texts (``--labels``: the label stage's output, the pseudo-labels the
  student learned from; or ``--texts-profile full``: the source sentences of that profile's training pool,
  for a machine that has not labelled that profile) + single bytes + special/timestamp tokens;
* ``texts+topN``: those and every id below N (byte-level BPE ids run in merge order: the low ids are the
  tokenizer's most frequent pieces);
* ``topN``: the ids below N alone (no training texts at all).

    python benchmarks/vocab_kept_set.py [--model models/teacher] [--prepared data/prepared]
        [--texts-profile full | --labels data/labels] [--top 0,8192,16384,32768] [--sets test,test_ood]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result_in  # noqa: E402

SAME_OUTPUT_CHECK_CLIPS = 4  # unaffected clips re-decoded per kept set to check "same output"


def training_texts(args, settings) -> tuple[list[str], str]:
    if args.texts_profile:
        from components.settings import load_settings
        from components.synth import sentence_pools

        pools = sentence_pools(load_settings(args.params, overrides=[f"profile={args.texts_profile}"]).synth)
        return list(pools["train"]), f"profile {args.texts_profile}: {len(pools['train'])} training-pool sentences"
    from components.evaluate import training_label_texts

    labels = Path(args.labels or settings.label.out_dir)
    texts = training_label_texts(labels)
    if not texts:
        raise SystemExit(f"no training labels at {labels} (use --texts-profile full or --labels DIR)")
    return texts, f"{len(texts)} training labels of {labels}"


def kept_sets(tokenizer, texts: list[str], vocab_size: int, tops: list[int]) -> dict[str, list[int]]:
    from components.vocab import kept_token_ids

    sets = {}
    for top in tops:
        sets["texts" if top == 0 else f"texts+top{top}"] = kept_token_ids(tokenizer, texts, vocab_size, top)
    for top in tops:
        if top > 0:
            sets[f"top{top}"] = kept_token_ids(tokenizer, [], vocab_size, top)
    return sets


def decode(form, audios, cfg):
    return form.decode(audios, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams,
                       stride_fraction=cfg.longform_stride_fraction, longform=cfg.longform)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default=None, help="transformers Whisper folder (default: teacher.out_dir)")
    parser.add_argument("--prepared", default=None, help="prepared dataset (default: prepare.out_dir)")
    parser.add_argument("--labels", default=None, help="label stage output (default: label.out_dir)")
    parser.add_argument("--texts-profile", default=None, help="use this profile's training-pool sentences instead")
    parser.add_argument("--top", default="0,8192,16384,32768", help="comma list of rank cut-offs (0 = texts only)")
    parser.add_argument("--sets", default="test,test_ood,test_longform")
    parser.add_argument("--max-clips", type=int, default=None)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from components.evaluate import load_prepared_sets
    from components.export import load_form
    from components.settings import load_settings
    from components.text import wer
    from components.vocab import PrunedHead

    settings = load_settings(args.params)
    cfg = settings.evaluate
    form = load_form(args.model or settings.teacher.out_dir, "model")
    if form.kind != "transformers":
        raise SystemExit(f"--model must be a plain transformers folder, got a {form.kind} form")
    texts, texts_source = training_texts(args, settings)
    vocab_size = int(form.model.config.vocab_size)
    tops = [int(t) for t in args.top.split(",") if t.strip()]
    candidates = kept_sets(form.processor.tokenizer, texts, vocab_size, tops)
    sets, missing = load_prepared_sets(Path(args.prepared or settings.prepare.out_dir),
                                       [s.strip() for s in args.sets.split(",") if s.strip()], args.max_clips)
    if not sets:
        raise SystemExit(f"none of the sets {args.sets} in the prepared dataset")

    started = time.perf_counter()
    full = {s.name: decode(form, s.audios, cfg) for s in tqdm(sets, desc="full-vocabulary decode", unit="set")}
    full_seconds = time.perf_counter() - started
    full_wer = {s.name: wer(s.references, [o[1] for o in full[s.name]]) for s in sets}
    head = form.model.proj_out
    rows = []
    try:
        for name, keep in tqdm(candidates.items(), desc="pruned decodes", unit="kept set"):
            kept = set(keep)
            form.model.proj_out = PrunedHead(head.weight, keep)
            row = {"kept_set": name, "kept_tokens": len(keep), "vocab_size": vocab_size, "sets": {}}
            for s in sets:
                outs = full[s.name]
                hit = [i for i, o in enumerate(outs) if any(int(t) not in kept for t in o[0])]
                hit_set = set(hit)
                clean = [i for i in range(len(outs)) if i not in hit_set][:SAME_OUTPUT_CHECK_CLIPS]
                redo = decode(form, [s.audios[i] for i in hit + clean], cfg) if hit or clean else []
                changed_clean = sum(redo[len(hit) + k][1] != outs[i][1] for k, i in enumerate(clean))
                hyps = [o[1] for o in outs]
                for k, i in enumerate(hit):
                    hyps[i] = redo[k][1]
                pruned_wer = wer(s.references, hyps)
                row["sets"][s.name] = {
                    "clips": len(outs), "clips_with_pruned_tokens": len(hit),
                    "wer_full": round(full_wer[s.name], 2), "wer_pruned": round(pruned_wer, 2),
                    "wer_delta_points": round(pruned_wer - full_wer[s.name], 2),
                    "unaffected_clips_checked": len(clean), "unaffected_clips_changed": changed_clean,
                }
            rows.append(row)
            print(name, len(keep), {k: (v["wer_full"], v["wer_pruned"], v["clips_with_pruned_tokens"])
                                    for k, v in row["sets"].items()}, flush=True)
    finally:
        form.model.proj_out = head

    result = {"model": str(form.path), "texts": texts_source, "missing_sets": missing,
              "full_decode_seconds": round(full_seconds, 1), "rows": rows,
              "settings": {k: getattr(cfg, k) for k in ("batch_size", "max_new_tokens", "num_beams", "longform")}}
    path = write_result_in("vocab_kept_set", result, args.results_dir)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
