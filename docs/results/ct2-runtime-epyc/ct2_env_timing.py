"""Batch-1 time of the shipped student (CT2 int8) for 16 test clips under one runtime environment.

Run from the `full` run's project, once per environment, alternating (each process: 4 passes, the first a warm-up):

    TAG=base python ct2_env_timing.py models/exports/student-ct2_int8 2
    TAG=passive OMP_WAIT_POLICY=PASSIVE python ct2_env_timing.py models/exports/student-ct2_int8 2
    TAG=mkl CT2_USE_MKL=1 python ct2_env_timing.py models/exports/student-ct2_int8 2
    TAG=t1 python ct2_env_timing.py models/exports/student-ct2_int8 1     # intra_threads=1

Prints the passes and the minimum of the three timed ones. Output of the 2026-12-06 runs: results.txt.
"""
import sys, time, numpy as np, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.evaluate import load_prepared_sets
from components.speed import speed_sample
from components.ct2_export import _ctranslate2
from components.whisper_io import SAMPLE_RATE_HZ
from transformers import WhisperProcessor
ct2 = _ctranslate2()
d = sys.argv[1]; thr = int(sys.argv[2])
proc = WhisperProcessor.from_pretrained(d); fe = proc.feature_extractor
sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
audios = speed_sample(sets[0].audios, 16, 6*16000)
feats = [ct2.StorageView.from_array(np.ascontiguousarray(fe([a], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features, dtype=np.float32)) for a in audios]
m = ct2.models.Whisper(d, device="cpu", compute_type="int8", intra_threads=thr)
ts = []
for r in range(4):
    t0 = time.perf_counter()
    for f in feats:
        m.generate(f, [[50257, 50362]], beam_size=1, max_length=128)
    ts.append(time.perf_counter() - t0)
print(os.environ.get("TAG"), [round(t, 3) for t in ts], "min", round(min(ts[1:]), 3))
