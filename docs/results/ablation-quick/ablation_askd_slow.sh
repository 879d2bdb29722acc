#!/bin/bash
cd /work/e2e
export PATH=$PWD/.venv/bin:$PATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
/usr/bin/time -f "askd_slow train %e s" askd --set train.askd.alpha_end=0.5 --set train.askd.self_kd_weight=0.2 --set train.out_dir=models/abl_askd_slow stage train
cp metrics/train.json abl_train_askd_slow.json
for split in test test_ood; do
  askd evaluate --manifest data/raw/synth/$split.csv --model models/abl_askd_slow --out abl2_eval_$split.json
done
echo done
