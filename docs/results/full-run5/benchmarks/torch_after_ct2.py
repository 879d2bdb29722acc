"""Batch-1 transformers fp32 decode time, teacher vs student, before and after CTranslate2 ran in the same process.

Run from the repository root after the `full` pipeline (models/teacher, models/student, models/exports/):
    python docs/results/full-run5/benchmarks/torch_after_ct2.py
Found 2026-12-02 (output in torch_after_ct2.txt): once CTranslate2 has decoded in the process, PyTorch's fp32
decoding is ~1.3-1.6x slower, about as slow as with OMP_WAIT_POLICY=PASSIVE from the start, and the student/teacher
ratio drops (per-step overhead grows for both models alike). The evaluate stage measures every form in one process
after the WER runs, so its fp32 ratios carry this penalty.
"""
import time
from pathlib import Path

import torch

from components.evaluate import load_prepared_sets
from components.export import load_form
from components.speed import speed_sample
from components.whisper_io import _quiet_generate_logs, generate_tokens

_quiet_generate_logs()
forms = {n: load_form(p, n) for n, p in (("teacher", "models/teacher"), ("student", "models/student"))}
sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
audios = speed_sample(sets[0].audios, 8, 160000)  # the evaluate stage's speed sample


def run(form, inference_mode: bool) -> float:
    started = time.perf_counter()
    for audio in audios:
        with torch.inference_mode(inference_mode):
            generate_tokens(form.model, form.processor, [audio], batch_size=1)
    return time.perf_counter() - started


for form in forms.values():  # warm-up
    run(form, False)
before = {}
for _ in range(1):  # one round before CT2 (as it was run for torch_after_ct2.txt)
    for name, form in forms.items():
        for im in (False, True):
            before.setdefault((name, im), []).append(run(form, im))
for key, values in before.items():
    print("before CT2", key, round(min(values), 3))
for im in (False, True):
    print("before CT2 ratio, inference_mode", im, round(min(before[("teacher", im)]) / min(before[("student", im)]), 3))
ct2 = load_form("models/exports/student-ct2_int8", "student_ct2_int8")
for audio in audios:
    ct2.generate([audio], batch_size=1)
after = {}
for _ in range(2):
    for name, form in forms.items():
        after.setdefault(name, []).append(run(form, False))
    started = time.perf_counter()
    for audio in audios:
        ct2.generate([audio], batch_size=1)
    after.setdefault("student_ct2_int8", []).append(time.perf_counter() - started)
for key, values in after.items():
    print("after CT2", key, [round(v, 3) for v in values])
print("after CT2 ratio", round(min(after["teacher"]) / min(after["student"]), 3))
