"""Teacher-forced agreement of the teacher cut to the student's 10 s window vs the teacher at its own 30 s window.

Run in the full-profile checkout (PYTHONPATH=<checkout>, cwd=<checkout>) after `train`: 96 training clips of
data/labelled, label sequences = the teacher's own greedy tokens. Printed 2026-11-25 (2-core AMD EPYC):
tokens 1341 {'t10': 0.9769, 't30': 0.9993, 'st': 0.9985} {'t10|t30': 0.0418, 'st|t30': 0.0667, 'st|t10': 0.0364}
(argmax = label share per model; KL(p||q) per label token at T = 2 written as q|p; st = run 4's student.)
"""
import numpy as np, torch
from pathlib import Path
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from components.audio import dataset_audio_arrays
from components.train.data import SpecialTokens, build_sequence, collate, features, load_split
from components.train.student import teacher_for_training
torch.manual_seed(0)
tdir = Path("models/teacher")
t10 = teacher_for_training(tdir, 10).eval()
proc10 = None
from components.train.student import shorten_window
t30 = WhisperForConditionalGeneration.from_pretrained(tdir).eval()
p30 = WhisperProcessor.from_pretrained(tdir)
_, p10 = shorten_window(WhisperForConditionalGeneration.from_pretrained(tdir), WhisperProcessor.from_pretrained(tdir), 10)
stud = WhisperForConditionalGeneration.from_pretrained("models/student").eval()
special = SpecialTokens.from_processor(p30, t30.generation_config, "en", "transcribe")
ds, _ = load_split(Path("data/labelled"), "train", 9.5)
ds = ds.select(range(0, len(ds), len(ds)//96)[:96])
aud = dataset_audio_arrays(ds); toks = [list(t) for t in ds["teacher_tokens"]]
rng = np.random.default_rng(0)
pairs = [build_sequence(t, special, rng, 0.0, None, 128) for t in toks]
T = 2.0
acc = {"t10":0,"t30":0,"st":0}; n=0; kl = {"t10|t30":0.0, "st|t30":0.0, "st|t10":0.0}
with torch.no_grad():
  for b in range(0, len(aud), 16):
    dec_in, tgt = collate(pairs[b:b+16], special.eot)
    m = tgt != -100
    e10 = t10.get_encoder()(features(p10, aud[b:b+16])).last_hidden_state
    l10 = t10(encoder_outputs=(e10,), decoder_input_ids=dec_in).logits
    l30 = t30(input_features=features(p30, aud[b:b+16]), decoder_input_ids=dec_in).logits
    ls = stud(encoder_outputs=(e10,), decoder_input_ids=dec_in).logits
    for k, l in (("t10", l10), ("t30", l30), ("st", ls)):
        acc[k] += (l.argmax(-1)[m] == tgt[m]).sum().item()
    n += m.sum().item()
    def KL(p, q):  # KL(p||q) at T
        lp = torch.log_softmax(p / T, -1); lq = torch.log_softmax(q / T, -1)
        return ((lp.exp() * (lp - lq)).sum(-1)[m]).sum().item()
    kl["t10|t30"] += KL(l30, l10); kl["st|t30"] += KL(l30, ls); kl["st|t10"] += KL(l10, ls)
print("tokens", n, {k: round(v / n, 4) for k, v in acc.items()}, {k: round(v / n, 4) for k, v in kl.items()})
