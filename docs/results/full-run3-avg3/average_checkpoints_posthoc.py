import torch, shutil
from pathlib import Path
from transformers import WhisperForConditionalGeneration
src = Path("/work/fullrun/models/student"); out = Path("/work/keep/student_avg")
d = Path("/work/fullrun/data/interim/checkpoints/57953510cf997e8d")
c14 = torch.load(d/"step-0001400.pt", weights_only=False); c15 = torch.load(d/"step-0001500.pt", weights_only=False)
states = [c15["best"]["state"], c14["model"], c15["model"]]
avg = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
m = WhisperForConditionalGeneration.from_pretrained(src)
missing = m.load_state_dict(avg, strict=False)
print("loaded", len(avg), "unexpected", missing.unexpected_keys[:3])
if out.exists(): shutil.rmtree(out)
shutil.copytree(src, out)
m.save_pretrained(out)
