#!/bin/bash
# Quick data, current code (cached teacher states, frozen token embedding = the default since 2026-12-02):
# the pipeline's own student (`dvc repro`: askd, frozen embedding) vs askd with a trainable embedding, and the
# distil_whisper / ce_only presets (frozen embedding, as the default); same labelled clips, 250 steps, seed 0.
# All models scored by `askd evaluate` in one run per test set. Run in the checkout after `dvc repro`.
set -x
export PATH=$PWD/.venv/bin:$PATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
out=docs/results/ablation-quick/freeze
mkdir -p $out
python - <<'PY'
import os
import pandas as pd
df = pd.read_csv("data/raw/synth/metadata.csv")  # manifests outside the DVC output, absolute audio paths
df["audio"] = [os.path.abspath(os.path.join("data/raw/synth", f)) for f in df.file_name]
os.makedirs("data/interim/ablation", exist_ok=True)
for s in ("test", "test_ood"):
    df[df.split == s][["audio", "text"]].to_csv(f"data/interim/ablation/{s}.csv", index=False)
PY
cp metrics/train.json $out/train_askd.json
/usr/bin/time -f "askd_unfrozen train %e s" askd -s train.student.freeze_embeddings=false \
  -s train.out_dir=models/abl_askd_unfrozen stage train 2>&1 | grep -a "validation WER\|train %e\|Error"
cp metrics/train.json $out/train_askd_unfrozen.json
for preset in distil_whisper ce_only; do
  /usr/bin/time -f "$preset train %e s" askd -s train.preset=$preset -s train.out_dir=models/abl_$preset \
    stage train 2>&1 | grep -a "validation WER\|train %e\|Error"
  cp metrics/train.json $out/train_$preset.json
done
for split in test test_ood; do
  askd evaluate --manifest data/interim/ablation/$split.csv --model models/teacher --model models/student \
    --model models/abl_askd_unfrozen --model models/abl_distil_whisper --model models/abl_ce_only \
    --out $out/eval_$split.json 2>&1 | tail -8
done
git checkout -- metrics/train.json metrics/train_eval.csv metrics/train_steps.csv  # the pipeline's, not the last ablation's
echo done
