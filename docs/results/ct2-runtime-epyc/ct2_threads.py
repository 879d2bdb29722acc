"""The shipped student (CT2 int8) at batch 1 with intra_threads 1 vs 2, interleaved (16 test clips, 3 rounds).

Run from the `full` run's project: ``python ct2_threads.py``. Output of the 2026-12-06 run: results.txt.
"""
import sys, time, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.evaluate import load_prepared_sets
from components.speed import speed_sample
from components.ct2_export import _ctranslate2
from components.whisper_io import SAMPLE_RATE_HZ
from transformers import WhisperProcessor
ct2 = _ctranslate2()
proc = WhisperProcessor.from_pretrained("models/exports/student-ct2_int8")
fe = proc.feature_extractor
sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
audios = speed_sample(sets[0].audios, 16, int(fe.n_samples))
feats = [ct2.StorageView.from_array(np.ascontiguousarray(fe([a], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features, dtype=np.float32)) for a in audios]
prompt = [[50257, 50362]]  # tiny.en: sot, notimestamps
models = {t: ct2.models.Whisper("models/exports/student-ct2_int8", device="cpu", compute_type="int8", intra_threads=t) for t in (1, 2)}
best = {}
for r in range(3):
    for t, m in models.items():
        t0 = time.perf_counter(); n = 0
        for f in feats:
            out = m.generate(f, prompt, beam_size=1, max_length=128)
            n += len(out[0].sequences_ids[0])
        dt = time.perf_counter() - t0
        best[t] = min(best.get(t, 9e9), dt)
        print(r, t, round(dt, 3), n, flush=True)
print(best)
