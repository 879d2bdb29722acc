"""The shipped student (CT2 int8) at batch 1 with intra_threads 1 vs 2, interleaved (16 test clips, 3 rounds).

Run from the `full` run's project: ``python ct2_threads.py``. Output of the 2026-12-06 run: results.txt.
"""
from _setup import STUDENT, features, timed_pass

ct2, feats = features()
models = {t: ct2.models.Whisper(STUDENT, device="cpu", compute_type="int8", intra_threads=t) for t in (1, 2)}
best = {}
for r in range(3):
    for t, m in models.items():
        dt, n = timed_pass(m, feats)
        best[t] = min(best.get(t, 9e9), dt)
        print(r, t, round(dt, 3), n, flush=True)
print(best)
