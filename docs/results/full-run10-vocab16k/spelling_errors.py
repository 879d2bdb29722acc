"""Decode validation clips with a training checkpoint of a kept-vocabulary student and print the differing ones.

Run from the `full` run's project, with `params.yaml` as trained (`train.student.vocab_top_ranks` set):

    python docs/results/full-run10-vocab16k/spelling_errors.py data/interim/checkpoints/<run>/step-0000300.pt [--clips 40]

Used on 2026-12-06 for the tenth run's step-300 checkpoint (README: the words it spells in pieces).
"""
import argparse
import sys
from pathlib import Path

import datasets
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from components.audio import dataset_audio_arrays  # noqa: E402
from components.settings import load_settings  # noqa: E402
from components.text import wer  # noqa: E402
from components.train.student import init_student  # noqa: E402
from components.vocab import kept_vocabulary, pruned_head  # noqa: E402
from components.whisper_io import generate_tokens  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("checkpoint", type=Path)
p.add_argument("--clips", type=int, default=40)
args = p.parse_args()
cfg = load_settings().train
student, processor, _ = init_student(Path(load_settings().teacher.out_dir), cfg.student)
student.load_state_dict(torch.load(args.checkpoint, weights_only=False)["model"], strict=False)
val = datasets.load_from_disk("data/labelled")["validation"].select(range(args.clips))
val = val.filter(lambda d: d <= cfg.student.window_s - 0.5, input_columns="duration_s")
refs = [r if h else t for r, h, t in zip(val["text"], val["has_text"], val["teacher_text"], strict=True)]
kv = kept_vocabulary(processor.tokenizer, student.config.vocab_size, cfg.student.vocab_top_ranks)
with torch.no_grad(), pruned_head(student.eval(), kv.keep):
    out = generate_tokens(student, processor, dataset_audio_arrays(val), batch_size=8, max_new_tokens=64)
print(f"WER {wer(refs, [t for _, t in out]):.2f} % on {len(refs)} clips")
for (ids, hyp), ref in zip(out, refs, strict=True):
    if hyp.strip().lower() != ref.strip().lower():
        print("REF", ref, "\nHYP", hyp, "\nTOKENS", processor.tokenizer.convert_ids_to_tokens(ids), "\n")
