"""Does any CTranslate2 ``generate`` option change the shipped student's batch-1 time? (16 test clips, 3 rounds.)

Run from the `full` run's project: ``python ct2_generate_options.py``. Variants, interleaved: CT2's defaults,
the generation config's suppress list, max_length 256, the options ``Ct2Whisper`` passes, no suppression at all.
Output of the 2026-12-06 run: results.txt.
"""
import sys, time, numpy as np, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.evaluate import load_prepared_sets
from components.speed import speed_sample
from components.ct2_export import _ctranslate2
from components.whisper_io import SAMPLE_RATE_HZ
from transformers import WhisperProcessor, GenerationConfig
ct2 = _ctranslate2()
d = "models/exports/student-ct2_int8"
proc = WhisperProcessor.from_pretrained(d); fe = proc.feature_extractor
gen = GenerationConfig.from_pretrained(d)
sup = [int(t) for t in gen.suppress_tokens]
print(len(sup), gen.begin_suppress_tokens, json.load(open(d+"/config.json")).keys())
sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
audios = speed_sample(sets[0].audios, 16, int(fe.n_samples))
feats = [ct2.StorageView.from_array(np.ascontiguousarray(fe([a], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features, dtype=np.float32)) for a in audios]
prompt = [[50257, 50362]]
m = ct2.models.Whisper(d, device="cpu", compute_type="int8", intra_threads=2)
variants = {"default": {}, "sup_list": dict(suppress_tokens=sup), "maxlen256": dict(max_length=256),
            "wrapper": dict(suppress_tokens=sup, suppress_blank=True, num_hypotheses=1, max_length=256, sampling_topk=1),
            "no_sup": dict(suppress_tokens=[], suppress_blank=False)}
best = {}
for r in range(3):
    for k, o in variants.items():
        o = {"max_length": 128, **o}
        t0 = time.perf_counter(); n = 0
        for f in feats:
            out = m.generate(f, prompt, beam_size=1, **o)
            n += len(out[0].sequences_ids[0])
        dt = time.perf_counter() - t0
        best[k] = min(best.get(k, 9e9), dt)
        print(r, k, round(dt, 3), n, flush=True)
print(best)
