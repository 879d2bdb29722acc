"""Shared by the scripts here: the shipped student's speed sample as CT2 features, and one timed batch-1 pass.

Run from the `full` run's project (data/prepared from its prepare stage, models/exports from its evaluate stage).
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.ct2_export import _ctranslate2  # noqa: E402
from components.evaluate import load_prepared_sets  # noqa: E402
from components.speed import speed_sample  # noqa: E402
from components.whisper_io import SAMPLE_RATE_HZ  # noqa: E402

STUDENT = "models/exports/student-ct2_int8"
PROMPT = [[50257, 50362]]  # tiny.en: <|startoftranscript|> <|notimestamps|>


def features(model_dir: str = STUDENT, clips: int = 16):
    """``(ctranslate2, [StorageView])``: log-mels of the first ``clips`` `test` clips that fit the model's window."""
    from transformers import WhisperProcessor

    ct2 = _ctranslate2()
    fe = WhisperProcessor.from_pretrained(model_dir).feature_extractor
    sets, _ = load_prepared_sets(Path("data/prepared"), ["test"])
    audios = speed_sample(sets[0].audios, clips, int(fe.n_samples))
    return ct2, [ct2.StorageView.from_array(np.ascontiguousarray(
        fe([a], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features, dtype=np.float32)) for a in audios]


def timed_pass(model, feats, **options) -> tuple[float, int]:
    """Seconds and tokens for greedy decoding of every clip at batch 1 (``max_length`` 128 unless given)."""
    options = {"beam_size": 1, "max_length": 128, **options}
    t0, n = time.perf_counter(), 0
    for f in feats:
        n += len(model.generate(f, PROMPT, **options)[0].sequences_ids[0])
    return time.perf_counter() - t0, n
