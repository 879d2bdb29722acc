#!/bin/bash
# Ablation on the quick profile's data (this clone's run): askd (the pipeline's own student) vs distil_whisper vs
# ce_only, same labelled clips, same 250 steps, seed 0; all models scored by `askd evaluate` on test and test_ood.
set -x
cd /work/e2e
export PATH=$PWD/.venv/bin:$PATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
for preset in distil_whisper ce_only; do
  /usr/bin/time -f "$preset train %e s" askd --set train.preset=$preset --set train.out_dir=models/abl_$preset stage train
  cp metrics/train.json abl_train_$preset.json
done
for split in test test_ood; do
  askd evaluate --manifest data/raw/synth/$split.csv --model models/teacher --model models/student \
    --model models/abl_distil_whisper --model models/abl_ce_only --out abl_eval_$split.json
done
echo done
