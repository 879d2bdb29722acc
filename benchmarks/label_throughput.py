"""Labelling throughput: the label stage's decoders vs a naive one-clip-at-a-time transformers loop.

Methods, same teacher, same clips, same greedy decode options, measured in one process with interleaved
rounds (order reversed every other round; the minimum per method is reported, since the machine is noisy):

* ``naive``: transformers ``generate``, one clip at a time (the baseline);
* ``batched``: transformers, ``--batch-size`` clips per call, length-sorted (label ``engine: transformers``);
* ``ctranslate2``: :class:`components.ct2_runtime.Ct2Whisper`, same batches (label ``engine: ctranslate2``;
  the transformers encoder feeds CTranslate2's decoder). ``--ct2-encoders torch,ctranslate2`` also measures
  CT2 end to end (``ctranslate2_ct2enc``).

Agreement is reported against the naive loop (identical token ids and texts). Writes
benchmarks/results/label_throughput.json.

    python benchmarks/label_throughput.py [--clips 48] [--batch-size 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result_in  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--ct2-compute-type", default="float32", choices=["float32", "int8", "int8_float32"])
    parser.add_argument("--ct2-encoders", default="torch", help="comma list of: torch, ctranslate2")
    parser.add_argument("--ct2-cache", default=None, help="CT2 conversion cache (default: a fresh temp folder)")
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    args = parser.parse_args(argv)

    import datasets

    from components.audio import dataset_audio_arrays
    from components.ct2_export import ctranslate2_version
    from components.ct2_runtime import Ct2Whisper
    from components.text import wer
    from components.whisper_io import generate_tokens, load_whisper

    ds = datasets.load_from_disk(args.prepared)[args.split]
    ds = ds.select(range(min(args.clips, len(ds))))
    audios, refs = dataset_audio_arrays(ds), ds["text"]
    model, processor = load_whisper(args.teacher)
    opts = {"num_beams": 1, "max_new_tokens": args.max_new_tokens}
    generate_tokens(model, processor, audios[:2], batch_size=2, **opts)  # warm-up

    cache = Path(args.ct2_cache) if args.ct2_cache else Path(tempfile.mkdtemp(prefix="ct2-bench-"))
    started = time.perf_counter()
    engines = {}
    for encoder in [e.strip() for e in args.ct2_encoders.split(",") if e.strip()]:
        name = "ctranslate2" if encoder == "torch" else "ctranslate2_ct2enc"
        engines[name] = Ct2Whisper.from_transformers(
            args.teacher, compute_type=args.ct2_compute_type, cache_root=cache, encoder=encoder
        )
        engines[name].generate_tokens(audios[:2], batch_size=2, **opts)  # warm-up
    ct2_setup_s = time.perf_counter() - started  # conversion (first time) + load + warm-up

    def naive():
        return [generate_tokens(model, processor, [a], batch_size=1, **opts)[0] for a in audios]

    def batched():
        return generate_tokens(model, processor, audios, batch_size=args.batch_size, **opts)

    methods = {"naive": naive, "batched": batched}
    for name, engine in engines.items():
        methods[name] = lambda engine=engine: engine.generate_tokens(audios, batch_size=args.batch_size, **opts)

    times: dict[str, list[float]] = {k: [] for k in methods}
    outputs = {}
    for r in range(args.rounds):
        order = list(methods.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
            print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)

    best = {k: min(v) for k, v in times.items()}
    texts = {k: [t for _, t in v] for k, v in outputs.items()}
    n = len(audios)

    def agree(name: str) -> dict[str, str]:
        same_ids = sum(a == b for a, b in zip(outputs["naive"], outputs[name], strict=True))
        same_text = sum(a == b for a, b in zip(texts["naive"], texts[name], strict=True))
        return {"identical_tokens": f"{same_ids}/{n}", "identical_texts": f"{same_text}/{n}"}

    result = {
        "clips": n,
        "audio_seconds": round(sum(len(a) for a in audios) / 16000, 1),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": times,
        "clips_per_s": {k: round(n / v, 3) for k, v in best.items()},
        "speedup_vs_naive": {k: round(best["naive"] / v, 3) for k, v in best.items() if k != "naive"},
        "speedup_batched_vs_naive": round(best["naive"] / best["batched"], 3),
        "agreement_vs_naive": {k: agree(k) for k in methods if k != "naive"},
        "identical_transcripts": f"{sum(a == b for a, b in zip(texts['naive'], texts['batched'], strict=True))}/{n}",
        "wer_percent": {k: round(wer(refs, v), 2) for k, v in texts.items()},
        "ctranslate2": {
            "version": ctranslate2_version(),
            "compute_type": args.ct2_compute_type,
            "encoders": {k: e.encoder for k, e in engines.items()},
            "intra_threads": next(iter(engines.values())).intra_threads if engines else None,
            "setup_seconds": round(ct2_setup_s, 2),
        },
        "teacher": args.teacher,
    }
    if not args.ct2_cache:
        shutil.rmtree(cache, ignore_errors=True)
    path = write_result_in("label_throughput", result, args.results_dir)
    print(f"speed-up vs naive: {result['speedup_vs_naive']} agreement: {result['agreement_vs_naive']} -> {path}")
    return result


if __name__ == "__main__":
    main()
