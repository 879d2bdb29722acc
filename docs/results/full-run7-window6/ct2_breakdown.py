"""Where the shipped CTranslate2 int8 forms spend batch-1 time: features, encoder, the rest (decoder steps).

Run from the `full` run's project (models/exports from its evaluate stage, data/prepared from prepare):

    python docs/results/full-run7-window6/ct2_breakdown.py [--clips 16] [--rounds 3] [--out ct2_breakdown.json]

(``--out`` is relative to the working directory: re-running it never overwrites the recorded JSON next to it.)

For the teacher's and the student's CT2 int8 exports, on the evaluate stage's speed sample (clips that fit the
student's window), per clip at batch 1, the minimum over interleaved rounds of: the log-mel features of the form's
window, ``Whisper.encode`` alone, and the whole ``generate_tokens`` call (features + encoder + greedy decoding).
``decode_s`` = generate - features - encoder. One process, both forms (CT2 only: no torch work is timed).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.ct2_runtime import Ct2Whisper  # noqa: E402
from components.evaluate import load_prepared_sets  # noqa: E402
from components.speed import speed_sample  # noqa: E402
from components.ct2_export import _ctranslate2  # noqa: E402
from components.whisper_io import SAMPLE_RATE_HZ  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--clips", type=int, default=16)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--out", type=Path, default=Path("ct2_breakdown.json"), help="where to write the JSON")
args = p.parse_args()
forms = {"teacher_ct2_int8": Ct2Whisper("models/exports/teacher-ct2_int8", compute_type="int8"),  # threads as evaluate's
         "student_ct2_int8": Ct2Whisper("models/exports/student-ct2_int8", compute_type="int8")}
sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
window = min(int(f.processor.feature_extractor.n_samples) for f in forms.values())
audios = speed_sample(sets[0].audios, args.clips, window)
ct2 = _ctranslate2()
best = {n: {"features_s": np.inf, "encoder_s": np.inf, "generate_s": np.inf} for n in forms}
tokens = {}
for r in range(args.rounds):
    for name in (list(forms) if r % 2 == 0 else list(forms)[::-1]):
        f = forms[name]
        fe = f.processor.feature_extractor
        t = {"features_s": 0.0, "encoder_s": 0.0, "generate_s": 0.0}
        n_tok = 0
        for a in audios:
            t0 = time.perf_counter()
            feats = fe([a], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features
            t1 = time.perf_counter()
            f.model.encode(ct2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)), to_cpu=True)
            t2 = time.perf_counter()
            ids, _ = f.generate_tokens([a], batch_size=1, max_new_tokens=128)[0]
            t3 = time.perf_counter()
            t["features_s"] += t1 - t0
            t["encoder_s"] += t2 - t1
            t["generate_s"] += t3 - t2
            n_tok += len(ids)
        tokens[name] = n_tok
        for k, v in t.items():
            best[name][k] = min(best[name][k], v)
out = {"clips": len(audios), "audio_s": round(sum(len(a) for a in audios) / SAMPLE_RATE_HZ, 2), "rounds": args.rounds,
       "statistic": "min over interleaved rounds, seconds for all clips at batch 1", "forms": {}}
for name, b in best.items():
    decode = b["generate_s"] - b["features_s"] - b["encoder_s"]
    out["forms"][name] = {**{k: round(v, 4) for k, v in b.items()}, "decode_s": round(decode, 4), "tokens": tokens[name],
                          "encoder_share": round(b["encoder_s"] / b["generate_s"], 3),
                          "decode_ms_per_token": round(1000 * decode / max(tokens[name], 1), 2)}
path = args.out
path.write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
