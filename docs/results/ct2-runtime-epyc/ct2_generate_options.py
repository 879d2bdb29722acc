"""Does any CTranslate2 ``generate`` option change the shipped student's batch-1 time? (16 test clips, 3 rounds.)

Run from the `full` run's project: ``python ct2_generate_options.py``. Variants, interleaved: CT2's defaults,
the generation config's suppress list, max_length 256, the options ``Ct2Whisper`` passes, no suppression at all.
Output of the 2026-12-06 run: results.txt.
"""
from transformers import GenerationConfig

from _setup import STUDENT, features, timed_pass

ct2, feats = features()
sup = [int(t) for t in GenerationConfig.from_pretrained(STUDENT).suppress_tokens]
m = ct2.models.Whisper(STUDENT, device="cpu", compute_type="int8", intra_threads=2)
variants = {"default": {}, "sup_list": dict(suppress_tokens=sup), "maxlen256": dict(max_length=256),
            "wrapper": dict(suppress_tokens=sup, suppress_blank=True, num_hypotheses=1, max_length=256, sampling_topk=1),
            "no_sup": dict(suppress_tokens=[], suppress_blank=False)}
best = {}
for r in range(3):
    for k, o in variants.items():
        dt, n = timed_pass(m, feats, **o)
        best[k] = min(best.get(k, 9e9), dt)
        print(r, k, round(dt, 3), n, flush=True)
print(best)
