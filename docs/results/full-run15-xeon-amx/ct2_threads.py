"""Batch-1 cost of the shipped CT2 int8 student by thread layout: decoder steps alone and whole transcription.

Run from the `full` run's project (models/exports from its evaluate stage, data/prepared from prepare):

    python docs/results/full-run15-xeon-amx/ct2_threads.py [--out ct2_threads.json]

1. Decoder steps alone: ``generate`` from precomputed encoder states with ``<|endoftext|>`` suppressed, so every
   clip decodes exactly N tokens (N = 1 and 16); the slope is the cost of one step. CT2 on 2 threads, on 1.
2. Whole ``generate_tokens`` (features + encoder + natural greedy decoding) on 16 clips at batch 1 and 8:
   ``2`` = one instance on 2 threads (before), ``1`` = one instance on 1 thread, ``split`` = the encoder's
   instance on 2 threads and the decoder steps on a second instance on 1 thread (``decode_threads=1``, the default
   of ``evaluate.ct2_decode_threads``). Minimum over rounds, one process.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.ct2_export import _ctranslate2  # noqa: E402
from components.ct2_runtime import Ct2Whisper  # noqa: E402
from components.evaluate import load_prepared_sets  # noqa: E402
from components.speed import speed_sample  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", default="models/exports/student-ct2_int8")
p.add_argument("--rounds", type=int, default=4)
p.add_argument("--out", type=Path, default=Path("ct2_threads.json"))
args = p.parse_args()
ct2 = _ctranslate2()
sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
engines = {"2": Ct2Whisper(args.model, "int8", intra_threads=2), "1": Ct2Whisper(args.model, "int8", intra_threads=1),
           "split": Ct2Whisper(args.model, "int8", intra_threads=2, decode_threads=1)}
fe = engines["2"].processor.feature_extractor
audios = speed_sample(sets[0].audios, 16, int(fe.n_samples))
eot = engines["2"].processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
prompt = [[engines["2"].generation_config.decoder_start_token_id, engines["2"].generation_config.no_timestamps_token_id]]
states = [engines["2"].model.encode(ct2.StorageView.from_array(np.ascontiguousarray(
    fe([a], sampling_rate=16000, return_tensors="np").input_features, dtype=np.float32))) for a in audios]


def steps(engine, n):
    for s in states:  # max_length counts 2 per token in ctranslate2 4.8 (components/ct2_runtime.py)
        engine.model.generate(s, prompt, beam_size=1, max_length=2 * n, sampling_topk=1, suppress_tokens=[-1, eot])


def whole(engine, bs):
    for i in range(0, len(audios), bs):
        engine.generate_tokens(audios[i:i + bs], batch_size=bs, max_new_tokens=128)


best: dict[str, float] = {}
for _ in range(args.rounds):
    for name in ("2", "1"):
        for n in (1, 16):
            t = time.perf_counter(); steps(engines[name], n); dt = time.perf_counter() - t
            best[f"decoder_{name}thr_n{n}"] = min(best.get(f"decoder_{name}thr_n{n}", 1e9), dt)
    for name, engine in engines.items():
        for bs in (1, 8):
            t = time.perf_counter(); whole(engine, bs); dt = time.perf_counter() - t
            best[f"whole_{name}_b{bs}"] = min(best.get(f"whole_{name}_b{bs}", 1e9), dt)
per = {f"decoder_step_ms_{k}thr": round(1000 * (best[f"decoder_{k}thr_n16"] - best[f"decoder_{k}thr_n1"]) / 15 / len(audios), 2)
       for k in ("2", "1")}
result = {"clips": len(audios), "rounds": args.rounds, "statistic": "min over rounds, seconds for all clips",
          "seconds": {k: round(v, 4) for k, v in best.items()}, **per}
args.out.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
