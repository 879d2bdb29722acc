"""Batch-1 time of the shipped student (CT2 int8) for 16 test clips under one runtime environment.

Run from the `full` run's project, once per environment, alternating (each process: 4 passes, the first a warm-up):

    TAG=base python ct2_env_timing.py models/exports/student-ct2_int8 2
    TAG=passive OMP_WAIT_POLICY=PASSIVE python ct2_env_timing.py models/exports/student-ct2_int8 2
    TAG=mkl CT2_USE_MKL=1 python ct2_env_timing.py models/exports/student-ct2_int8 2
    TAG=t1 python ct2_env_timing.py models/exports/student-ct2_int8 1     # intra_threads=1

Prints the passes and the minimum of the three timed ones. Output of the 2026-12-06 runs: results.txt.
"""
import os
import sys

from _setup import features, timed_pass

d, thr = sys.argv[1], int(sys.argv[2])
ct2, feats = features(d)
m = ct2.models.Whisper(d, device="cpu", compute_type="int8", intra_threads=thr)
ts = [timed_pass(m, feats)[0] for _ in range(4)]
print(os.environ.get("TAG"), [round(t, 3) for t in ts], "min", round(min(ts[1:]), 3))
