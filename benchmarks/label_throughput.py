"""Labelling throughput: the label stage's batched, length-sorted decoding vs a naive one-clip-at-a-time loop.

Same teacher, same clips, same greedy decode options, measured in one process with interleaved rounds
(the minimum per method is reported, since the machine is noisy). Writes benchmarks/results/label_throughput.json.

    python benchmarks/label_throughput.py [--clips 48] [--batch-size 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    import datasets

    from components.audio import dataset_audio_arrays
    from components.text import wer
    from components.whisper_io import generate_tokens, load_whisper

    ds = datasets.load_from_disk(args.prepared)[args.split]
    ds = ds.select(range(min(args.clips, len(ds))))
    audios, refs = dataset_audio_arrays(ds), ds["text"]
    model, processor = load_whisper(args.teacher)
    opts = {"num_beams": 1, "max_new_tokens": args.max_new_tokens}
    generate_tokens(model, processor, audios[:2], batch_size=2, **opts)  # warm-up

    def naive():
        return [generate_tokens(model, processor, [a], batch_size=1, **opts)[0] for a in audios]

    def batched():
        return generate_tokens(model, processor, audios, batch_size=args.batch_size, **opts)

    times: dict[str, list[float]] = {"naive": [], "batched": []}
    outputs = {}
    for r in range(args.rounds):
        for name, fn in (("naive", naive), ("batched", batched))[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
            print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)

    best = {k: min(v) for k, v in times.items()}
    texts = {k: [t for _, t in v] for k, v in outputs.items()}
    same = sum(a == b for a, b in zip(texts["naive"], texts["batched"], strict=True))
    result = {
        "clips": len(audios),
        "audio_seconds": round(sum(len(a) for a in audios) / 16000, 1),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": times,
        "clips_per_s": {k: round(len(audios) / v, 3) for k, v in best.items()},
        "speedup_batched_vs_naive": round(best["naive"] / best["batched"], 3),
        "identical_transcripts": f"{same}/{len(audios)}",
        "wer_percent": {k: round(wer(refs, v), 2) for k, v in texts.items()},
        "teacher": args.teacher,
    }
    path = write_result("label_throughput", result)
    print(f"speed-up batched vs naive: {result['speedup_batched_vs_naive']}x -> {path}")


if __name__ == "__main__":
    main()
